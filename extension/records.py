"""A kernel's attestation record as the front end shows it: the full record plus the badge and measurement.

The badge is decided here, once, so every surface agrees: a simulated TEE is *never* shown as attested,
whatever its verdict; a refused or failed handshake names the check that failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from teelab.gateway.result import NOT_CONFIDENTIAL, AttestationResult
from teelab.kernel.registry import SessionRecord

BadgeLevel = Literal["attested", "warning", "simulated", "failed"]

TEE_LABELS = {"sgx": "SGX", "tdx": "TDX", "sev-snp": "SEV-SNP"}
# The claim that identifies the code in each TEE, in the order tried: what a user compares with a policy.
MEASUREMENT_CLAIMS = (("mrenclave", "MRENCLAVE"), ("mrtd", "MRTD"), ("measurement", "SNP launch measurement"))
SIMULATED_TEXT = NOT_CONFIDENTIAL[0].upper() + NOT_CONFIDENTIAL[1:]  # "Simulated TEE — not confidential"


@dataclass(frozen=True)
class Badge:
    level: BadgeLevel
    text: str
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"level": self.level, "text": self.text, "detail": self.detail}


def badge(record: SessionRecord) -> Badge:
    result = record.result
    if record.failure is not None:
        check, detail = record.failure
        return Badge("failed", f"Attestation failed: {check}", detail)
    if result is None:
        return Badge("failed", "Attestation failed: no result", "the gateway holds no attestation result")
    if not result.ok:
        failed = result.failed_checks
        name = failed[0].name if failed else "policy"
        return Badge("failed", f"Attestation failed: {name}", result.error or "rejected")
    if result.simulated:
        # Checked before the verdict: a simulated TEE must never look like a confidential one.
        others = [warning for warning in result.warnings if warning != NOT_CONFIDENTIAL]
        detail = (
            "the real protocol on a simulated TEE, without hardware isolation; accepted because policy "
            f"{result.policy_id} allows simulation"
        )
        return Badge("simulated", SIMULATED_TEXT, "; ".join([detail, *others]))
    text = " · ".join(["Attested", *_tee_and_tcb(result)])
    if result.verdict == "affirming":
        return Badge("attested", text, f"verified under policy {result.policy_id}")
    return Badge("warning", text, "; ".join(result.warnings))


def _tee_and_tcb(result: AttestationResult) -> list[str]:
    parts = [TEE_LABELS.get(result.tee, result.tee) if result.tee else "unknown TEE"]
    if result.tcb_status:
        parts.append(result.tcb_status)
    if result.claims.get("debug") is True:
        parts.append("debug")
    return parts


def measurement(result: AttestationResult | None) -> dict[str, str] | None:
    if result is None:
        return None
    for claim, label in MEASUREMENT_CLAIMS:
        value = result.claims.get(claim)
        if isinstance(value, str):
            return {"name": label, "claim": claim, "value": value}
    return None


def summary_json(record: SessionRecord, *, running: bool) -> dict[str, object]:
    """What the status bar needs: which kernel, and its badge."""
    return {
        "kernel_id": record.kernel_id,
        "kernel_name": record.kernel_name,
        "backend": record.backend,
        "started_at": record.to_json()["started_at"],
        "running": running,
        "ok": record.ok,
        "simulated": record.result.simulated if record.result is not None else False,
        "badge": badge(record).to_json(),
    }


def record_json(record: SessionRecord, *, running: bool) -> dict[str, object]:
    """Everything the attestation panel shows: the registry's record, the badge and the measurement."""
    return {
        **record.to_json(),
        "running": running,
        "simulated": record.result.simulated if record.result is not None else False,
        "badge": badge(record).to_json(),
        "measurement": measurement(record.result),
    }
