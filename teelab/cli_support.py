"""The scaffolding every ``teelab`` command module shares: groups of sub-commands, and running one.

A part of teelab adds its commands with :func:`command_group` and :func:`add_command`; ``teelab`` itself
(``teelab.cli``) and any part that runs on its own (``python -m teelab.sealed_store.kbs``) dispatch with
:func:`run`, so the help for a bare group, the exit codes and the error format are the same everywhere.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TypeAlias

from teelab.errors import TeelabError

Handler = Callable[[argparse.Namespace], int]
# A string: argparse._SubParsersAction is not subscriptable at run time.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples in descriptions and epilogs as written."""


def command_group(
    subparsers: Subparsers, name: str, *, help_text: str, description: str, epilog: str | None = None
) -> tuple[argparse.ArgumentParser, Subparsers]:
    """A group such as ``teelab audit``; called without its sub-command it prints its help (exit 2)."""
    group = subparsers.add_parser(
        name, help=help_text, description=description, epilog=epilog, formatter_class=HelpFormatter
    )
    group.set_defaults(group_parser=group)
    return group, group.add_subparsers(dest=f"{name}_command", metavar="COMMAND")


def add_command(
    commands: Subparsers,
    name: str,
    handler: Handler,
    *,
    help_text: str,
    description: str | None = None,
    epilog: str | None = None,
) -> argparse.ArgumentParser:
    """One sub-command; ``description`` defaults to the one-line help."""
    parser = commands.add_parser(
        name,
        help=help_text,
        description=description or help_text,
        epilog=epilog,
        formatter_class=HelpFormatter,
    )
    parser.set_defaults(handler=handler)
    return parser


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse, call the chosen command's handler, and turn teelab's errors into a message and exit code."""
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        # A group such as `teelab enclave` without its subcommand: teach instead of failing silently.
        getattr(args, "group_parser", parser).print_help(sys.stderr)
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
