"""Commands of ``teelab.enclave_runtime``: ``enclave build|measure``, ``sim quote|info|reset``, ``doctor``."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from teelab.errors import UsageError

if TYPE_CHECKING:
    pass

BUILD_EPILOG = """\
examples:
  teelab enclave build                       build and sign the kernel's image with your signing key
  teelab enclave build --debug               a debug image (attestation policies refuse it by default)
  teelab enclave build --signing-key author.pem --isv-prod-id 1 --isv-svn 3
"""

MEASURE_EPILOG = """\
The last line printed is the MRENCLAVE alone, ready to paste into a policy:

  [sgx]
  mrenclave = ["<that value>"]

It depends only on the trusted files' contents and paths, the entrypoint, argv and environment, so it is
the same on every run and on every machine with the same environment. The first run hashes every file of
the Python environment (seconds); later runs reuse a cache keyed by path, size, mtime, ctime and inode.

examples:
  teelab enclave measure
  teelab enclave measure --python /opt/venv/bin/python --json
"""

QUOTE_EPILOG = """\
Writes DIR/quote.bin (an SGX ECDSA quote v3 signed by this machine's simulated platform) and
DIR/collateral/ (TCB info, QE identity, CRLs and issuer chains in Intel's formats). Verify it with:

  teelab evidence verify DIR/quote.bin --collateral DIR/collateral --allow-simulation

examples:
  teelab sim quote --report-data 48656c6c6f --out /tmp/q
  teelab sim quote --report-data $(python -c 'print("ab"*64)') --debug --out /tmp/q
"""


def _add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        default="sim",
        metavar="NAME",
        help="TEE backend: sim (default), gramine, occlum, cvm, or gramine-direct (development only: "
        "no SGX, no attestation)",
    )
    parser.add_argument(
        "--python", metavar="PATH", help="the interpreter whose environment to measure (default: this one)"
    )
    parser.add_argument("--isv-prod-id", type=int, default=0, metavar="N", help="ISV product id (default 0)")
    parser.add_argument(
        "--isv-svn", type=int, default=0, metavar="N", help="ISV security version (default 0)"
    )
    parser.add_argument(
        "--controller",
        metavar="HEX",
        help="pin this controller (SHA-256 of a gateway's key, 64 hex digits) in the measured image: the "
        "binding for TEEs whose launcher cannot set it (Gramine; see docs/backends.md)",
    )


def _spec(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from teelab.enclave_runtime.images import kernel_image_spec

    for name in ("isv_prod_id", "isv_svn"):
        if not 0 <= getattr(args, name) <= 0xFFFF:
            raise UsageError(f"--{name.replace('_', '-')} must be between 0 and 65535")
    if args.python and not os.access(args.python, os.X_OK):
        raise UsageError(f"--python {args.python} is not an executable interpreter")
    signing_key = getattr(args, "signing_key", None)
    if signing_key is not None and not Path(signing_key).is_file():
        raise UsageError(f"--signing-key {signing_key} does not exist", hint="give the author's PEM key file")
    spec = kernel_image_spec(args.python, isv_prod_id=args.isv_prod_id, isv_svn=args.isv_svn)
    if args.controller is None:
        return spec
    from teelab.enclave_runtime.controller import CONTROLLER_SIZE, pin_controller

    try:
        controller = bytes.fromhex(args.controller)
    except ValueError:
        controller = b""
    if len(controller) != CONTROLLER_SIZE:
        raise UsageError("--controller must be 64 hex digits (the SHA-256 of a gateway's identity key)")
    return pin_controller(spec, controller)


def _measure(args: argparse.Namespace) -> int:
    from teelab.enclave_runtime.backends import get_backend
    from teelab.enclave_runtime.progress import hashing_progress

    backend = get_backend(args.backend)
    with hashing_progress("measuring") as progress:
        measured = backend.measure(_spec(args), progress=progress)
    manifest, mrenclave = measured.manifest, measured.mrenclave.hex()
    if args.json:
        print(
            json.dumps(
                {
                    "image": manifest.name,
                    "backend": args.backend,
                    "entrypoint": manifest.entrypoint,
                    "argv": list(manifest.argv),
                    "trusted_files": len(manifest.trusted_files),
                    "trusted_bytes": manifest.total_size,
                    "isv_prod_id": manifest.isv_prod_id,
                    "isv_svn": manifest.isv_svn,
                    "mrenclave": mrenclave,
                    "measurement_label": backend.measurement_label,
                }
            )
        )
        print(mrenclave)
        return 0
    print(f"image          {manifest.name} (backend {args.backend})")
    print(f"entrypoint     {manifest.entrypoint}")
    print(f"argv           {' '.join(manifest.argv)}")
    print(f"trusted files  {len(manifest.trusted_files):,} files, {manifest.total_size / 1e6:,.1f} MB")
    print(f"isv ids        product {manifest.isv_prod_id}, svn {manifest.isv_svn}")
    signer = "" if backend.simulated else "  (MRSIGNER depends on the key given to `enclave build`)"
    print(f"{backend.measurement_label:<14} {mrenclave}{signer}")
    print(mrenclave)
    return 0


def _build(args: argparse.Namespace) -> int:
    from teelab.enclave_runtime.backends import get_backend
    from teelab.enclave_runtime.progress import hashing_progress

    backend = get_backend(args.backend)
    spec = _spec(args)
    with hashing_progress("building") as progress:
        image = backend.build(
            spec, out=args.out, signing_key=args.signing_key, debug=args.debug, progress=progress
        )
    print(f"built          {image.path}")
    if args.backend == "cvm":
        from teelab.enclave_runtime.cvm.backend import MEASURE_EXPLANATION

        print(f"trusted files  {len(image.manifest.trusted_files):,} (checked before each launch)")
        label, value = backend.describe_measurement(image)
        print(f"attested by    the VM's {label}, {value}: {MEASURE_EXPLANATION}")
        return 0
    if args.backend == "gramine-direct":
        print("WARNING        gramine-direct launches have no SGX protection and no attestation")
    print(f"trusted files  {len(image.manifest.trusted_files):,}")
    print(f"debug          {'yes — attestation policies refuse debug enclaves' if args.debug else 'no'}")
    print(f"mrsigner       {image.mrsigner.hex()}")
    label, value = backend.describe_measurement(image)
    print(f"{label:<14} {value}")
    print(image.mrenclave.hex())
    return 0


def _report_data(text: str) -> bytes:
    text = text.strip().lower().removeprefix("0x")
    try:
        data = bytes.fromhex(text)
    except ValueError:
        raise UsageError(f"--report-data is not hex: {text!r}") from None
    if len(data) > 64:
        raise UsageError(f"--report-data is {len(data)} bytes; report data holds at most 64")
    return data.ljust(64, b"\x00")  # shorter report data is zero-padded, as Gramine does


def _sim_quote(args: argparse.Namespace) -> int:
    from teelab.enclave_runtime.hashcache import HashCache
    from teelab.enclave_runtime.image import EnclaveImage
    from teelab.enclave_runtime.images import kernel_image_spec
    from teelab.enclave_runtime.manifest import expand
    from teelab.enclave_runtime.progress import hashing_progress
    from teelab.enclave_runtime.signing import load_or_create_key, mrsigner_of
    from teelab.enclave_runtime.sim.platform import SimPlatform
    from teelab.enclave_runtime.sim.sgx_structs import (
        ATTRIBUTE_DEBUG,
        ATTRIBUTE_INIT,
        ATTRIBUTE_MODE64BIT,
        ReportBody,
    )
    from teelab.timeutil import parse_time, utcnow

    report_data = _report_data(args.report_data)
    at = parse_time(args.at) if args.at else utcnow()
    platform = SimPlatform.open(now=at)
    if args.image:
        image = EnclaveImage.load(Path(args.image), "sim")
        mrenclave, mrsigner = image.mrenclave, image.mrsigner
        prod_id, svn = image.sigstruct.isv_prod_id, image.sigstruct.isv_svn
        debug = image.sigstruct.debug or args.debug
    else:
        with HashCache() as cache, hashing_progress("measuring the kernel image") as progress:
            manifest = expand(kernel_image_spec(), cache, progress)
        mrenclave, mrsigner = manifest.mrenclave, mrsigner_of(load_or_create_key().public_key())
        prod_id, svn, debug = manifest.isv_prod_id, manifest.isv_svn, args.debug
    body = ReportBody(
        cpusvn=platform.tcb.cpusvn,
        mrenclave=mrenclave,
        mrsigner=mrsigner,
        isv_prod_id=prod_id,
        isv_svn=svn,
        report_data=report_data,
        attributes_flags=ATTRIBUTE_INIT | ATTRIBUTE_MODE64BIT | (ATTRIBUTE_DEBUG if debug else 0),
    )
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "quote.bin").write_bytes(platform.quote(body))
        platform.collateral(at).write_folder(out / "collateral")
    except OSError as error:
        raise UsageError(f"cannot write the quote into --out {out}: {error.strerror or error}") from None
    print(f"quote          {out / 'quote.bin'} (SGX ECDSA quote v3, SIMULATED — not confidential)")
    print(f"collateral     {out / 'collateral'}/ (valid 30 days)")
    print(f"mrenclave      {mrenclave.hex()}")
    print(f"mrsigner       {mrsigner.hex()}")
    print(f"debug          {'yes' if debug else 'no'}")
    print(f"sim root       sha256 {platform.root_fingerprint}")
    verify = (
        f"teelab evidence verify {out / 'quote.bin'} --collateral {out / 'collateral'} --allow-simulation"
    )
    print(f"verify with    {verify}")
    return 0


def _sim_info(args: argparse.Namespace) -> int:
    from teelab.enclave_runtime.sim.platform import SimPlatform

    platform = SimPlatform.open()
    info = {
        "path": str(platform.path),
        "created_at": platform.created_at.isoformat(),
        "root_fingerprint": platform.root_fingerprint,
        "fmspc": platform.tcb.fmspc.hex(),
        "pcesvn": platform.tcb.pcesvn,
        "comp_svns": list(platform.tcb.comp_svns),
    }
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        for key, value in info.items():
            print(f"{key:<17}{value}")
    return 0


def _sim_reset(args: argparse.Namespace) -> int:
    from teelab.enclave_runtime.sim.platform import default_path

    path = default_path()
    if not args.yes:
        raise UsageError(
            f"this deletes the simulated platform at {path}; quotes it signed will no longer verify",
            hint="run again with --yes",
        )
    shutil.rmtree(path, ignore_errors=True)
    print(f"removed {path}; a fresh simulated platform is created on next use")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from teelab.cli import HelpFormatter

    enclave = subparsers.add_parser(
        "enclave", help="build and measure enclave images", formatter_class=HelpFormatter
    )
    enclave.set_defaults(group_parser=enclave)
    enclave_commands = enclave.add_subparsers(dest="enclave_command", metavar="COMMAND")

    build = enclave_commands.add_parser(
        "build",
        help="build and sign the kernel's enclave image",
        description="Build the attested kernel's enclave image: hash every trusted file into its manifest "
        "and sign its MRENCLAVE.",
        epilog=BUILD_EPILOG,
        formatter_class=HelpFormatter,
    )
    _add_spec_arguments(build)
    build.add_argument("--out", type=Path, metavar="DIR", help="where to write the image")
    build.add_argument(
        "--signing-key", type=Path, metavar="PEM", help="RSA-3072 (e=3) key of the enclave author"
    )
    build.add_argument("--debug", action="store_true", help="build a debug enclave")
    build.set_defaults(handler=_build)

    measure = enclave_commands.add_parser(
        "measure",
        help="print the kernel image's MRENCLAVE (the value to pin)",
        description="Measure the attested kernel's enclave image and print its MRENCLAVE.",
        epilog=MEASURE_EPILOG,
        formatter_class=HelpFormatter,
    )
    _add_spec_arguments(measure)
    measure.add_argument("--json", action="store_true", help="one JSON line, then the MRENCLAVE")
    measure.set_defaults(handler=_measure)

    sim = subparsers.add_parser(
        "sim", help="the simulated TEE platform (not confidential)", formatter_class=HelpFormatter
    )
    sim.set_defaults(group_parser=sim)
    sim_commands = sim.add_subparsers(dest="sim_command", metavar="COMMAND")
    quote = sim_commands.add_parser(
        "quote",
        help="write a simulated SGX quote and its collateral",
        description="Produce an SGX ECDSA quote v3 over the kernel's measured enclave image, signed by this "
        "machine's simulated platform.",
        epilog=QUOTE_EPILOG,
        formatter_class=HelpFormatter,
    )
    quote.add_argument("--report-data", required=True, metavar="HEX", help="up to 64 bytes, zero-padded")
    quote.add_argument("--out", required=True, metavar="DIR", help="folder for quote.bin and collateral/")
    quote.add_argument("--image", metavar="DIR", help="a built image (default: measure the kernel image now)")
    quote.add_argument("--debug", action="store_true", help="set the DEBUG attribute")
    quote.add_argument("--at", metavar="ISO-8601", help="issue the collateral as of this time (default now)")
    quote.set_defaults(handler=_sim_quote)

    info = sim_commands.add_parser("info", help="show the simulated platform", formatter_class=HelpFormatter)
    info.add_argument("--json", action="store_true")
    info.set_defaults(handler=_sim_info)
    reset = sim_commands.add_parser(
        "reset",
        help="delete the simulated platform (a new one is created on use)",
        formatter_class=HelpFormatter,
    )
    reset.add_argument("--yes", action="store_true", help="really delete it")
    reset.set_defaults(handler=_sim_reset)


if __name__ == "__main__":
    sys.exit(0)
