"""One entry point for any evidence: recognise the format, verify it, appraise it, return a result.

:func:`verify_evidence` never raises for anything wrong with the evidence or its collateral — hostile bytes
give a ``contraindicated`` result carrying every check made up to the failure. Only usage problems
(:class:`~teelab.errors.ConfigError`, :class:`~teelab.errors.UsageError`, e.g. a collateral path that does
not exist) are raised, because they are the caller's to fix, not the evidence's fault.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from teelab.enclave_runtime.backend import RootPin
from teelab.errors import ConfigError, UsageError, VerificationError
from teelab.gateway import dcap, snp
from teelab.gateway.anchors import TrustAnchors
from teelab.gateway.appraisal import appraise, reject_unverified
from teelab.gateway.checks import Check, CheckLog
from teelab.gateway.controller import check_controller_hash
from teelab.gateway.dcap import IntelCollateral
from teelab.gateway.policy import AppraisalPolicy
from teelab.gateway.result import AttestationResult
from teelab.gateway.snp import SnpCertificates
from teelab.gateway.verified import Tee, VerifiedEvidence

EvidenceFormat = Literal["intel-dcap", "sev-snp"]

# Quotes with their certification data are a few kilobytes; nothing legitimate comes near this.
MAX_EVIDENCE_BYTES = 1 << 20
SNP_REPORT_SIZE = 1184
_INTEL_TEE_TYPES: dict[int, Tee] = {0x00000000: "sgx", 0x00000081: "tdx"}
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


@dataclass(frozen=True)
class Recognised:
    format: EvidenceFormat
    tee: Tee | None
    data: bytes
    description: str


def recognise(evidence: bytes) -> Recognised | None:
    """Which kind of evidence this is, from its header alone (binary, or the hex text of it)."""
    found = _recognise_binary(evidence)
    if found is None:
        decoded = _from_hex_text(evidence)
        binary = _recognise_binary(decoded) if decoded is not None else None
        if decoded is not None and binary is not None:
            found = Recognised(binary.format, binary.tee, decoded, binary.description + " (from hex text)")
    return found


def _from_hex_text(text: bytes) -> bytes | None:
    """Hex text as tools print it (optional 0x, any whitespace or line breaks); None if it is not that."""
    digits = b"".join(text.split())
    if digits[:2] in (b"0x", b"0X"):
        digits = digits[2:]
    if not digits or len(digits) % 2 or not _HEX_DIGITS.issuperset(digits):
        return None
    return bytes.fromhex(digits.decode("ascii"))


def _recognise_binary(data: bytes) -> Recognised | None:
    if len(data) >= 8:
        version, key_type, tee_type = struct.unpack_from("<HHI", data)
        if 3 <= version <= 5 and key_type == 2:
            tee = _INTEL_TEE_TYPES.get(tee_type)
            kind = tee.upper() if tee else f"unknown TEE type {tee_type:#x}"
            return Recognised(
                "intel-dcap", tee, data, f"Intel DCAP quote v{version} ({kind}), {len(data)} bytes"
            )
    if len(data) >= SNP_REPORT_SIZE:
        (version,) = struct.unpack_from("<I", data)
        if 2 <= version <= 5:
            return Recognised(
                "sev-snp", "sev-snp", data, f"SEV-SNP attestation report v{version}, {len(data)} bytes"
            )
    return None


def default_anchors(pins: Iterable[RootPin] = ()) -> TrustAnchors:
    """The production roots, the roots the TEE backends know on this machine, and ``pins`` (a backend's
    ``root_pins()``): a simulated pin becomes a root marked simulated.

    Trusting a local simulated root is safe by default because evidence that chains to it is marked
    ``simulated`` and the default policy rejects simulated evidence; the sim root only lets that rejection
    say "simulated" instead of "unknown root".
    """
    from teelab.enclave_runtime.backends import known_root_pins

    anchors = TrustAnchors()
    for pin in (*known_root_pins(), *pins):
        if pin.simulated:
            anchors = anchors.with_simulated_root(pin.sha256, pin.label)
        else:
            anchors = anchors.with_intel_root(pin.sha256, pin.label)
    return anchors


def verify_evidence(
    evidence: bytes,
    *,
    collateral: IntelCollateral | str | Path | bytes | None = None,
    certs: SnpCertificates | str | Path | bytes | Sequence[bytes] | None = None,
    at: datetime,
    anchors: TrustAnchors | None = None,
    policy: AppraisalPolicy,
    expected_report_data: bytes | None = None,
    expected_controller: bytes | None = None,
) -> AttestationResult:
    """Verify and appraise ``evidence`` (an Intel DCAP quote or an SEV-SNP report, binary or hex text).

    ``collateral`` (Intel) and ``certs`` (SEV-SNP) are loaded objects, paths to load them from, or their
    bytes (a collateral JSON bundle; DER/PEM certificates or an SNP certificate table, e.g. the auxblob).
    ``expected_controller`` is the caller's controller hash, ``SHA-256(G.pub)`` of its gateway identity key;
    when given, the result has the check ``controller`` (:mod:`teelab.gateway.controller`).
    """
    if expected_controller is not None:
        check_controller_hash(expected_controller)
    anchors = anchors if anchors is not None else default_anchors()
    at = at if at.tzinfo else at.replace(tzinfo=UTC)  # a naive time is UTC, as everywhere in teelab

    def rejected(
        checks: list[Check], tee: Tee | None, cause: Literal["unrecognized", "verification", "malfunction"]
    ) -> AttestationResult:
        return reject_unverified(
            checks=checks,
            tee=tee,
            at=at,
            policy=policy,
            cause=cause,
            expected_report_data=expected_report_data,
        )

    if not isinstance(evidence, bytes | bytearray | memoryview):
        return rejected([Check("evidence.format", False, "evidence must be bytes")], None, "unrecognized")
    evidence = bytes(evidence)
    if len(evidence) > MAX_EVIDENCE_BYTES:
        detail = f"{len(evidence)} bytes is far larger than any TEE evidence (limit {MAX_EVIDENCE_BYTES})"
        return rejected([Check("evidence.format", False, detail)], None, "unrecognized")
    found = recognise(evidence)
    if found is None:
        return rejected([Check("evidence.format", False, _unrecognised(evidence))], None, "unrecognized")
    log = CheckLog([Check("evidence.format", True, found.description)])
    try:
        verified = _verify(found, collateral=collateral, certs=certs, at=at, anchors=anchors, log=log)
    except (ConfigError, UsageError):
        raise
    except VerificationError as error:
        carried = getattr(error, "checks", None)
        if len(log.checks) == 1 and isinstance(carried, list) and all(isinstance(c, Check) for c in carried):
            log.checks.extend(carried)
        if not log.checks or log.checks[-1].name != error.check or log.checks[-1].passed:
            log.checks.append(Check(error.check, False, error.detail))
        return rejected(log.checks, found.tee, "verification")
    except Exception as error:
        detail = f"the verifier failed on this input ({type(error).__name__}: {error}); rejected to be safe"
        log.checks.append(Check("verifier.internal_error", False, detail))
        return rejected(log.checks, found.tee, "malfunction")
    verified = _with_format_check(verified, log.checks[0])
    try:
        return appraise(
            verified,
            policy,
            at=at,
            expected_report_data=expected_report_data,
            expected_controller=expected_controller,
        )
    except Exception as error:
        # Claims come from the evidence; a shape the appraisal did not expect is still only a rejection.
        detail = (
            f"the appraisal failed on these claims ({type(error).__name__}: {error}); rejected to be safe"
        )
        checks = [*verified.checks, Check("appraisal.internal_error", False, detail)]
        return rejected(checks, found.tee, "malfunction")


def _with_format_check(verified: VerifiedEvidence, check: Check) -> VerifiedEvidence:
    if verified.checks and verified.checks[0] == check:
        return verified
    return replace(verified, checks=[check, *verified.checks])


def _unrecognised(evidence: bytes) -> str:
    head = evidence[:8].hex() or "(empty)"
    return (
        f"not recognised as TEE evidence ({len(evidence)} bytes, starting {head}): an Intel DCAP quote "
        "starts with version 3-5 and attestation key type 2 (u16 each), an SEV-SNP report with version 2-5 "
        f"(u32) and is at least {SNP_REPORT_SIZE} bytes; hex text of either is accepted too"
    )


def _verify(
    found: Recognised,
    *,
    collateral: IntelCollateral | str | Path | bytes | None,
    certs: SnpCertificates | str | Path | bytes | Sequence[bytes] | None,
    at: datetime,
    anchors: TrustAnchors,
    log: CheckLog,
) -> VerifiedEvidence:
    # The verifiers record into our log, so a failure still carries every check made.
    if found.format == "intel-dcap":
        if collateral is None:
            log.fail(
                "collateral",
                "an Intel DCAP quote is verified against collateral (TCB info, QE identity, CRLs) and "
                "none was given; pass --collateral PATH (a folder of Intel PCS files or a JSON bundle)",
            )
        if isinstance(collateral, bytes):
            collateral = IntelCollateral.from_bundle_json(collateral)
        elif isinstance(collateral, str | Path):
            collateral = dcap.load_collateral(_existing(collateral, "collateral"))
        return dcap.verify_intel_quote(found.data, collateral, at=at, anchors=anchors, log=log)
    if certs is None:
        log.fail(
            "certificates",
            "an SEV-SNP report is verified with its VCEK/VLEK and the AMD chain and none was given; pass "
            "--certs PATH (DER/PEM file or folder)",
        )
    loaded: SnpCertificates
    if isinstance(certs, SnpCertificates):
        loaded = certs
    elif isinstance(certs, bytes):
        loaded = snp.load_certificates(certs)
    elif isinstance(certs, str | Path):
        loaded = snp.load_certificates(_existing(certs, "certificates"))
    else:  # several blobs (e.g. a VCEK file and a chain file)
        loaded = snp.SnpCertificates.from_bytes(*(bytes(blob) for blob in certs))
    return snp.verify_snp_report(found.data, loaded, at=at, anchors=anchors, log=log)


def _existing(path: str | Path, what: str) -> Path:
    # A path that does not exist is the caller's mistake (exit 2), not a property of the evidence.
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{what} not found: {path}", hint=f"check the path given for the {what}")
    return path
