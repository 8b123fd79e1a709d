"""The ``teelab`` command line.

Each part of the system registers its own commands from its ``cli`` module; this entry module only assembles
them and turns teelab's errors into a message, a hint and an exit code (0 success, 1 refused or failed,
2 usage error).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Protocol

from teelab import __version__
from teelab.errors import TeelabError

# (module, description) of each part that contributes commands; imported lazily so `teelab --help` stays fast.
COMMAND_MODULES = (
    "teelab.enclave_runtime.cli",
    "teelab.gateway.cli",
    "teelab.kernel.cli",
    "teelab.sealed_store.cli",
    "teelab.sealed_store.kbs.cli",
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
    def register(self, subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None: ...


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples in descriptions and epilogs as written."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="teelab", description=DESCRIPTION, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"teelab {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        module: _Registrar = importlib.import_module(module_name)  # type: ignore[assignment]
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        # A group such as `teelab enclave` without its subcommand: teach instead of failing silently.
        target = getattr(args, "group_parser", parser)
        target.print_help(sys.stderr)
        return 2
    try:
        return handler(args)
    except TeelabError as error:
        print(f"teelab: error: {error.message}", file=sys.stderr)
        if error.hint:
            print(f"  hint: {error.hint}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("teelab: interrupted", file=sys.stderr)
        return 130


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
