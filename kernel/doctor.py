"""``teelab doctor``: which TEE backends this machine can run, and (``--acceptance``) one walk through the whole
attested path on it, with a report a hardware user can attach to an issue.

It lives in the kernel part, not in ``enclave_runtime``: the acceptance run drives every part as a user would
(kernel install, key broker, sealed dataset, attested kernel), and ``enclave_runtime`` — what runs inside the TEE
— imports no other part.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from teelab.enclave_runtime.backend import BackendStatus
from teelab.enclave_runtime.doctor import all_statuses

__all__ = ["backend_statuses", "register"]


def backend_statuses() -> list[BackendStatus]:
    """Each backend's availability on this machine (for the server extension's health report)."""
    return all_statuses()


def _acceptance(args: argparse.Namespace) -> int:
    from teelab.kernel.acceptance.report import REPORT_JSON, REPORT_TEXT
    from teelab.kernel.acceptance.run import AcceptanceOptions, run_acceptance

    options = AcceptanceOptions(
        backend=args.backend,
        work=Path(args.work) if args.work else None,
        policy=Path(args.policy) if args.policy else None,
        signing_key=Path(args.signing_key) if args.signing_key else None,
        kbs_collateral=args.kbs_collateral,
    )
    out = Path(args.out)
    report = run_acceptance(options, out)
    print(report.summary(), end="")
    print(f"report: {out / REPORT_JSON} and {out / REPORT_TEXT} (attach both to an issue)")
    return 0 if report.ok else 1


def _doctor(args: argparse.Namespace) -> int:
    from teelab.enclave_runtime.doctor import all_statuses, render

    if args.acceptance:
        return _acceptance(args)
    statuses = all_statuses()
    if args.json:
        print(json.dumps([s.__dict__ for s in statuses], indent=1))
    else:
        print(render(statuses))
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from teelab.cli import HelpFormatter

    doctor = subparsers.add_parser(
        "doctor",
        help="which TEE backends this machine can run, and why not",
        description="Check this machine for each TEE backend (SGX devices, SEV/TDX guest interfaces, "
        "Gramine and Occlum tools, quote providers) and say precisely what is missing.",
        formatter_class=HelpFormatter,
    )
    doctor.add_argument("--json", action="store_true")
    doctor.add_argument(
        "--acceptance",
        action="store_true",
        help="walk the whole path once (install, key broker, dataset, attested kernel, cells, sealed read, "
        "loopback) in a fresh folder and write a report to attach to an issue (docs/backends.md)",
    )
    doctor.add_argument(
        "--backend", default="sim", help="with --acceptance: the backend to run (default: sim)"
    )
    doctor.add_argument("--out", default="teelab-acceptance", help="with --acceptance: the report's folder")
    doctor.add_argument(
        "--work", help="with --acceptance: the isolated working folder (default: a new temp one)"
    )
    doctor.add_argument(
        "--policy", help="with --acceptance: the policy pinning the image (hardware backends)"
    )
    doctor.add_argument("--signing-key", help="with --acceptance: the image author's key (Gramine, Occlum)")
    doctor.add_argument(
        "--kbs-collateral",
        help="with --acceptance: `teelab kbs serve --collateral` (default: sim for sim, else none)",
    )
    doctor.set_defaults(handler=_doctor)
