"""Appraisal: judge authentic evidence (:class:`VerifiedEvidence`) against an :class:`AppraisalPolicy`.

Every policy rule becomes a :class:`Check` named ``policy.<rule>`` with a reason a person can act on, and
every rule is evaluated even after one fails, so the user sees all that is wrong at once. The verdict:
``contraindicated`` when any check failed, ``warning`` when accepted but not pristine (simulated, debug, a
TCB status other than UpToDate, advisories present), ``affirming`` otherwise.

The AR4SI trustworthiness vector is computed here because only the appraisal knows what each check means.
Every failed check lowers some claim into the contraindicated tier and every "not pristine" acceptance into
the warning tier, so a relying party that derives the status from the vector (the EAR convention) reaches
the same verdict as ours.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Literal

from teelab.gateway.appraisal_snp import judge_snp
from teelab.gateway.checks import Check
from teelab.gateway.controller import judge_controller
from teelab.gateway.judgement import (
    AFFIRMING,
    CONFIGURATION,
    CONTRAINDICATED,
    CRYPTO_VALIDATION_FAILED,
    EXECUTABLES,
    HARDWARE,
    INSTANCE_IDENTITY,
    NO_CLAIM,
    RUNTIME_OPAQUE,
    TRUST_CLAIMS,
    UNEXPECTED_EVIDENCE,
    UNRECOGNIZED,
    VERIFIER_MALFUNCTION,
    WARNING,
    Judgement,
    judge_pin,
    tier,
    worse,
)
from teelab.gateway.policy import TDX_PINS, AppraisalPolicy
from teelab.gateway.result import NOT_CONFIDENTIAL, AttestationResult, Verdict
from teelab.gateway.verified import Tee, VerifiedEvidence
from teelab.timeutil import isoformat

# The AR4SI vocabulary lives in teelab.gateway.judgement; it is part of this module's interface too.
__all__ = [
    "AFFIRMING",
    "CONFIGURATION",
    "CONTRAINDICATED",
    "CRYPTO_VALIDATION_FAILED",
    "EXECUTABLES",
    "HARDWARE",
    "INSTANCE_IDENTITY",
    "NO_CLAIM",
    "RUNTIME_OPAQUE",
    "TRUST_CLAIMS",
    "UNEXPECTED_EVIDENCE",
    "UNRECOGNIZED",
    "VERIFIER_MALFUNCTION",
    "WARNING",
    "FailureCause",
    "appraise",
    "reject_unverified",
    "tier",
]

FailureCause = Literal["unrecognized", "verification", "malfunction"]
_CAUSE_VALUE: dict[FailureCause, int] = {
    "unrecognized": UNEXPECTED_EVIDENCE,
    "verification": CRYPTO_VALIDATION_FAILED,
    "malfunction": VERIFIER_MALFUNCTION,
}

_TCB_ADVICE = {
    "SWHardeningNeeded": "the enclave must carry the software mitigations for the advisories listed",
    "ConfigurationNeeded": "the platform's BIOS configuration exposes the advisories listed (e.g. SMT on)",
    "ConfigurationAndSWHardeningNeeded": (
        "the platform's BIOS configuration and the enclave's software mitigations both matter for the "
        "advisories listed"
    ),
    "OutOfDate": "the platform's microcode/firmware is behind Intel's latest TCB recovery; update it",
    "OutOfDateConfigurationNeeded": (
        "the platform's microcode/firmware is behind Intel's latest TCB recovery and its configuration "
        "needs changes; update it"
    ),
    "Revoked": "the platform's attestation keys are revoked; it cannot be trusted",
    "TcbLevelNotFound": (
        "no TCB level in the TCB info matches this platform (it is older than every listed level, or the "
        "collateral is for another platform)"
    ),
}

_SNP_POLICY_DEBUG = 1 << 19


def appraise(
    evidence: VerifiedEvidence,
    policy: AppraisalPolicy,
    *,
    at: datetime,
    expected_report_data: bytes | None = None,
    expected_controller: bytes | None = None,
) -> AttestationResult:
    """Judge authentic evidence against ``policy`` at time ``at``.

    ``expected_report_data`` is what the caller requires in the evidence's report_data (e.g. the session's
    nonce binding); it is compared in constant time, zero-padded on the right like the policy's value.
    ``expected_controller`` is the caller's controller hash (SHA-256 of its gateway identity key); when given,
    the check ``controller`` requires the evidence to name that controller (see :mod:`.controller`).
    """
    at = at if at.tzinfo else at.replace(tzinfo=UTC)  # a naive time is UTC, as everywhere in teelab
    judge = Judgement(evidence, policy, at)
    # The verifier established authenticity; whatever it noted as a finding is in evidence.checks.
    judge.vector[INSTANCE_IDENTITY] = AFFIRMING
    _judge_simulation(judge)
    _judge_tee(judge)
    _judge_validity(judge)
    _judge_collateral_age(judge)
    if evidence.tee in ("sgx", "tdx"):
        _judge_tcb_evaluation(judge)
    _judge_tcb_status(judge)
    _judge_advisories(judge)
    _judge_debug(judge)
    if evidence.tee == "sgx":
        _judge_sgx(judge)
    elif evidence.tee == "tdx":
        _judge_tdx(judge)
    elif evidence.tee == "sev-snp":
        judge_snp(judge)
    if policy.report_data is not None:
        _judge_report_data(judge, "policy.report_data", policy.report_data, "the policy's report_data")
    if expected_report_data is not None:
        _judge_report_data(
            judge, "policy.expected_report_data", expected_report_data, "the expected report_data"
        )
    if expected_controller is not None:
        check = judge_controller(evidence, policy, expected_controller)
        judge.record(check.name, check.passed, check.detail, INSTANCE_IDENTITY)
    checks = (*evidence.checks, *judge.checks)
    return AttestationResult(
        verdict=_verdict(checks, evidence),
        tee=evidence.tee,
        simulated=evidence.simulated,
        tcb_status=evidence.tcb_status,
        advisory_ids=tuple(evidence.advisory_ids),
        claims=dict(evidence.claims),
        checks=checks,
        verified_at=at,
        policy_id=policy.id,
        trust_vector=judge.vector,
        expected_report_data=expected_report_data,
        valid_until=evidence.valid_until,
        collateral_issued_at=evidence.collateral_issued_at,
        policy_digest=policy.digest,
    )


def reject_unverified(
    *,
    checks: Iterable[Check],
    tee: Tee | None,
    at: datetime,
    policy: AppraisalPolicy,
    cause: FailureCause,
    expected_report_data: bytes | None = None,
) -> AttestationResult:
    """The result for evidence that never became :class:`VerifiedEvidence`: rejected, with the checks made.

    Nothing the evidence claims is reported: unverified claims are exactly what an attacker controls.
    """
    value = _CAUSE_VALUE[cause]
    return AttestationResult(
        verdict="contraindicated",
        tee=tee,
        simulated=False,
        tcb_status=None,
        advisory_ids=(),
        claims={},
        checks=tuple(checks),
        verified_at=at,
        policy_id=policy.id,
        trust_vector=dict.fromkeys(TRUST_CLAIMS, value),
        expected_report_data=expected_report_data,
        policy_digest=policy.digest,
    )


def _verdict(checks: Iterable[Check], evidence: VerifiedEvidence) -> Verdict:
    if any(not check.passed for check in checks):
        return "contraindicated"
    pristine = (
        not evidence.simulated
        and evidence.claims.get("debug") is not True
        and evidence.tcb_status in (None, "UpToDate")
        and not evidence.advisory_ids
    )
    return "affirming" if pristine else "warning"


def _judge_simulation(judge: Judgement) -> None:
    if not judge.evidence.simulated:
        judge.record("policy.simulation", True, "evidence chains to a hardware vendor's root", HARDWARE)
        judge.vector[RUNTIME_OPAQUE] = AFFIRMING
        return
    if judge.policy.allow_simulation:
        detail = f"{NOT_CONFIDENTIAL}: accepted because the policy allows simulation"
        judge.record("policy.simulation", True, detail, HARDWARE, value=WARNING)
        judge.vector[RUNTIME_OPAQUE] = worse(judge.vector.get(RUNTIME_OPAQUE, NO_CLAIM), WARNING)
        return
    detail = (
        f"{NOT_CONFIDENTIAL}: the evidence chains to a simulated platform's root, which protects nothing; "
        "allow it only for development (--allow-simulation, or allow_simulation = true in the policy)"
    )
    judge.record("policy.simulation", False, detail, HARDWARE)
    judge.vector[RUNTIME_OPAQUE] = CONTRAINDICATED


def _judge_tee(judge: Judgement) -> None:
    pinned = judge.policy.pinned_tees
    if not pinned:
        return
    tee = judge.evidence.tee
    if tee in pinned:
        judge.record(
            "policy.tee", True, f"{tee} evidence; the policy has a [{_section(tee)}] section", EXECUTABLES
        )
        return
    sections = ", ".join(f"[{_section(name)}]" for name in pinned)
    detail = (
        f"this is {tee} evidence but the policy only has reference values for {sections}; add a "
        f"[{_section(tee)}] section (even an empty one) to accept {tee} evidence"
    )
    judge.record("policy.tee", False, detail, EXECUTABLES)


def _section(tee: Tee) -> str:
    return "snp" if tee == "sev-snp" else tee


def _judge_validity(judge: Judgement) -> None:
    start, end, at = judge.evidence.valid_from, judge.evidence.valid_until, judge.at
    if start is None and end is None:
        return
    window = f"{isoformat(start) if start else '…'} to {isoformat(end) if end else '…'}"
    if start is not None and at < start:
        detail = f"the certificates and collateral are valid {window}, not yet at {isoformat(at)}"
        judge.record("policy.validity", False, detail, HARDWARE)
    elif end is not None and at > end:
        detail = (
            f"the certificates and collateral are valid {window}, expired at {isoformat(at)}; fetch fresh "
            "collateral, or verify at a time inside the window (--at)"
        )
        judge.record("policy.validity", False, detail, HARDWARE)
    else:
        judge.record("policy.validity", True, f"valid {window}; judged at {isoformat(at)}", HARDWARE)


def _judge_collateral_age(judge: Judgement) -> None:
    limit = judge.policy.max_collateral_age
    if limit is None:
        return
    issued = judge.evidence.collateral_issued_at
    if issued is None:
        if judge.evidence.tee == "sev-snp":
            detail = "SEV-SNP evidence has no dated collateral (the VCEK is a long-lived certificate)"
            judge.record("policy.collateral_age", True, detail, HARDWARE)
        else:
            detail = "the verifier reported no collateral issue date, so its age cannot be judged"
            judge.record("policy.collateral_age", False, detail, HARDWARE)
        return
    age = judge.at - issued
    if age < timedelta(0):
        when = isoformat(judge.at)
        detail = f"the collateral was issued {isoformat(issued)}, after the verification time {when}"
        judge.record("policy.collateral_age", False, detail, HARDWARE)
    elif age > limit:
        detail = (
            f"the oldest collateral document was issued {isoformat(issued)}, {_duration(age)} before "
            f"{isoformat(judge.at)}; the policy allows {_duration(limit)}; "
            "fetch fresh collateral (Intel PCS/PCCS)"
        )
        judge.record("policy.collateral_age", False, detail, HARDWARE)
    else:
        detail = (
            f"collateral issued {isoformat(issued)} is {_duration(age)} old "
            f"(policy allows {_duration(limit)})"
        )
        judge.record("policy.collateral_age", True, detail, HARDWARE)


def _judge_tcb_evaluation(judge: Judgement) -> None:
    minimum = judge.policy.min_tcb_evaluation_data_number
    numbers = {
        "TCB info": judge.evidence.details.get("tcb_info_evaluation_data_number"),
        "QE identity": judge.evidence.details.get("qe_identity_evaluation_data_number"),
    }
    shown = ", ".join(f"{name} {number}" for name, number in numbers.items())
    low = [name for name, number in numbers.items() if not isinstance(number, int) or number < minimum]
    if not low:
        detail = f"TCB evaluation data numbers ({shown}) meet the policy's minimum {minimum}"
        judge.record("policy.tcb_evaluation_data_number", True, detail, HARDWARE)
        return
    detail = (
        f"the collateral predates the TCB recovery the policy requires ({shown}; minimum {minimum}): "
        "collateral issued before a TCB recovery can make an unpatched platform look up to date; fetch "
        "current collateral (Intel PCS/PCCS), or lower min_tcb_evaluation_data_number"
    )
    judge.record("policy.tcb_evaluation_data_number", False, detail, HARDWARE)


def _duration(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m"), (seconds, "s")) if n]
    return " ".join(parts[:2]) or "0s"


def _judge_tcb_status(judge: Judgement) -> None:
    status, accepted = judge.evidence.tcb_status, judge.policy.accepted_tcb_statuses
    if status is None:
        if judge.evidence.tee == "sev-snp":
            detail = (
                "SEV-SNP reports carry TCB versions, not a TCB status; the reported TCB is judged by "
                "policy.min_tcb"
            )
            judge.record("policy.tcb_status", True, detail, HARDWARE)
        else:
            judge.record("policy.tcb_status", False, "the verifier reported no TCB status", HARDWARE)
        return
    advice = _TCB_ADVICE.get(status, "")
    if status in accepted:
        pristine = status == "UpToDate"
        detail = f"TCB status {status}" + ("" if pristine else f" accepted by the policy ({advice})")
        judge.record("policy.tcb_status", True, detail, HARDWARE, value=AFFIRMING if pristine else WARNING)
        if "Configuration" in status:
            judge.vector[CONFIGURATION] = worse(judge.vector.get(CONFIGURATION, NO_CLAIM), WARNING)
        return
    detail = f"TCB status {status} is not accepted (policy accepts: {', '.join(accepted)})"
    if advice:
        detail += f"; {advice}"
    if status not in ("Revoked", "TcbLevelNotFound"):
        detail += f'; to accept the risk, add "{status}" to accepted_tcb_statuses'
    value = UNRECOGNIZED if status == "TcbLevelNotFound" else CONTRAINDICATED
    judge.record("policy.tcb_status", False, detail, HARDWARE, value=value)


def _judge_advisories(judge: Judgement) -> None:
    advisories = [advisory.upper() for advisory in judge.evidence.advisory_ids]
    if not advisories:
        judge.record("policy.advisories", True, "no security advisories apply", HARDWARE)
        return
    listed = ", ".join(advisories)
    if judge.policy.accepts_any_advisory:
        detail = f'advisories {listed} apply; accepted because accepted_advisory_ids = ["*"]'
        judge.record("policy.advisories", True, detail, HARDWARE, value=WARNING)
        return
    missing = [advisory for advisory in advisories if advisory not in judge.policy.accepted_advisory_ids]
    if not missing:
        judge.record(
            "policy.advisories", True, f"advisories {listed} apply and are accepted", HARDWARE, value=WARNING
        )
        return
    detail = (
        f"advisories {listed} apply to this platform and the policy does not accept {', '.join(missing)}; "
        "read them (Intel security center) and, if the risk is acceptable, list them in accepted_advisory_ids"
    )
    judge.record("policy.advisories", False, detail, HARDWARE)


def _judge_debug(judge: Judgement) -> None:
    debug = judge.claim("debug")
    policy_bits = judge.claim("policy")
    if debug is None and judge.evidence.tee == "sev-snp" and isinstance(policy_bits, int):
        debug = bool(policy_bits & _SNP_POLICY_DEBUG)
    if not isinstance(debug, bool):
        detail = "the verifier reported no debug flag, so it is unknown whether the host can read TEE memory"
        judge.record("policy.debug", False, detail, CONFIGURATION)
        judge.vector[RUNTIME_OPAQUE] = CONTRAINDICATED
        return
    if not debug:
        judge.record("policy.debug", True, "not a debug TEE", CONFIGURATION)
        return
    if judge.policy.allow_debug:
        detail = "debug TEE accepted because the policy allows debug; the host can read its memory"
        judge.record("policy.debug", True, detail, CONFIGURATION, value=WARNING)
        judge.vector[RUNTIME_OPAQUE] = worse(judge.vector.get(RUNTIME_OPAQUE, NO_CLAIM), WARNING)
        return
    detail = (
        "this is a debug TEE: the host can read and change its memory, so nothing in it is confidential; "
        "launch it without debug, or allow it for development (--allow-debug, or allow_debug = true)"
    )
    judge.record("policy.debug", False, detail, CONFIGURATION)
    judge.vector[RUNTIME_OPAQUE] = CONTRAINDICATED


def _judge_sgx(judge: Judgement) -> None:
    ref = judge.policy.sgx
    if ref is None:
        return
    judge_pin(judge, "mrenclave", ref.mrenclave, EXECUTABLES)
    judge_pin(judge, "mrsigner", ref.mrsigner, EXECUTABLES)
    if ref.isv_prod_id is not None:
        value = judge.claim("isv_prod_id")
        if value == ref.isv_prod_id and isinstance(value, int) and not isinstance(value, bool):
            judge.record(
                "policy.isv_prod_id", True, f"ISVPRODID {value} is the policy's product", EXECUTABLES
            )
        else:
            detail = (
                f"ISVPRODID {value} is not the policy's product {ref.isv_prod_id}; this is another "
                "product of the same signer — update sgx.isv_prod_id if you meant to trust it"
            )
            judge.record("policy.isv_prod_id", False, detail, EXECUTABLES)
    if ref.min_isv_svn is not None:
        value = judge.claim("isv_svn")
        if isinstance(value, int) and not isinstance(value, bool) and value >= ref.min_isv_svn:
            detail = f"ISVSVN {value} meets the policy's minimum {ref.min_isv_svn}"
            judge.record("policy.min_isv_svn", True, detail, EXECUTABLES)
        else:
            detail = (
                f"ISVSVN {value} is below the policy's minimum {ref.min_isv_svn}: an older, possibly "
                "vulnerable build of the enclave; deploy the current build or lower sgx.min_isv_svn"
            )
            judge.record("policy.min_isv_svn", False, detail, EXECUTABLES)


def _judge_tdx(judge: Judgement) -> None:
    ref = judge.policy.tdx
    if ref is None:
        return
    for name in TDX_PINS:
        judge_pin(judge, name, getattr(ref, name), CONFIGURATION if name == "mrconfigid" else EXECUTABLES)


def _judge_report_data(judge: Judgement, name: str, expected: bytes, what: str) -> None:
    claim = judge.claim("report_data")
    try:
        actual = bytes.fromhex(claim) if isinstance(claim, str) else None
    except ValueError:
        actual = None
    if actual is None:
        judge.record(name, False, "the evidence has no report_data to compare", INSTANCE_IDENTITY)
        return
    if len(expected) > len(actual):
        detail = f"{what} is {len(expected)} bytes but the evidence's report_data is {len(actual)} bytes"
        judge.record(name, False, detail, INSTANCE_IDENTITY)
        return
    padded = expected + bytes(len(actual) - len(expected))
    # Constant time: report_data binds a session key and nonce; don't leak how much of a forgery matched.
    if hmac.compare_digest(padded, actual):
        judge.record(name, True, f"report_data matches {what}", INSTANCE_IDENTITY)
    else:
        detail = (
            f"report_data does not match {what}: the evidence was made for another nonce or key (a replay, "
            "or evidence from a different session)"
        )
        judge.record(name, False, detail, INSTANCE_IDENTITY)
