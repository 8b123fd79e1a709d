"""What every backend's ``launch`` does the same way.

- only the manifest's passthrough variables come in from the host (:func:`refuse_unlisted_inputs`);
- the process runs in its own session, with no inherited descriptors but those asked for, and a failure to
  start is an :class:`~teelab.errors.EnclaveError` naming the program (:func:`start_process`);
- backends whose TEE is a local process (the simulated TEE, a process inside a confidential VM) lay out its
  scratch space and environment identically (:func:`local_launch_plan`).

The order of the steps is :meth:`~teelab.enclave_runtime.backend.EnclaveBackend.launch`'s; a backend describes
its own part as a :class:`LaunchPlan`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from teelab.enclave_runtime.image import EnclaveImage
from teelab.enclave_runtime.manifest import TEE_STATE, TEE_TMP, EnclaveManifest
from teelab.errors import EnclaveError
from teelab.files import write_private

# Folders the kernel image points into its scratch space; they must exist before Python starts.
_PRIVATE_FOLDERS = ("HOME", "IPYTHONDIR", "JUPYTER_RUNTIME_DIR", "MPLCONFIGDIR")


def refuse_unlisted_inputs(manifest: EnclaveManifest, inputs: Mapping[str, str]) -> None:
    unknown = sorted(set(inputs) - set(manifest.passthrough_env))
    if unknown:
        raise EnclaveError(
            f"the enclave manifest does not let {', '.join(unknown)} in from the host",
            hint="only variables listed in passthrough_env reach the enclave",
        )


def passthrough(manifest: EnclaveManifest, inputs: Mapping[str, str]) -> dict[str, str]:
    return {name: inputs[name] for name in manifest.passthrough_env if name in inputs}


def start_process(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    stdout: int | None,
    stderr: int | None,
    executable: str | None = None,
    pass_fds: Sequence[int] = (),
) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(
            list(argv),
            executable=executable,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,  # so kill() reaches the whole process group
            close_fds=True,
            pass_fds=tuple(pass_fds),
        )
    except OSError as error:
        raise EnclaveError(f"cannot start {executable or argv[0]}: {error.strerror}") from None


@dataclass
class LaunchPlan:
    """What one backend adds to the common launch: its program, environment and working folder.

    ``pass_fds`` are the child's ends of pipes (closed in the launcher once the process started);
    ``keep_fds`` the launcher's ends, closed by :meth:`discard` when the launch fails; ``scratch`` a folder
    the launch created on the host, removed with the process.
    """

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    executable: str | None = None
    pass_fds: tuple[int, ...] = ()
    keep_fds: tuple[int, ...] = ()
    scratch: Path | None = None

    def discard(self) -> None:
        for fd in self.keep_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def local_launch_plan(
    image: EnclaveImage,
    inputs: Mapping[str, str],
    *,
    backend: str,
    scratch_prefix: str,
    scratch_parent: str | None = None,
) -> LaunchPlan:
    """``{tee_tmp}`` becomes a fresh 0700 folder (in ``scratch_parent``, default the system's temporary
    folder), ``{tee_state}`` the image's own state folder."""
    manifest = image.manifest
    state = image.path / "tee-state"
    state.mkdir(mode=0o700, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=scratch_prefix, dir=scratch_parent))

    def place(value: str) -> str:
        return value.replace(TEE_TMP, str(scratch)).replace(TEE_STATE, str(state))

    env = {name: place(value) for name, value in manifest.env}
    for folder in _PRIVATE_FOLDERS:
        if folder in env:
            os.makedirs(env[folder], mode=0o700, exist_ok=True)
    env.update(passthrough(manifest, inputs))
    env["TEELAB_TEE"] = backend
    return LaunchPlan(
        [place(a) for a in manifest.argv], env, scratch, executable=manifest.entrypoint, scratch=scratch
    )


def launched_image_dir(pycache_prefix: str | None = None) -> Path | None:
    """Inside a TEE :func:`local_launch_plan` started: the image folder it was launched from, else None.

    The launch places ``{tee_state}`` at ``<image>/tee-state``, and the kernel image's measured environment
    names ``{tee_state}/pycache`` as ``PYTHONPYCACHEPREFIX`` (Python keeps it as ``sys.pycache_prefix``). Only the
    measured *template* is trusted: the path itself is the launcher's, so a caller must check the image it
    finds there (an image of another measurement is a lie of the host's, or another build).
    """
    prefix = Path(pycache_prefix if pycache_prefix is not None else (sys.pycache_prefix or ""))
    state = prefix.parent
    if prefix.name != "pycache" or state.name != "tee-state" or not state.is_absolute():
        return None
    return state.parent


def throwaway_signing_key(folder: Path) -> tuple[rsa.RSAPrivateKey, Path]:
    """An enclave signing key for measuring only (RSA-3072, e = 3, as SIGSTRUCT demands), written 0600 into a
    scratch ``folder``: MRENCLAVE does not depend on the signer, so any key yields the value to pin."""
    key = rsa.generate_private_key(public_exponent=3, key_size=3072)
    path = folder / "throwaway-key.pem"
    write_private(
        path,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    return key, path
