"""Commands of ``teelab hub``: ``setup`` (what a hub needs on disk) and ``demo``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from teelab.cli_support import Subparsers


def _setup(args: argparse.Namespace) -> int:
    from teelab.extension.hub.config import layout
    from teelab.extension.hub.deploy import setup

    root: Path = args.root
    os.environ["TEELAB_DATA_DIR"] = str(layout(root)["data"])
    result = setup(root, kernel=args.kernel, policy=args.policy)
    print(f"kernelspec     {result.kernelspec_dir}")
    print(f"policy         {result.policy_file}")
    print(f"mrenclave      {result.mrenclave}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from teelab.extension.hub.demo import run_demo

    return run_demo(args.root, args.port, check_only=args.check)


def register(subparsers: Subparsers) -> None:
    from teelab.cli_support import add_command, command_group

    _, commands = command_group(
        subparsers,
        "hub",
        help_text="JupyterHub: teelab for many users (docs/jupyterhub.md)",
        description="teelab under JupyterHub: hub users and groups are the tenants (docs/jupyterhub.md).",
    )
    setup = add_command(
        commands,
        "setup",
        _setup,
        help_text="build the kernel image, write the operator's policy and the system kernelspec under ROOT",
    )
    setup.add_argument("--root", type=Path, default=Path("/srv/teelab"), help="default %(default)s")
    setup.add_argument("--kernel", default="teelab-sim", help="kernelspec name teelab-BACKEND")
    setup.add_argument("--policy", type=Path, help="the operator's policy (required beyond the sim backend)")
    demo = add_command(
        commands,
        "demo",
        _demo,
        help_text="a real JupyterHub on this machine: alice, bob, carol, the key broker as a hub service",
    )
    demo.add_argument("--root", type=Path, help="state folder (default: <teelab data dir>/hub-demo)")
    demo.add_argument("--port", type=int, help="the hub's port on 127.0.0.1 (default: a free one)")
    demo.add_argument(
        "--check",
        action="store_true",
        help="sign in as bob and carol, read and be refused, show the operator view, then stop (what CI runs)",
    )
    from teelab.extension.hub.verify_cli import register_commands

    register_commands(commands)  # the hosted hub: verify, connect, front-door, k8s-values
