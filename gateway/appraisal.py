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
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from teelab.gateway.checks import Check
from teelab.gateway.controller import judge_controller
from teelab.gateway.policy import DEFAULT_SNP_MIN_TCB, TDX_PINS, AppraisalPolicy, SnpReference
from teelab.gateway.result import NOT_CONFIDENTIAL, AttestationResult, Verdict
from teelab.gateway.verified import Tee, VerifiedEvidence
from teelab.timeutil import isoformat

# AR4SI trustworthiness claims this verifier makes (draft-ietf-rats-ar4si; names as in EAR's JSON).
INSTANCE_IDENTITY = "instance-identity"
CONFIGURATION = "configuration"
EXECUTABLES = "executables"
HARDWARE = "hardware"
RUNTIME_OPAQUE = "runtime-opaque"
TRUST_CLAIMS = (INSTANCE_IDENTITY, CONFIGURATION, EXECUTABLES, HARDWARE, RUNTIME_OPAQUE)

# AR4SI values. Tiers: -1..1 none, 2..31 affirming, 32..95 warning, 96..127 contraindicated.
VERIFIER_MALFUNCTION = -1
NO_CLAIM = 0
UNEXPECTED_EVIDENCE = 1
AFFIRMING = 2
WARNING = 32
CONTRAINDICATED = 96
UNRECOGNIZED = 97
CRYPTO_VALIDATION_FAILED = 99

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

_PIN_HINTS = {
    "mrenclave": "pin it with `teelab enclave measure` or update sgx.mrenclave in the policy file",
    "mrsigner": "the enclave was signed by another key; update sgx.mrsigner if you trust it",
    "mrtd": "the TD's initial image (firmware) differs; update tdx.mrtd in the policy file if you trust it",
    "rtmr0": "the TD's firmware configuration differs; update tdx.rtmr0 in the policy file if you trust it",
    "rtmr1": "the TD's boot loader / kernel differs; update tdx.rtmr1 in the policy file if you trust it",
    "rtmr2": "the TD's kernel command line / initrd differs; update tdx.rtmr2 if you trust it",
    "rtmr3": "the TD's runtime measurements differ; update tdx.rtmr3 in the policy file if you trust it",
    "mrconfigid": "the TD was launched with another configuration id; update tdx.mrconfigid if you trust it",
    "measurement": "the guest's launch image differs; update snp.measurement if you trust it",
    "host_data": "the guest was launched with other host data; update snp.host_data if you trust it",
}

_SNP_POLICY_SMT = 1 << 16
_SNP_POLICY_MIGRATE_MA = 1 << 18
_SNP_POLICY_DEBUG = 1 << 19
_SNP_POLICY_SINGLE_SOCKET = 1 << 20


def tier(value: int) -> int:
    """0 none, 1 affirming, 2 warning, 3 contraindicated."""
    if value <= 1:
        return 0
    if value < WARNING:
        return 1
    return 2 if value < CONTRAINDICATED else 3


def _worse(a: int, b: int) -> int:
    return max(a, b, key=lambda value: (tier(value), value))


@dataclass
class _Judgement:
    evidence: VerifiedEvidence
    policy: AppraisalPolicy
    at: datetime
    checks: list[Check] = field(default_factory=list)
    vector: dict[str, int] = field(default_factory=dict)

    def record(self, name: str, passed: bool, detail: str, claim: str, *, value: int | None = None) -> None:
        """Record a policy check and what it says about one AR4SI claim (default: affirming or
        contraindicated by outcome)."""
        self.checks.append(Check(name, passed, detail))
        rated = value if value is not None else (AFFIRMING if passed else CONTRAINDICATED)
        self.vector[claim] = _worse(self.vector.get(claim, NO_CLAIM), rated)

    def claim(self, name: str) -> object:
        return self.evidence.claims.get(name)


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
    judge = _Judgement(evidence, policy, at)
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
        _judge_snp(judge)
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


def _judge_simulation(judge: _Judgement) -> None:
    if not judge.evidence.simulated:
        judge.record("policy.simulation", True, "evidence chains to a hardware vendor's root", HARDWARE)
        judge.vector[RUNTIME_OPAQUE] = AFFIRMING
        return
    if judge.policy.allow_simulation:
        detail = f"{NOT_CONFIDENTIAL}: accepted because the policy allows simulation"
        judge.record("policy.simulation", True, detail, HARDWARE, value=WARNING)
        judge.vector[RUNTIME_OPAQUE] = _worse(judge.vector.get(RUNTIME_OPAQUE, NO_CLAIM), WARNING)
        return
    detail = (
        f"{NOT_CONFIDENTIAL}: the evidence chains to a simulated platform's root, which protects nothing; "
        "allow it only for development (--allow-simulation, or allow_simulation = true in the policy)"
    )
    judge.record("policy.simulation", False, detail, HARDWARE)
    judge.vector[RUNTIME_OPAQUE] = CONTRAINDICATED


def _judge_tee(judge: _Judgement) -> None:
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


def _judge_validity(judge: _Judgement) -> None:
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


def _judge_collateral_age(judge: _Judgement) -> None:
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


def _judge_tcb_evaluation(judge: _Judgement) -> None:
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


def _judge_tcb_status(judge: _Judgement) -> None:
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
            judge.vector[CONFIGURATION] = _worse(judge.vector.get(CONFIGURATION, NO_CLAIM), WARNING)
        return
    detail = f"TCB status {status} is not accepted (policy accepts: {', '.join(accepted)})"
    if advice:
        detail += f"; {advice}"
    if status not in ("Revoked", "TcbLevelNotFound"):
        detail += f'; to accept the risk, add "{status}" to accepted_tcb_statuses'
    value = UNRECOGNIZED if status == "TcbLevelNotFound" else CONTRAINDICATED
    judge.record("policy.tcb_status", False, detail, HARDWARE, value=value)


def _judge_advisories(judge: _Judgement) -> None:
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


def _judge_debug(judge: _Judgement) -> None:
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
        judge.vector[RUNTIME_OPAQUE] = _worse(judge.vector.get(RUNTIME_OPAQUE, NO_CLAIM), WARNING)
        return
    detail = (
        "this is a debug TEE: the host can read and change its memory, so nothing in it is confidential; "
        "launch it without debug, or allow it for development (--allow-debug, or allow_debug = true)"
    )
    judge.record("policy.debug", False, detail, CONFIGURATION)
    judge.vector[RUNTIME_OPAQUE] = CONTRAINDICATED


def _judge_pin(judge: _Judgement, name: str, allowed: tuple[str, ...], claim_kind: str) -> None:
    if not allowed:
        return
    label = name.upper()
    value = judge.claim(name)
    if not isinstance(value, str):
        judge.record(
            f"policy.{name}", False, f"the evidence has no {label} to compare with the policy", claim_kind
        )
        return
    value = value.lower()
    if value in allowed:
        judge.record(f"policy.{name}", True, f"{label} {value} is allowed by the policy", claim_kind)
        return
    count = f"{len(allowed)} value{'s' if len(allowed) != 1 else ''}"
    detail = f"{label} {value[:8]}… is not in the policy's allowed list ({count}); {_PIN_HINTS[name]}"
    judge.record(f"policy.{name}", False, detail, claim_kind)


def _judge_sgx(judge: _Judgement) -> None:
    ref = judge.policy.sgx
    if ref is None:
        return
    _judge_pin(judge, "mrenclave", ref.mrenclave, EXECUTABLES)
    _judge_pin(judge, "mrsigner", ref.mrsigner, EXECUTABLES)
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


def _judge_tdx(judge: _Judgement) -> None:
    ref = judge.policy.tdx
    if ref is None:
        return
    for name in TDX_PINS:
        _judge_pin(judge, name, getattr(ref, name), CONFIGURATION if name == "mrconfigid" else EXECUTABLES)


def _snp(judge: _Judgement) -> SnpReference:
    # Without an [snp] section the defaults apply: no pins, and the permissive guest-policy switches.
    return judge.policy.snp or SnpReference()


def _judge_snp(judge: _Judgement) -> None:
    ref = _snp(judge)
    _judge_pin(judge, "measurement", ref.measurement, EXECUTABLES)
    _judge_pin(judge, "host_data", ref.host_data, CONFIGURATION)
    _judge_snp_min_tcb(judge, ref)
    if ref.require_crl:
        checked = judge.evidence.details.get("amd_crl_checked") is True
        detail = (
            "the ASK/ASVK was checked against a current CRL of AMD's ARK"
            if checked
            else "revocation was not checked (no CRL of AMD's ARK came with the certificates) but the policy "
            "requires snp.require_crl = true; supply AMD's CRL (https://kdsintf.amd.com/vcek/v1/<product>/crl)"
        )
        judge.record("policy.amd_crl", checked, detail, HARDWARE)
    _judge_vmpl(judge, ref.max_vmpl)
    constrained = not ref.allow_smt or not ref.allow_migration_agent or ref.require_single_socket
    if not constrained:
        return
    bits = judge.claim("policy")
    if not isinstance(bits, int) or isinstance(bits, bool):
        detail = (
            "the evidence has no SEV-SNP guest policy to compare with snp.allow_smt / allow_migration_agent"
        )
        judge.record("policy.guest_policy", False, detail, CONFIGURATION)
        return
    if not ref.allow_smt:
        ok = not bits & _SNP_POLICY_SMT
        detail = (
            "the guest policy disallows SMT (bit 16 clear)"
            if ok
            else "the guest policy allows SMT (bit 16 set) but the policy requires allow_smt = false; launch "
            "the guest with SMT disallowed"
        )
        judge.record("policy.smt", ok, detail, CONFIGURATION)
    if not ref.allow_migration_agent:
        ok = not bits & _SNP_POLICY_MIGRATE_MA
        detail = (
            "the guest policy does not allow a migration agent (bit 18 clear)"
            if ok
            else "the guest policy allows a migration agent (bit 18 set) but the policy requires "
            "allow_migration_agent = false; launch the guest without MIGRATE_MA"
        )
        judge.record("policy.migration_agent", ok, detail, CONFIGURATION)
    if ref.require_single_socket:
        ok = bool(bits & _SNP_POLICY_SINGLE_SOCKET)
        detail = (
            "the guest policy requires a single socket (bit 20 set)"
            if ok
            else "the guest policy does not restrict the guest to one socket (bit 20 clear) but the policy "
            "requires require_single_socket = true; launch the guest with SINGLE_SOCKET"
        )
        judge.record("policy.single_socket", ok, detail, CONFIGURATION)


def _judge_snp_min_tcb(judge: _Judgement, ref: SnpReference) -> None:
    if ref.min_tcb is not None:
        _judge_min_tcb(judge, ref.min_tcb.minimums())
        return
    product = judge.evidence.details.get("product")
    default = DEFAULT_SNP_MIN_TCB.get(product) if isinstance(product, str) else None
    if default is None:
        detail = (
            f"teelab has no default minimum TCB for {product or 'this product'} (TCB numbers differ per "
            "product); set snp.min_tcb from AMD's security bulletins for your CPUs"
        )
        judge.record("policy.min_tcb", False, detail, HARDWARE)
        return
    _judge_min_tcb(judge, default.minimums(), source=f"teelab's default minimum for {product}")


def _judge_vmpl(judge: _Judgement, maximum: int) -> None:
    vmpl = judge.claim("vmpl")
    if not isinstance(vmpl, int) or isinstance(vmpl, bool):
        judge.record("policy.vmpl", False, "the evidence has no VMPL to compare", CONFIGURATION)
    elif vmpl <= maximum:
        judge.record("policy.vmpl", True, f"VMPL {vmpl} (the policy accepts up to {maximum})", CONFIGURATION)
    else:
        detail = (
            f"the report was requested at VMPL {vmpl} but the policy accepts up to {maximum}: less privileged "
            "code in the guest asked for it, not the measured firmware and kernel; raise snp.max_vmpl only "
            "for a guest that runs under an SVSM"
        )
        judge.record("policy.vmpl", False, detail, CONFIGURATION)


def _judge_min_tcb(
    judge: _Judgement, minimums: dict[str, int], *, source: str = "the policy's minimum"
) -> None:
    reported = judge.evidence.details.get("reported_tcb")
    if not isinstance(reported, dict):
        judge.record("policy.min_tcb", False, "the verifier reported no REPORTED_TCB to compare", HARDWARE)
        return
    shortfalls = []
    for name, minimum in minimums.items():
        value = reported.get(name)
        if not isinstance(value, int):
            shortfalls.append(f"{name} is not reported (minimum {minimum})")
        elif value < minimum:
            shortfalls.append(f"{name} {value} < {minimum}")
    shown = ", ".join(f"{name} {reported.get(name)}" for name in minimums)
    if shortfalls:
        detail = (
            f"REPORTED_TCB is below {source}: {'; '.join(shortfalls)}; the host needs newer "
            "SEV-SNP firmware / microcode, or the policy a lower snp.min_tcb"
        )
        judge.record("policy.min_tcb", False, detail, HARDWARE)
    else:
        judge.record("policy.min_tcb", True, f"REPORTED_TCB meets {source} ({shown})", HARDWARE)


def _judge_report_data(judge: _Judgement, name: str, expected: bytes, what: str) -> None:
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
