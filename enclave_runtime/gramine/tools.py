"""Gramine's command-line tools, found on PATH and run with explicit arguments.

Every missing tool is reported by name with what to install; every failing tool is reported with the end of
what it printed, so a user sees Gramine's own reason rather than a stack trace.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from teelab.errors import EnclaveError

Which = Callable[[str], str | None]

INSTALL_HINT = (
    "install Gramine ≥ 1.8 from Gramine's package repository (packages.gramineproject.io: "
    "`apt-get install gramine`), then run `teelab doctor`"
)
BUILD_TOOLS = ("gramine-manifest", "gramine-sgx-sign")
SGX_LAUNCHER = "gramine-sgx"
DIRECT_LAUNCHER = "gramine-direct"
# The tail of a failing tool's output shown to the user; the whole output can be megabytes of file lists.
_OUTPUT_TAIL = 2000


@dataclass(frozen=True)
class GramineTools:
    which: Which = shutil.which
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    def find(self, name: str) -> str:
        location = self.which(name)
        if location is None:
            raise EnclaveError(f"{name} is not on PATH: Gramine is not installed here", hint=INSTALL_HINT)
        return location

    def missing(self, names: Sequence[str] = BUILD_TOOLS) -> list[str]:
        return [name for name in names if self.which(name) is None]

    def run(self, name: str, args: Sequence[str], *, cwd: Path) -> str:
        command = [self.find(name), *args]
        try:
            done = subprocess.run(
                command, cwd=cwd, env=self.env, capture_output=True, text=True, check=False, timeout=3600
            )
        except OSError as error:
            raise EnclaveError(f"cannot run {name}: {error.strerror}") from None
        except subprocess.TimeoutExpired:
            raise EnclaveError(f"{name} did not finish within an hour") from None
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip()[-_OUTPUT_TAIL:]
            raise EnclaveError(f"{name} failed (exit {done.returncode}): {said or 'no output'}")
        return done.stdout

    def render_manifest(self, template: Path, output: Path) -> None:
        """``gramine-manifest``: fills in Gramine's locations and checks the manifest against its schema."""
        self.run("gramine-manifest", ["--check", str(template), str(output)], cwd=output.parent)

    def sign(self, manifest: Path, output: Path, sigfile: Path, key: Path) -> None:
        """``gramine-sgx-sign`` with the author's key named explicitly (never Gramine's default key)."""
        self.run(
            "gramine-sgx-sign",
            [
                "--manifest",
                str(manifest),
                "--output",
                str(output),
                "--sigfile",
                str(sigfile),
                "--key",
                str(key),
                # A fixed date makes re-signing byte-identical; MRENCLAVE never depends on it.
                "--date",
                "0000-00-00",
            ],
            cwd=output.parent,
        )
