"""Commands of ``teelab.kernel``: ``teelab kernel install|uninstall``."""

from __future__ import annotations

import argparse
from pathlib import Path

INSTALL_EPILOG = """\
What it does:
  1. builds and signs the kernel's enclave image (like `teelab enclave build`);
     (Gramine, which cannot bind the controller at launch: with this gateway's controller pinned, from
     --identity-file or the default gateway identity; the server must use the same identity file);
  2. writes the attestation policy to an operator-owned folder (not the kernelspec, which users can edit):
     --user: ~/.config/teelab/policies/NAME.toml   --sys-prefix: <sys.prefix>/etc/teelab/policies/NAME.toml
     For --backend sim without --policy, the policy pins the image just built and allows simulation;
  3. installs the kernelspec NAME (default teelab-BACKEND) with interrupt_mode "message".

where: inside a virtual environment the default is --sys-prefix (the environment's own kernelspec and policy,
beside the image built from it; `jupyter kernelspec list` in the environment finds it); elsewhere --user.
--user in a virtual environment installs per user, shared by (and overwritten from) every environment.

examples:
  teelab kernel install                           "Python 3 (teelab · simulated TEE)" for this environment
  teelab kernel install --user                    for this user, in every environment
  teelab kernel install --policy my-policy.toml   pin your own reference values
then: jupyter lab, and pick the kernel; or  jupyter console --kernel teelab-sim
"""


def _install(args: argparse.Namespace) -> int:
    from teelab.enclave_runtime.backends import get_backend
    from teelab.enclave_runtime.progress import hashing_progress
    from teelab.kernel.kernelspec import install

    with hashing_progress("building the kernel image") as progress:
        installed = install(
            backend=args.backend,
            name=args.name,
            display_name=args.display_name,
            policy=args.policy,
            user=True if args.user else False if args.sys_prefix else None,
            signing_key=args.signing_key,
            progress=progress,
            identity_file=args.identity_file,
        )
    where = "for this user (every environment)" if installed.user else "for this environment (sys.prefix)"
    print(f"kernelspec     {installed.name} → {installed.kernelspec_dir}")
    print(f"installed      {where}{'' if args.user or args.sys_prefix else ' — the default here'}")
    print(f"policy         {installed.policy_file}")
    print(f"image          {installed.image.path}")
    label, value = get_backend(args.backend).describe_measurement(installed.image)
    print(f"{label:<14} {value}")
    if installed.controller is not None:
        print(f"controller     {installed.controller.hex()} (pinned in the measured image)")
        print(
            "note           launch it from a server using this gateway identity (c.TeeProvisioner.identity_file)"
        )
    if args.backend == "sim":
        print("note           the simulated TEE is NOT confidential: the real protocol, no isolation")
    return 0


def _uninstall(args: argparse.Namespace) -> int:
    from teelab.kernel.kernelspec import uninstall

    for path in uninstall(args.name):
        print(f"removed {path}")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from teelab.cli import HelpFormatter

    kernel = subparsers.add_parser(
        "kernel", help="install attested Jupyter kernels", formatter_class=HelpFormatter
    )
    kernel.set_defaults(group_parser=kernel)
    commands = kernel.add_subparsers(dest="kernel_command", metavar="COMMAND")
    install = commands.add_parser(
        "install",
        help="install a teelab kernelspec with its enclave image and policy",
        description="Install an attested Python kernel for Jupyter.",
        epilog=INSTALL_EPILOG,
        formatter_class=HelpFormatter,
    )
    install.add_argument("--backend", default="sim", help="TEE backend (default: sim)")
    install.add_argument(
        "--policy", type=Path, metavar="FILE", help="appraisal policy (TOML, docs/policy.md)"
    )
    install.add_argument("--name", help="kernelspec name (default: teelab-BACKEND)")
    install.add_argument("--display-name", help="name shown in JupyterLab")
    install.add_argument(
        "--signing-key", type=Path, metavar="PEM", help="enclave signing key (RSA-3072, e=3)"
    )
    install.add_argument(
        "--identity-file",
        type=Path,
        metavar="PEM",
        help="the gateway identity whose controller a Gramine image pins (default: the server's default, "
        "<teelab data folder>/gateway-identity.pem; created if missing)",
    )
    where = install.add_mutually_exclusive_group()
    where.add_argument(
        "--user", action="store_true", help="install for this user (default outside a virtual environment)"
    )
    where.add_argument(
        "--sys-prefix",
        action="store_true",
        help="install into this Python environment (default inside a virtual environment)",
    )
    install.set_defaults(handler=_install)

    uninstall = commands.add_parser("uninstall", help="remove a teelab kernelspec and its policy")
    uninstall.add_argument("name", nargs="?", default="teelab-sim")
    uninstall.set_defaults(handler=_uninstall)
