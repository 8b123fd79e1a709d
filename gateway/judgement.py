"""The vocabulary of an appraisal: AR4SI trustworthiness claims and values, and the record of one judgement.

Every policy rule records a :class:`~teelab.gateway.checks.Check` and what it says about one AR4SI claim
(draft-ietf-rats-ar4si): a failed check lowers the claim into the contraindicated tier, an accepted but not
pristine condition into the warning tier, so the vector and the verdict always agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from teelab.gateway.checks import Check
from teelab.gateway.policy import AppraisalPolicy
from teelab.gateway.verified import VerifiedEvidence

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

PIN_HINTS = {
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


def tier(value: int) -> int:
    """0 none, 1 affirming, 2 warning, 3 contraindicated."""
    if value <= 1:
        return 0
    if value < WARNING:
        return 1
    return 2 if value < CONTRAINDICATED else 3


def worse(a: int, b: int) -> int:
    return max(a, b, key=lambda value: (tier(value), value))


@dataclass
class Judgement:
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
        self.vector[claim] = worse(self.vector.get(claim, NO_CLAIM), rated)

    def claim(self, name: str) -> object:
        return self.evidence.claims.get(name)


def judge_pin(judge: Judgement, name: str, allowed: tuple[str, ...], claim_kind: str) -> None:
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
    detail = f"{label} {value[:8]}… is not in the policy's allowed list ({count}); {PIN_HINTS[name]}"
    judge.record(f"policy.{name}", False, detail, claim_kind)
