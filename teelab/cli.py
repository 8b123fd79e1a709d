"""The ``teelab`` command line.

Each part of the system registers its own commands from its ``cli`` module; this entry module only assembles
them and turns teelab's errors into a message, a hint and an exit code (0 success, 1 refused or failed,
2 usage error).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Protocol

from teelab import __version__
from teelab.cli_support import HelpFormatter, Subparsers
from teelab.cli_support import run as run_command

__all__ = ["DESCRIPTION", "HelpFormatter", "build_parser", "main", "run"]

# (module, description) of each part that contributes commands; imported lazily so `teelab --help` stays fast.
COMMAND_MODULES = (
    "teelab.enclave_runtime.cli",
    "teelab.enclave_runtime.agent.cli",
    "teelab.gateway.cli",
    "teelab.kernel.cli",
    "teelab.kernel.doctor",
    "teelab.sealed_store.cli",
    "teelab.sealed_store.kbs.cli",
    "teelab.extension.hub.cli",
)

DESCRIPTION = """\
teelab runs Jupyter kernels inside Trusted Execution Environments and verifies their remote attestation
before any code is sent to them.

Start with:
  teelab doctor                   which TEE backends this machine can run, and why not
  teelab enclave measure          the MRENCLAVE of the kernel's enclave image (pin it in your policy)
  teelab sim quote --report-data 00 --out q/
                                  a simulated SGX quote and the collateral to verify it
  teelab evidence verify q/quote.bin --collateral q/collateral --allow-simulation
"""


class _Registrar(Protocol):
    def register(self, subparsers: Subparsers) -> None: ...


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="teelab", description=DESCRIPTION, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"teelab {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        module: _Registrar = importlib.import_module(module_name)  # type: ignore[assignment]
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv)


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
