"""Commands of teelab.gateway: ``teelab evidence verify`` and ``teelab evidence ear-key``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from teelab.cli import HelpFormatter
from teelab.errors import UsageError

if TYPE_CHECKING:
    from teelab.gateway.anchors import TrustAnchors

EVIDENCE_DESCRIPTION = """\
Verify remote-attestation evidence (Intel SGX/TDX DCAP quotes, AMD SEV-SNP reports) and judge it against an
appraisal policy. `teelab evidence verify --help` has examples.
"""

VERIFY_DESCRIPTION = """\
Verify EVIDENCE (an Intel DCAP quote v3-v5 for SGX or TDX, or an SEV-SNP attestation report v2-v5; binary or
hex text) and appraise it against a policy. Signatures, certificate chains to pinned roots, revocation and
collateral are always checked; the policy decides what else is acceptable (measurements, TCB status,
advisories, debug, simulation). Without --policy the default policy accepts only an up-to-date, non-debug,
non-simulated TEE with no advisories; see docs/policy.md.
"""

VERIFY_EPILOG = """\
examples:
  # a real SGX quote and its collateral, judged inside the collateral's validity window
  teelab evidence verify sgx_quote.bin --collateral sgx_quote_collateral.json --at 2025-07-01T00:00:00Z

  # the same against your own policy (pinned MRENCLAVE, accepted TCB statuses ...), as JSON
  teelab evidence verify quote.bin --collateral pcs/ --policy policy.toml --json

  # an SEV-SNP report with its VCEK and the AMD ASK/ARK chain (file or folder)
  teelab evidence verify report.bin --certs certs/ --at 2022-09-24T01:00:00Z

  # a simulated quote from `teelab sim quote` (development only: NOT confidential)
  teelab evidence verify q/quote.bin --collateral q/collateral --allow-simulation

  # a signed EAR token (JWT) for a relying party; it pins `teelab evidence ear-key`
  teelab evidence verify quote.bin --collateral pcs/ --ear > result.jwt

time:
  Intel collateral (TCB info, QE identity, CRLs) is valid for about 30 days. --at defaults to now, so
  evidence verified with old collateral is rejected unless --at names a time inside the collateral's window.

exit status:
  0 accepted, 1 rejected (malformed evidence included), 2 usage error (missing file, bad --at, bad policy)
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = subparsers.add_parser(
        "evidence",
        help="verify TEE attestation evidence against a policy",
        description=EVIDENCE_DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    group.set_defaults(group_parser=group)
    commands = group.add_subparsers(dest="evidence_command", metavar="COMMAND")

    verify = commands.add_parser(
        "verify",
        help="verify and appraise evidence (SGX/TDX quote, SEV-SNP report)",
        description=VERIFY_DESCRIPTION,
        epilog=VERIFY_EPILOG,
        formatter_class=HelpFormatter,
    )
    verify.add_argument(
        "evidence", metavar="EVIDENCE", type=Path, help="the quote or report (binary or hex text)"
    )
    verify.add_argument(
        "--collateral",
        metavar="PATH",
        type=Path,
        help="Intel collateral: a folder of PCS files (TCB info, QE identity, CRLs, chains) or a JSON bundle",
    )
    verify.add_argument(
        "--certs",
        metavar="PATH",
        type=Path,
        action="append",
        help="SEV-SNP certificates: VCEK/VLEK plus ASK/ARK (DER/PEM, file or folder; repeat for several), "
        "and AMD's CRL to check them against (a PEM X509 CRL block, or a *.crl file in the folder)",
    )
    verify.add_argument(
        "--policy", metavar="FILE", type=Path, help="appraisal policy (TOML, see docs/policy.md)"
    )
    verify.add_argument(
        "--at", metavar="ISO-8601", help="verification time, e.g. 2025-07-01T00:00:00Z (default: now)"
    )
    verify.add_argument(
        "--allow-simulation",
        action="store_true",
        help="accept evidence from a simulated TEE (development only: nothing is confidential)",
    )
    verify.add_argument(
        "--allow-debug",
        action="store_true",
        help="accept a debug TEE (development only: the host can read its memory)",
    )
    verify.add_argument(
        "--trust-root",
        metavar="PEM",
        type=Path,
        action="append",
        default=[],
        help="also trust this root certificate (Intel-style EC root or AMD ARK); repeatable",
    )
    verify.add_argument(
        "--report-data",
        metavar="HEX",
        help="require this report_data (up to 64 bytes, zero-padded on the right)",
    )
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.add_argument(
        "--ear",
        action="store_true",
        help='print a signed EAR token (JWT) of the result (with --json: as the "ear" field)',
    )
    verify.set_defaults(handler=_verify)

    ear_key = commands.add_parser(
        "ear-key",
        help="print the gateway's EAR signing public key (PEM) for relying parties to pin",
        description="Print the public key that signs EAR tokens (created on first use).",
        formatter_class=HelpFormatter,
    )
    ear_key.set_defaults(handler=_ear_key)


def _verify(args: argparse.Namespace) -> int:
    from teelab.gateway.policy import AppraisalPolicy, load_policy
    from teelab.gateway.result import render_summary
    from teelab.gateway.verifier import default_anchors, recognise, verify_evidence
    from teelab.timeutil import parse_time, utcnow

    at = parse_time(args.at) if args.at else utcnow()
    evidence = _read_input(args.evidence, "evidence file")
    policy = load_policy(args.policy) if args.policy else AppraisalPolicy()
    policy = policy.with_overrides(allow_debug=args.allow_debug, allow_simulation=args.allow_simulation)
    expected = _report_data(args.report_data) if args.report_data is not None else None
    anchors = default_anchors()
    for root in args.trust_root:
        anchors = _pin_root(anchors, root)
    for path, what in ((args.collateral, "collateral"), *((p, "certificates") for p in args.certs or ())):
        if path is not None and not path.exists():
            raise UsageError(f"{what} not found: {path}")
    found = recognise(evidence)
    if found is not None and found.format == "intel-dcap" and args.collateral is None:
        raise UsageError(
            f"{args.evidence} is an Intel DCAP quote; it needs its collateral",
            hint="pass --collateral PATH (a folder of Intel PCS files, or a JSON bundle)",
        )
    if found is not None and found.format == "sev-snp" and args.certs is None:
        raise UsageError(
            f"{args.evidence} is an SEV-SNP report; it needs its VCEK/VLEK and the AMD chain",
            hint="pass --certs PATH (DER/PEM file or folder)",
        )
    result = verify_evidence(
        evidence,
        collateral=args.collateral,
        certs=_certificates(args.certs),
        at=at,
        anchors=anchors,
        policy=policy,
        expected_report_data=expected,
    )
    token = None
    if args.ear:
        from teelab.gateway.ear import encode_ear

        token = encode_ear(result)
    if args.json:
        document = result.to_json()
        if token is not None:
            document["ear"] = token
        print(json.dumps(document, indent=2))
    elif token is not None:
        # The token goes to stdout so it can be redirected; the person still reads the verdict.
        print(token)
        print(render_summary(result), file=sys.stderr)
    else:
        print(render_summary(result))
    return 0 if result.ok else 1


def _ear_key(args: argparse.Namespace) -> int:
    from teelab.gateway.ear import public_key_pem

    print(public_key_pem(), end="")
    return 0


def _certificates(paths: list[Path] | None) -> Path | list[bytes] | None:
    """One --certs as given (a path the verifier loads); several merged into one set."""
    if not paths:
        return None
    if len(paths) == 1:
        return paths[0]
    from teelab.gateway.snp.certs import certificate_files

    blobs = []
    for path in paths:
        for file in certificate_files(path) if path.is_dir() else [path]:
            blobs.append(_read_input(file, "certificates"))
    # Bytes: the verifier parses them, and a malformed certificate becomes a rejection naming the check.
    return blobs


def _read_input(path: Path, what: str) -> bytes:
    from teelab.gateway.verifier import MAX_EVIDENCE_BYTES

    try:
        with path.open("rb") as handle:
            # One byte over the limit is enough for the verifier to refuse it with a reason.
            return handle.read(MAX_EVIDENCE_BYTES + 1)
    except FileNotFoundError:
        raise UsageError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"{what} is a folder, not a file: {path}") from None
    except OSError as error:
        raise UsageError(f"cannot read {what} {path}: {error.strerror or error}") from None


def _report_data(text: str) -> bytes:
    digits = text.strip().lower().removeprefix("0x")
    try:
        value = bytes.fromhex(digits)
    except ValueError:
        raise UsageError(f"--report-data is not hex: {text!r}") from None
    if not 1 <= len(value) <= 64:
        raise UsageError(f"--report-data is {len(value)} bytes; give 1 to 64 bytes")
    return value


def _pin_root(anchors: TrustAnchors, path: Path) -> TrustAnchors:
    """Pin every certificate in a PEM/DER file: EC roots as Intel-style roots, RSA roots as AMD ARKs."""
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import NameOID

    data = _read_input(path, "--trust-root file")
    try:
        certificates = (
            x509.load_pem_x509_certificates(data)
            if b"-----BEGIN" in data
            else [x509.load_der_x509_certificate(data)]
        )
    except ValueError as error:
        raise UsageError(f"--trust-root {path} is not a PEM or DER certificate: {error}") from None
    for certificate in certificates:
        fingerprint = hashlib.sha256(certificate.public_bytes(Encoding.DER)).hexdigest()
        names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        common_name = str(names[0].value) if names else fingerprint[:16]
        key = certificate.public_key()
        if isinstance(key, ec.EllipticCurvePublicKey):
            anchors = anchors.with_intel_root(fingerprint, f"{common_name} (pinned with --trust-root)")
        elif isinstance(key, rsa.RSAPublicKey):
            product = common_name.removeprefix("ARK-")
            arks = dict(anchors.amd_arks)
            arks[fingerprint] = product
            anchors = type(anchors)(dict(anchors.intel_roots), arks, dict(anchors.simulated_roots))
        else:
            raise UsageError(f"--trust-root {path}: {common_name} has neither an EC nor an RSA key")
    return anchors
