"""Verifying an SEV-SNP attestation report against its VCEK/VLEK chain.

Authenticity only: the report is well formed, signed by a VCEK or VLEK that chains to a pinned AMD ARK and
is valid at the given time, and that certificate was issued for this chip and this REPORTED_TCB. Whether the
measurement, policy bits (debug!) or TCB are acceptable is the appraisal policy's call.
"""

from __future__ import annotations

from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from teelab.errors import VerificationError
from teelab.gateway.anchors import TrustAnchors
from teelab.gateway.checks import CheckLog
from teelab.gateway.snp.certs import SnpCertificates
from teelab.gateway.snp.chain import VerifiedChain, check_inputs, verify_snp_chain
from teelab.gateway.snp.report import (
    REPORT_CHECK,
    SIG_ALGO_ECDSA_P384_SHA384,
    SIGNING_KEY_NAMES,
    SIGNING_KEY_VCEK,
    SIGNING_KEY_VLEK,
    SnpReport,
    TcbVersion,
    parse_report,
    tcb_layout,
)
from teelab.gateway.verified import ClaimValue, VerifiedEvidence

CHECK_SIGNER = "snp_report_signer"
CHECK_SIGNING_KEY = "snp_signing_key"
CHECK_SIGNATURE = "snp_report_signature"
CHECK_CPUID = "snp_cpuid_product"
CHECK_TCB = "snp_reported_tcb"
CHECK_CHIP_ID = "snp_chip_id"

_FETCH_HINT = "fetch the {kind} for this report's CHIP_ID and REPORTED_TCB from AMD KDS (snpguest fetch vcek)"


def _check_signer(report: SnpReport, certs: SnpCertificates, log: CheckLog) -> None:
    if report.signature_algo != SIG_ALGO_ECDSA_P384_SHA384:
        log.fail(CHECK_SIGNER, f"signature algorithm {report.signature_algo} is not ECDSA P-384/SHA-384 (1)")
    if report.signing_key not in (SIGNING_KEY_VCEK, SIGNING_KEY_VLEK):
        log.fail(
            CHECK_SIGNER, f"SIGNING_KEY is {report.signing_key_name}: the firmware did not sign this report"
        )
    log.passed(CHECK_SIGNER, f"ECDSA P-384/SHA-384 by the {report.signing_key_name.upper()}")
    said = SIGNING_KEY_NAMES[report.signing_key]
    if said != certs.kind:
        log.fail(
            CHECK_SIGNING_KEY,
            f"the report says its {said.upper()} signed it, but the certificate is the {certs.leaf.label}",
            hint=_FETCH_HINT.format(kind=said.upper()),
        )
    log.passed(CHECK_SIGNING_KEY, f"report and certificate agree: {said.upper()}")


def _check_signature(report: SnpReport, chain: VerifiedChain, log: CheckLog) -> None:
    key = chain.leaf.public_key
    assert isinstance(key, ec.EllipticCurvePublicKey)  # the loader admits only P-384 leaves
    try:
        key.verify(
            encode_dss_signature(report.signature_r, report.signature_s),
            report.signed_bytes,
            ec.ECDSA(hashes.SHA384()),
        )
    except (InvalidSignature, ValueError):
        log.fail(
            CHECK_SIGNATURE,
            f"the report's signature does not verify with the {chain.leaf.label}",
            hint="the report was altered, or the certificate is another chip's or another TCB's: "
            + _FETCH_HINT.format(kind=chain.leaf.role.upper()),
        )
    log.passed(CHECK_SIGNATURE, f"bytes 0x000-0x29F signed by the {chain.leaf.label}")


def _check_cpuid(report: SnpReport, product: str, log: CheckLog) -> None:
    if report.cpuid is None:
        return
    cpuid = report.cpuid
    said = cpuid.product
    where = f"CPUID family 0x{cpuid.family:02x} model 0x{cpuid.model:02x} stepping {cpuid.stepping}"
    if said is None:
        log.passed(
            CHECK_CPUID, f"{where} is not in teelab's product table; the ARK's product {product} stands"
        )
    elif said != product:
        log.fail(CHECK_CPUID, f"{where} is a {said} CPU, but the report chains to the {product} ARK")
    else:
        log.passed(CHECK_CPUID, f"{where} is a {product} CPU")


def _check_tcb(reported: TcbVersion, chain: VerifiedChain, log: CheckLog) -> None:
    vek = chain.leaf.vek
    assert vek is not None  # leaves always carry AMD's extensions
    expected = reported.components()
    missing = [name for name in expected if name not in vek.spls]
    if missing:
        log.fail(CHECK_TCB, f"the {chain.leaf.label} lacks the SPL extensions for {', '.join(missing)}")
    # Pitfall 14: the VCEK is issued for REPORTED_TCB, which can lag CURRENT_TCB.
    differ = [
        f"{name} {vek.spls[name]} != {value}" for name, value in expected.items() if vek.spls[name] != value
    ]
    if differ:
        log.fail(
            CHECK_TCB,
            f"the {chain.leaf.role.upper()} was issued for another TCB than REPORTED_TCB "
            f"0x{reported.raw:016x} (certificate vs report: {'; '.join(differ)})",
            hint=_FETCH_HINT.format(kind=chain.leaf.role.upper()),
        )
    parts = ", ".join(f"{name} {value}" for name, value in expected.items())
    log.passed(CHECK_TCB, f"REPORTED_TCB 0x{reported.raw:016x} ({parts}) = the certificate's SPLs")


def _check_chip_id(report: SnpReport, chain: VerifiedChain, log: CheckLog) -> None:
    vek = chain.leaf.vek
    assert vek is not None
    if chain.leaf.role == "vlek":
        if vek.hw_id is not None:
            log.fail(CHECK_CHIP_ID, "a VLEK is not chip-bound, yet this one carries a hwID")
        log.passed(
            CHECK_CHIP_ID, f"VLEK leased to {vek.csp_id or 'an unnamed provider'}: not bound to one chip"
        )
        return
    if vek.hw_id is None:
        log.fail(CHECK_CHIP_ID, f"the {chain.leaf.label} has no hwID extension")
    if report.mask_chip_key:
        log.passed(
            CHECK_CHIP_ID, "MASK_CHIP_KEY is set, so CHIP_ID is zeroed; the VCEK's signature binds the chip"
        )
        return
    hw_id = vek.hw_id
    if report.chip_id[: len(hw_id)] != hw_id or any(report.chip_id[len(hw_id) :]):
        log.fail(
            CHECK_CHIP_ID,
            f"the VCEK's hwID {hw_id.hex()} is not the report's CHIP_ID {report.chip_id.hex()}",
            hint=_FETCH_HINT.format(kind="VCEK"),
        )
    log.passed(CHECK_CHIP_ID, f"hwID = CHIP_ID ({len(hw_id)} bytes)")


def _claims(report: SnpReport) -> dict[str, ClaimValue]:
    return {
        "measurement": report.measurement.hex(),
        "host_data": report.host_data.hex(),
        "report_data": report.report_data.hex(),
        "chip_id": report.chip_id.hex(),
        "id_key_digest": report.id_key_digest.hex(),
        "author_key_digest": report.author_key_digest.hex(),
        "family_id": report.family_id.hex(),
        "image_id": report.image_id.hex(),
        "guest_svn": report.guest_svn,
        "vmpl": report.vmpl,
        "policy": report.policy,
        "version": report.version,
        "debug": report.debug,
    }


def _details(report: SnpReport, chain: VerifiedChain) -> dict[str, object]:
    layout = tcb_layout(chain.product)
    vek = chain.leaf.vek
    details: dict[str, object] = {
        f"{name}_tcb": tcb.components() for name, tcb in report.tcbs(layout).items()
    }
    details.update(
        {
            "tcb_raw": {name: tcb.raw for name, tcb in report.tcbs(layout).items()},
            "platform_info": report.platform_info,
            "signing_key": chain.leaf.role,
            "product": chain.product,
            "vek_product_name": vek.product_name if vek else None,
            "csp_id": vek.csp_id if vek else None,
            "report_id": report.report_id.hex(),
            "report_id_ma": report.report_id_ma.hex(),
            "author_key_en": report.author_key_en,
            "mask_chip_key": report.mask_chip_key,
            "firmware": {
                "current": vars(report.current_version).copy(),
                "committed": vars(report.committed_version).copy(),
            },
            "cpuid": vars(report.cpuid).copy() if report.cpuid else None,
            "launch_mit_vector": report.launch_mit_vector,
            "current_mit_vector": report.current_mit_vector,
            "chain_cached": chain.cached,
            "amd_crl_checked": chain.crl_checked,
        }
    )
    return details


def verify_snp_report(
    report: bytes,
    certs: SnpCertificates,
    *,
    at: datetime,
    anchors: TrustAnchors,
    log: CheckLog | None = None,
) -> VerifiedEvidence:
    """Verify an SEV-SNP report at time ``at`` (naive = UTC) against ``certs`` and the pinned ARKs.

    Raises VerificationError naming the first check that failed; pass ``log`` to keep the checks made
    up to that point.
    """
    log = log if log is not None else CheckLog()
    check_inputs(certs, at, anchors, log)
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    try:
        parsed = parse_report(report)
    except VerificationError as exc:
        log.fail(exc.check, exc.detail, hint=exc.hint)
    log.passed(REPORT_CHECK, f"SEV-SNP attestation report version {parsed.version}")

    _check_signer(parsed, certs, log)
    chain = verify_snp_chain(certs, at=at, anchors=anchors, log=log)
    _check_signature(parsed, chain, log)
    _check_cpuid(parsed, chain.product, log)
    _check_tcb(TcbVersion.decode(parsed.reported_tcb, tcb_layout(chain.product)), chain, log)
    _check_chip_id(parsed, chain, log)
    return VerifiedEvidence(
        tee="sev-snp",
        simulated=False,
        tcb_status=None,
        advisory_ids=[],
        claims=_claims(parsed),
        checks=log.checks,
        valid_from=chain.valid_from,
        valid_until=chain.valid_until,
        details=_details(parsed, chain),
    )
