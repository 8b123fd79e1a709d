"""Verify an Intel DCAP quote (SGX or TDX) against collateral, at a given time, under pinned roots.

Every check is recorded in order with a reason a person can act on. Authenticity failures (a signature, a
chain, a root, revocation, a collateral window, a QE or TDX-module identity) raise VerificationError. A TCB
that matches no level of the TCB info is not a crash: the result carries tcb_status "TcbLevelNotFound" and a
failed check, and policy rejects it.

Decisions (details in gateway/dcap/README.md):
* TDX TCB levels follow Intel's QVL: when TEE_TCB_SVN[1] (TDX module major version) is non-zero, the
  comparison with ``tdxtcbcomponents`` starts at index 2, because the module SVN is judged by the TDX module
  identity. dcap-qvl compares all 16; none of the public vectors separates the two rules.
* SEAMATTRIBUTES are compared under the identity's attributesMask, like MISCSELECT/ATTRIBUTES of the QE.
* The embedded root must equal a pinned root byte for byte (by SHA-256 fingerprint).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from hashlib import sha256
from typing import Any, TypeVar

from teelab.errors import VerificationError
from teelab.gateway.anchors import TrustAnchors
from teelab.gateway.checks import Check, CheckLog
from teelab.gateway.dcap import tcb
from teelab.gateway.dcap.chain import (
    PckChain,
    SigningChain,
    Window,
    assemble_pck_chain,
    crl_issued_by,
    document_signature_ok,
    pck_chain_from_pem,
    qe_report_signed,
    verify_signing_chain,
)
from teelab.gateway.dcap.claims import NOT_FOUND, TcbFindings, quote_claims, quote_details
from teelab.gateway.dcap.collateral import QE_IDENTITY_FOR_TEE, IntelCollateral, SignedDoc
from teelab.gateway.dcap.crypto import p256_key, verify_raw
from teelab.gateway.dcap.guard import internal_error
from teelab.gateway.dcap.pem import load_certificates
from teelab.gateway.dcap.qeidentity import EnclaveIdentity
from teelab.gateway.dcap.quote import (
    CERT_PCK_CHAIN,
    CERT_PPID_CLEARTEXT,
    CERT_PPID_RSA2048,
    CERT_PPID_RSA3072,
    EnclaveReport,
    Quote,
    TdReport,
    parse_quote,
)
from teelab.gateway.dcap.tcbinfo import IsvLevel, TcbInfo
from teelab.gateway.verified import VerifiedEvidence
from teelab.timeutil import isoformat

_FRESH = "fetch fresh collateral (TCB info, QE identity, CRLs) from Intel PCS or your PCCS"
R = TypeVar("R")


def _h(value: bytes) -> str:
    return value.hex()


def _judge_windows(log: CheckLog, name: str, windows: list[Window], at: datetime, ok: str, hint: str) -> None:
    for w in windows:
        if at > w.end:
            log.fail(
                name,
                f"{w.what} expired at {isoformat(w.end)} (verification time {isoformat(at)})",
                hint=hint,
            )
        if at < w.start:
            log.fail(
                name,
                f"{w.what} is not valid before {isoformat(w.start)} (verification time {isoformat(at)})",
                hint=hint,
            )
    log.passed(name, ok)


def _pck_chain(log: CheckLog, quote: Quote, collateral: IntelCollateral, extra: bytes | None) -> PckChain:
    cert = quote.signature.certification
    if cert.cert_type == CERT_PCK_CHAIN:
        return pck_chain_from_pem(cert.data)
    if cert.cert_type in (CERT_PPID_CLEARTEXT, CERT_PPID_RSA2048, CERT_PPID_RSA3072):
        if isinstance(extra, str):  # a PEM text passed as str is meant the same way
            extra = extra.encode("ascii", "replace")
        own = () if extra is None else load_certificates(extra, check="pck_chain", what="extra_pck_chain")
        ppid = cert.data[:16] if cert.cert_type == CERT_PPID_CLEARTEXT and len(cert.data) >= 16 else None
        return assemble_pck_chain(own, collateral.certificate_pool, ppid)
    log.fail(
        "pck_chain",
        f"certification data type {cert.cert_type} ({cert.type_name}) is not supported; "
        "type 5 (embedded PEM chain) and types 1-3 (chain supplied separately) are",
    )


def _pin(log: CheckLog, chain: PckChain, anchors: TrustAnchors) -> bool:
    fp = chain.root_fingerprint
    simulated = anchors.simulated_roots.get(fp)
    intel = anchors.intel_roots.get(fp)
    if simulated is not None:
        log.passed(
            "root_pinned", f"the chain ends at the SIMULATED platform root {simulated!r} (SHA-256 {fp})"
        )
        return True
    if intel is None:
        log.fail(
            "root_pinned",
            f"the chain's root CA {chain.root_name!r} (SHA-256 {fp}) is not a pinned root",
            hint="evidence must chain to Intel's SGX Root CA; pin a test root only on purpose "
            "(TrustAnchors.with_intel_root)",
        )
    log.passed("root_pinned", f"the chain ends at the pinned root {intel!r} (SHA-256 {fp})")
    return False


def _select(
    log: CheckLog, quote: Quote, chain: PckChain, collateral: IntelCollateral
) -> tuple[SignedDoc[TcbInfo], SignedDoc[EnclaveIdentity]]:
    ext = chain.extension
    kind = quote.tee.upper()
    doc = collateral.tcb_info_for(quote.tee, ext.fmspc)
    if doc is None:
        have = ", ".join(f"{d.body.id} {_h(d.body.fmspc)}" for d in collateral.tcb_infos) or "none"
        log.fail(
            "tcb_info_match",
            f"the collateral has no {kind} TCB info for FMSPC {_h(ext.fmspc)} from the PCK certificate "
            f"(it has: {have})",
            hint=f"fetch the {kind} TCB info for FMSPC {_h(ext.fmspc)}",
        )
    info = doc.body
    if info.pce_id != ext.pceid:
        log.fail(
            "tcb_info_match",
            f"the TCB info is for PCEID {_h(info.pce_id)}, the PCK certificate says {_h(ext.pceid)}",
        )
    log.passed(
        "tcb_info_match",
        f"{info.id} TCB info v{info.version} for FMSPC {_h(info.fmspc)} / PCEID {_h(info.pce_id)} "
        f"(evaluation data number {info.tcb_evaluation_data_number}, from {doc.source})",
    )
    qe_doc = collateral.qe_identity_for(quote.tee)
    if qe_doc is None:
        have = ", ".join(d.body.id for d in collateral.qe_identities) or "none"
        log.fail(
            "qe_identity_match",
            f"the collateral has no {QE_IDENTITY_FOR_TEE[quote.tee]} identity for this {kind} quote "
            f"(it has: {have})",
            hint=f"fetch the {'TDX ' if quote.tee == 'tdx' else ''}QE identity from Intel PCS",
        )
    log.passed(
        "qe_identity_match",
        f"{qe_doc.body.id} identity v{qe_doc.body.version} "
        f"(evaluation data number {qe_doc.body.tcb_evaluation_data_number}, from {qe_doc.source})",
    )
    return doc, qe_doc


def _signing(
    log: CheckLog, chain: PckChain, docs: tuple[SignedDoc[Any], SignedDoc[Any]]
) -> list[SigningChain]:
    signers: list[SigningChain] = []
    for doc, what in zip(docs, ("TCB info", "QE identity"), strict=True):
        signing = verify_signing_chain(doc.issuer_chain)
        if signing.root_fingerprint != chain.root_fingerprint:
            log.fail(
                "collateral_chain",
                f"the {what} is signed under root SHA-256 {signing.root_fingerprint}, but the PCK chain ends "
                f"at {chain.root_fingerprint}",
                hint="use collateral issued under the same Intel root as the quote",
            )
        signers.append(signing)
    names = sorted({f"{s.signer_name} (serial {s.signer.serial_number:x})" for s in signers})
    log.passed(
        "collateral_chain",
        f"TCB info and QE identity signers {', '.join(names)} chain to the same pinned root",
    )
    for doc, what, check in (
        (docs[0], "TCB info", "tcb_info_signature"),
        (docs[1], "QE identity", "qe_identity_signature"),
    ):
        log.require(
            document_signature_ok(doc),
            check,
            f"the {what} signature verifies over its exact signed bytes",
            f"the {what} signature does not verify ({doc.source}): the document was altered or re-serialised",
        )
    return signers


def _crls(
    log: CheckLog, chain: PckChain, collateral: IntelCollateral, signers: list[SigningChain]
) -> list[Window]:
    root_crl = collateral.root_ca_crl
    log.require(
        crl_issued_by(root_crl, chain.root),
        "root_ca_crl",
        f"the root CA CRL is signed by {chain.root_name} ({len(root_crl.revoked)} entries)",
        f"the root CA CRL ({root_crl.source}) is not signed by the pinned root {chain.root_name}",
    )
    pck_crl = collateral.pck_crl_for(chain.ca_subject_der)
    if pck_crl is None:
        have = ", ".join(c.issuer_name for c in collateral.pck_crls) or "none"
        log.fail(
            "pck_crl",
            f"the collateral has no CRL of {chain.ca_name}, which issued the PCK certificate "
            f"(it has: {have})",
            hint=f"fetch the PCK CRL for {chain.ca_name} (pckcrl?ca=processor or ca=platform)",
        )
    log.require(
        crl_issued_by(pck_crl, chain.ca),
        "pck_crl",
        f"the PCK CRL is signed by {chain.ca_name} ({len(pck_crl.revoked)} entries)",
        f"the PCK CRL ({pck_crl.source}) is not signed by {chain.ca_name}",
    )
    revoked = []
    if chain.leaf.serial_number in pck_crl.revoked:
        revoked.append(f"the PCK certificate (serial {chain.leaf.serial_number:x}) by {chain.ca_name}")
    if chain.ca.serial_number in root_crl.revoked:
        revoked.append(f"{chain.ca_name} (serial {chain.ca.serial_number:x}) by the root CA")
    for signer in signers:
        if signer.signer.serial_number in root_crl.revoked:
            revoked.append(f"{signer.signer_name} (serial {signer.signer.serial_number:x}) by the root CA")
    if revoked:
        log.fail(
            "revocation",
            "revoked: " + "; ".join(sorted(set(revoked))),
            hint="this platform or signer is no longer trusted",
        )
    log.passed("revocation", "neither the PCK certificate, its CA nor the TCB signing certificate is revoked")
    windows: list[Window] = []
    for crl, what in ((root_crl, "the root CA CRL"), (pck_crl, f"the PCK CRL of {chain.ca_name}")):
        if crl.next_update is not None:
            windows.append(Window(what, crl.this_update, crl.next_update))
    return windows


def _qe_identity(log: CheckLog, report: EnclaveReport, identity: EnclaveIdentity) -> None:
    problems = []
    if report.mrsigner != identity.mrsigner:
        problems.append(f"MRSIGNER {_h(report.mrsigner)} is not {_h(identity.mrsigner)}")
    if report.isv_prod_id != identity.isv_prod_id:
        problems.append(f"ISVPRODID {report.isv_prod_id} is not {identity.isv_prod_id}")
    if not tcb.masked_equal(report.miscselect, identity.miscselect_mask, identity.miscselect):
        problems.append(
            f"MISCSELECT {_h(report.miscselect)} under mask {_h(identity.miscselect_mask)} is not "
            f"{_h(identity.miscselect)}"
        )
    if not tcb.masked_equal(report.attributes, identity.attributes_mask, identity.attributes):
        problems.append(
            f"ATTRIBUTES {_h(report.attributes)} under mask {_h(identity.attributes_mask)} is not "
            f"{_h(identity.attributes)}"
        )
    if problems:
        log.fail(
            "qe_identity",
            f"the quoting enclave does not match Intel's {identity.id} identity: " + "; ".join(problems),
            hint="the quote was not produced by a genuine Intel quoting enclave",
        )
    log.passed(
        "qe_identity",
        f"QE MRSIGNER, ISVPRODID {report.isv_prod_id}, MISCSELECT and ATTRIBUTES (masked) match the "
        f"{identity.id} identity",
    )


def _isv_tcb(log: CheckLog, name: str, what: str, svn: int, levels: tuple[IsvLevel, ...]) -> IsvLevel | None:
    level = tcb.match_isv_level(levels, svn)
    if level is None:
        lowest = min(lvl.isvsvn for lvl in levels)
        log.note_failure(
            name, f"{what} ISVSVN {svn} is below every TCB level (lowest needs {lowest}): TCB not supported"
        )
        return None
    ids = f", advisories {', '.join(level.advisory_ids)}" if level.advisory_ids else ""
    log.passed(
        name,
        f"{what} ISVSVN {svn} meets the level ISVSVN {level.isvsvn} ({isoformat(level.tcb_date)}): "
        f"{level.status}{ids}",
    )
    return level


def _tdx_module(log: CheckLog, body: TdReport, info: TcbInfo, status: TcbFindings) -> None:
    major, module_svn = body.tee_tcb_svn[1], body.tee_tcb_svn[0]
    if major == 0:
        module = info.tdx_module
        name = "tdxModule"
    else:
        module = info.module_identity(major)
        name = f"TDX_{major:02X}"
    if module is None:
        have = ", ".join(m.id for m in info.tdx_module_identities) or "none"
        log.fail(
            "tdx_module",
            f"TEE_TCB_SVN says TDX module major version {major}, but the TCB info has no {name} identity "
            f"(it has: {have})",
            hint="fetch a current TDX TCB info",
        )
    problems = []
    if body.mrsignerseam != module.mrsigner:
        problems.append(f"MRSIGNERSEAM {_h(body.mrsignerseam)} is not {_h(module.mrsigner)}")
    if not tcb.masked_equal(body.seam_attributes, module.attributes_mask, module.attributes):
        problems.append(
            f"SEAMATTRIBUTES {_h(body.seam_attributes)} under mask {_h(module.attributes_mask)} is not "
            f"{_h(module.attributes)}"
        )
    if problems:
        log.fail("tdx_module", f"the TDX module does not match the {name} identity: " + "; ".join(problems))
    log.passed("tdx_module", f"TDX module {name}: MRSIGNERSEAM and SEAMATTRIBUTES (masked) match")
    if major == 0:
        # Intel QVL gives module major version 0 no TCB levels of its own: the platform level covers it.
        log.passed("tdx_module_tcb", "TDX module major version 0 is judged by the platform TCB level alone")
        return
    status.module_level = _isv_tcb(log, "tdx_module_tcb", f"TDX module {name}", module_svn, module.levels)
    if status.module_level is None:
        status.not_found = True
        status.module_status = None
    else:
        status.module_status = status.module_level.status


def _platform_tcb(log: CheckLog, quote: Quote, chain: PckChain, info: TcbInfo, status: TcbFindings) -> None:
    ext = chain.extension
    tee_tcb_svn = quote.body.tee_tcb_svn if isinstance(quote.body, TdReport) else None
    sgx_level, tdx_level = tcb.match_levels(info.levels, ext.tcb_comp_svns, ext.pcesvn, tee_tcb_svn)
    have = f"PCK component SVNs {list(ext.tcb_comp_svns)}, PCESVN {ext.pcesvn}"
    level = sgx_level if tee_tcb_svn is None else tdx_level
    if level is None:
        status.not_found = True
        if sgx_level is None:
            lowest = info.levels[-1]
            reason = (
                f"{have} meet no TCB level of the TCB info for FMSPC {_h(info.fmspc)} "
                f"(its lowest level needs components {list(lowest.sgx_svns)}, PCESVN {lowest.pcesvn})"
            )
        else:
            reason = (
                f"TEE_TCB_SVN {_h(tee_tcb_svn or b'')} meets no TDX TCB level the PCK SVNs reach ({have})"
            )
        log.note_failure("platform_tcb", f"{reason}: TCB not supported, status {NOT_FOUND}")
        return
    status.platform = level
    ids = f", advisories {', '.join(level.advisory_ids)}" if level.advisory_ids else ""
    extra = f", TEE_TCB_SVN {_h(tee_tcb_svn)}" if tee_tcb_svn is not None else ""
    log.passed(
        "platform_tcb",
        f"{have}{extra} meet the TCB level of {isoformat(level.tcb_date)}: {level.status}{ids}",
    )


def _final_status(log: CheckLog, status: TcbFindings) -> tuple[str, list[str]]:
    if status.not_found or status.platform is None or status.qe is None or status.module_status is None:
        log.note_failure(
            "tcb_status",
            f"{NOT_FOUND}: the platform's TCB is not covered by the collateral (Intel: TCB not supported); "
            "update the platform firmware or fetch a newer TCB info",
        )
        return NOT_FOUND, []
    result = tcb.converge(status.platform.status, status.module_status)
    if result != "Revoked":
        result = tcb.converge(result, status.qe.status)
    advisories = tcb.merge_advisories(
        status.platform.advisory_ids,
        status.module_level.advisory_ids if status.module_level else (),
        status.qe.advisory_ids,
    )
    parts = f"platform {status.platform.status}, QE {status.qe.status}"
    if status.module_level is not None or status.module_status != "UpToDate":
        parts += f", TDX module {status.module_status}"
    ids = f"; advisories {', '.join(advisories)}" if advisories else ""
    if result == "Revoked":
        log.note_failure("tcb_status", f"Revoked ({parts}){ids}: Intel has revoked this TCB")
    else:
        log.passed("tcb_status", f"{result} ({parts}){ids}")
    return result, advisories


def _authentic_quote(log: CheckLog, data: bytes) -> Quote:
    """The parsed quote, whose signature by its own attestation key verifies."""
    quote = parse_quote(data)
    cert = quote.signature.certification
    log.passed(
        "quote_parse",
        f"{quote.tee.upper()} quote v{quote.header.version} ({quote.body_name}), certification data type "
        f"{cert.cert_type} ({cert.type_name}), {quote.trailing} trailing bytes ignored",
    )
    key = p256_key(quote.signature.attestation_key)
    if key is None:
        log.fail("quote_signature", "the attestation key in the quote is not a point on P-256")
    log.require(
        verify_raw(key, quote.signature.signature, quote.signed),
        "quote_signature",
        f"the quote (first {len(quote.signed)} bytes) is signed by its attestation key",
        "the quote's signature does not verify with its attestation key: header or report body was altered",
    )
    return quote


def _platform(
    log: CheckLog,
    quote: Quote,
    collateral: IntelCollateral,
    extra: bytes | None,
    anchors: TrustAnchors,
    at: datetime,
) -> tuple[PckChain, bool]:
    """The platform's PCK chain to a pinned root (and whether that root is simulated), valid at ``at``."""
    chain = _pck_chain(log, quote, collateral, extra)
    embedded = quote.signature.certification.cert_type == CERT_PCK_CHAIN
    origin = (
        "embedded in the quote" if embedded else "supplied with the quote (extra_pck_chain or collateral)"
    )
    ignored = "; extra_pck_chain was not needed and is ignored" if embedded and extra is not None else ""
    log.passed(
        "pck_chain",
        f"PCK certificate <- {chain.ca_name} <- {chain.root_name} ({origin}): 3 certificates, every "
        f"signature verifies{ignored}",
    )
    simulated = _pin(log, chain, anchors)
    _judge_windows(
        log,
        "pck_cert_validity",
        list(chain.windows),
        at,
        "the PCK certificate, its CA and the root are valid at the verification time",
        "the platform's PCK certificate does not fit this verification time; check the time and the "
        "collateral",
    )
    ext = chain.extension
    log.passed(
        "pck_extension",
        f"FMSPC {_h(ext.fmspc)}, PCEID {_h(ext.pceid)}, PCESVN {ext.pcesvn}, SGX type {ext.sgx_type_name}",
    )
    return chain, simulated


def _qe_binds_the_key(log: CheckLog, quote: Quote, chain: PckChain) -> None:
    """The platform's QE (signed by the PCK key) vouches for the quote's attestation key."""
    qe = quote.signature.qe_report
    log.require(
        qe_report_signed(chain, qe.raw, quote.signature.qe_report_signature),
        "qe_report_signature",
        "the QE report is signed by the PCK certificate's key",
        "the QE report's signature does not verify with the PCK certificate's key: the QE report was altered "
        "or the PCK certificate belongs to another platform",
    )
    expected = sha256(quote.signature.attestation_key + quote.signature.qe_auth_data).digest() + bytes(32)
    log.require(
        qe.report_data == expected,
        "qe_report_data",
        f"the QE report binds the attestation key (SHA-256 of key and {len(quote.signature.qe_auth_data)} "
        "bytes of QE authentication data)",
        "the QE report does not bind this attestation key: report_data is not SHA-256(attestation key || QE "
        "authentication data) followed by 32 zero bytes",
    )


def _current_collateral(
    log: CheckLog, quote: Quote, chain: PckChain, collateral: IntelCollateral, at: datetime
) -> tuple[TcbInfo, EnclaveIdentity, list[Window]]:
    """The TCB info and QE identity for this platform, signed, unrevoked and valid at ``at``."""
    tcb_doc, qe_doc = _select(log, quote, chain, collateral)
    signers = _signing(log, chain, (tcb_doc, qe_doc))
    crl_windows = _crls(log, chain, collateral, signers)
    info, identity = tcb_doc.body, qe_doc.body
    windows = [
        Window(f"the TCB info ({tcb_doc.source})", info.issue_date, info.next_update),
        Window(f"the QE identity ({qe_doc.source})", identity.issue_date, identity.next_update),
        *crl_windows,
        *dict.fromkeys(w for s in signers for w in s.windows),
    ]
    _judge_windows(
        log,
        "collateral_validity",
        windows,
        at,
        "the TCB info, QE identity, CRLs and TCB signing certificate are valid at the verification time",
        _FRESH,
    )
    return info, identity, windows


def _tcb(
    log: CheckLog, quote: Quote, chain: PckChain, info: TcbInfo, identity: EnclaveIdentity
) -> tuple[TcbFindings, str, list[str]]:
    """The QE's, the TDX module's and the platform's TCB levels, folded into one status and advisories."""
    status = TcbFindings()
    qe = quote.signature.qe_report
    _qe_identity(log, qe, identity)
    status.qe = _isv_tcb(log, "qe_tcb", "QE", qe.isv_svn, identity.levels)
    if status.qe is None:
        status.not_found = True
    if isinstance(quote.body, TdReport):
        if info.id != "TDX":  # pragma: no cover - tcb_info_for selects by TEE
            log.fail("tcb_info_match", "a TDX quote needs a TDX TCB info")
        _tdx_module(log, quote.body, info, status)
    _platform_tcb(log, quote, chain, info, status)
    tcb_status, advisories = _final_status(log, status)
    return status, tcb_status, advisories


def _verify(
    data: bytes,
    collateral: IntelCollateral,
    at: datetime,
    anchors: TrustAnchors,
    extra: bytes | None,
    log: CheckLog,
) -> VerifiedEvidence:
    if not isinstance(at, datetime) or at.tzinfo is None:
        log.fail("verification_time", "the verification time must be a timezone-aware datetime")
    at = at.astimezone(UTC)
    if not isinstance(collateral, IntelCollateral):
        log.fail("collateral", f"expected IntelCollateral, got {type(collateral).__name__}")
    quote = _authentic_quote(log, data)
    chain, simulated = _platform(log, quote, collateral, extra, anchors, at)
    _qe_binds_the_key(log, quote, chain)
    info, identity, collateral_windows = _current_collateral(log, quote, chain, collateral, at)
    status, tcb_status, advisories = _tcb(log, quote, chain, info, identity)

    windows = [*chain.windows, *collateral_windows]
    # The age policy judges the documents Intel reissues about daily; the root CA's CRL is a yearly document,
    # judged by its own validity window (collateral_validity) only.
    issued = [info.issue_date, identity.issue_date]
    pck_crl = collateral.pck_crl_for(chain.ca_subject_der)
    if pck_crl is not None:
        issued.append(pck_crl.this_update)
    return VerifiedEvidence(
        tee=quote.tee,
        simulated=simulated,
        tcb_status=tcb_status,
        advisory_ids=advisories,
        claims=quote_claims(quote),
        checks=list(log.checks),
        valid_from=max(w.start for w in windows),
        valid_until=min(w.end for w in windows),
        collateral_issued_at=min(issued),
        details=quote_details(quote, chain, info, identity, status),
    )


def _guard(log: CheckLog, run: Callable[[], R]) -> R:
    """Only VerificationError leaves: a failure raised below ``log`` is recorded, anything else is a bug."""
    try:
        return run()
    except VerificationError as exc:
        last = log.checks[-1] if log.checks else None
        if last is None or last.passed or (last.name, last.detail) != (exc.check, exc.detail):
            log.checks.append(Check(exc.check, False, exc.detail))
        raise
    except Exception as exc:
        error = internal_error(exc, "verifying a quote")
        log.fail(error.check, error.detail, hint=error.hint)


def verify_intel_quote(
    quote: bytes,
    collateral: IntelCollateral,
    *,
    at: datetime,
    anchors: TrustAnchors,
    extra_pck_chain: bytes | None = None,
    log: CheckLog | None = None,
) -> VerifiedEvidence:
    """Verify an SGX or TDX DCAP quote; raises VerificationError (and only that) when it is not authentic.

    ``extra_pck_chain``: PEM PCK chain (or just the PCK certificate) for quotes that do not embed one
    (certification data types 1-3). ``log``: pass a CheckLog to keep the checks made when verification fails.
    """
    record = log if log is not None else CheckLog()
    return _guard(record, lambda: _verify(quote, collateral, at, anchors, extra_pck_chain, record))
