"""The attestation result: the verdict on one piece of evidence, in the RATS/EAR vocabulary.

``verdict`` is ``affirming`` (verified, every policy check passed, nothing to warn about), ``warning``
(accepted, but not pristine: simulated, debug, a TCB status other than UpToDate, or advisories) or
``contraindicated`` (rejected). ``to_json`` is the CLI's ``--json`` output; :func:`render_summary` is the
short text a person reads; the signed EAR form lives in :mod:`teelab.gateway.ear`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Literal

from teelab.gateway.checks import Check
from teelab.gateway.verified import ClaimValue, Tee
from teelab.timeutil import isoformat

Verdict = Literal["affirming", "warning", "contraindicated"]
VERDICTS: tuple[Verdict, ...] = ("affirming", "warning", "contraindicated")

NOT_CONFIDENTIAL = "simulated TEE — not confidential"

# Claims shown in the human summary, in this order: the identity a person pins in a policy.
_SUMMARY_CLAIMS = (
    "mrenclave",
    "mrsigner",
    "isv_prod_id",
    "isv_svn",
    "mrtd",
    "rtmr0",
    "rtmr1",
    "rtmr2",
    "rtmr3",
    "mrconfigid",
    "measurement",
    "host_data",
    "debug",
)


@dataclass(frozen=True)
class AttestationResult:
    verdict: Verdict
    # None when the evidence could not even be recognised as SGX, TDX or SEV-SNP evidence.
    tee: Tee | None
    simulated: bool
    tcb_status: str | None
    advisory_ids: tuple[str, ...]
    claims: Mapping[str, ClaimValue]
    # The verifier's checks, then the policy's, in the order they were made.
    checks: tuple[Check, ...]
    verified_at: datetime
    policy_id: str
    # AR4SI trustworthiness claims (name -> value in -128..127) consistent with the verdict's tier.
    trust_vector: Mapping[str, int] = field(default_factory=dict)
    # The report_data the caller required (the session nonce binding); it becomes the EAR's eat_nonce.
    expected_report_data: bytes | None = None
    valid_until: datetime | None = None
    collateral_issued_at: datetime | None = None
    policy_digest: str | None = None

    def __post_init__(self) -> None:
        # Results are handed to other parts (kernel, extension); they must not be able to edit claims.
        object.__setattr__(self, "claims", MappingProxyType(dict(self.claims)))
        object.__setattr__(self, "trust_vector", MappingProxyType(dict(self.trust_vector)))

    @property
    def ok(self) -> bool:
        return self.verdict != "contraindicated"

    @property
    def failed_checks(self) -> tuple[Check, ...]:
        return tuple(check for check in self.checks if not check.passed)

    @property
    def error(self) -> str | None:
        """The first failed check as ``name: reason``, or None when accepted."""
        if self.ok:
            return None
        failed = self.failed_checks
        if not failed:
            return "rejected"
        return f"{failed[0].name}: {failed[0].detail}"

    @property
    def warnings(self) -> tuple[str, ...]:
        """Why an accepted result is only ``warning`` (empty for affirming and rejected results)."""
        if self.verdict != "warning":
            return ()
        reasons = []
        if self.simulated:
            reasons.append(NOT_CONFIDENTIAL)
        if self.claims.get("debug") is True:
            reasons.append("debug TEE — the host can read its memory")
        if self.tcb_status not in (None, "UpToDate"):
            reasons.append(f"TCB status {self.tcb_status}")
        if self.advisory_ids:
            reasons.append(f"advisories {', '.join(self.advisory_ids)}")
        return tuple(reasons)

    def to_json(self) -> dict[str, object]:
        """The CLI's JSON: the keys issue 3 lists (ok … error), then extras."""
        return {
            "ok": self.ok,
            "verdict": self.verdict,
            "tee": self.tee,
            "simulated": self.simulated,
            "tcb_status": self.tcb_status,
            "advisory_ids": list(self.advisory_ids),
            "claims": dict(self.claims),
            "checks": [check.to_json() for check in self.checks],
            "error": self.error,
            "warnings": list(self.warnings),
            "verified_at": isoformat(self.verified_at),
            "policy_id": self.policy_id,
            "policy_digest": self.policy_digest,
            "trust_vector": dict(self.trust_vector),
            "expected_report_data": self.expected_report_data.hex()
            if self.expected_report_data is not None
            else None,
            "valid_until": isoformat(self.valid_until) if self.valid_until else None,
            "collateral_issued_at": isoformat(self.collateral_issued_at)
            if self.collateral_issued_at
            else None,
        }


_TEE_NAMES = {"sgx": "SGX enclave", "tdx": "TDX trust domain", "sev-snp": "SEV-SNP guest"}


def render_summary(result: AttestationResult) -> str:
    """A few lines a person reads: the verdict, plainly what failed (or why it is only a warning), the
    identity to pin."""
    subject = _TEE_NAMES.get(result.tee, "evidence") if result.tee else "evidence"
    lines: list[str] = []
    if result.simulated:
        lines.append(f"!! {NOT_CONFIDENTIAL} !!")
    if not result.ok:
        lines.append(f"REJECTED: {subject} (policy {result.policy_id})")
        lines.extend(f"  failed {check.name}: {check.detail}" for check in result.failed_checks)
    elif result.verdict == "warning":
        lines.append(f"ACCEPTED WITH WARNINGS: {subject} (policy {result.policy_id})")
        lines.extend(f"  warning: {reason}" for reason in result.warnings)
    else:
        lines.append(f"ACCEPTED: {subject} verified and matches policy {result.policy_id}")
    if result.tee and result.claims:
        status = result.tcb_status or (
            "n/a (SEV-SNP reports carry TCB versions)" if result.tee == "sev-snp" else "-"
        )
        advisories = ", ".join(result.advisory_ids) or "none"
        lines.append(f"  TCB status: {status}; advisories: {advisories}")
    for name in _SUMMARY_CLAIMS:
        if name in result.claims:
            value = result.claims[name]
            shown = str(value).lower() if isinstance(value, bool) else str(value)
            lines.append(f"  {name:<12}{shown}")
    passed = sum(1 for check in result.checks if check.passed)
    failed = len(result.checks) - passed
    plural = "s" if passed != 1 else ""
    lines.append(
        f"  {passed} check{plural} passed, {failed} failed, judged at {isoformat(result.verified_at)}; "
        "--json lists every check"
    )
    return "\n".join(lines)
