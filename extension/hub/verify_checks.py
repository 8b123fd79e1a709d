"""The lines ``teelab hub verify`` prints: one named check each, from an attestation result or a comparison.

An :class:`~teelab.gateway.result.AttestationResult` carries every check the verifier and the policy made; a
user reads three things from it, each a line of its own: is the evidence authentic (``… evidence``), does it
match the policy they pinned (``… policy``), and what it is bound to (the callers' binding lines, computed here
from the evidence's report_data in constant time).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from teelab.gateway.result import AttestationResult

OK_MARK = "✓"
FAIL_MARK = "✗"
# The gateway's appraisal names its checks policy.*; the verifier's are everything else but the controller.
_BINDING_CHECKS = ("policy.expected_report_data", "policy.report_data")


@dataclass(frozen=True)
class CheckLine:
    name: str
    passed: bool
    detail: str

    def render(self) -> str:
        return f"{OK_MARK if self.passed else FAIL_MARK} {self.name}: {self.detail}"


def measurement_of(result: AttestationResult) -> str | None:
    """The code measurement a policy pins (MRENCLAVE, MRTD or the SNP MEASUREMENT), hex; None if unverified."""
    for name in ("mrenclave", "mrtd", "measurement"):
        value = result.claims.get(name)
        if isinstance(value, str):
            return value
    return None


def report_data_of(result: AttestationResult) -> bytes | None:
    value = result.claims.get("report_data")
    if not isinstance(value, str):
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None


def binds(report_data: bytes | None, expected: bytes) -> bool:
    """Whether the evidence's report_data is ``expected`` (zero-padded), compared in constant time."""
    if report_data is None or len(expected) > len(report_data):
        return False
    return hmac.compare_digest(expected + bytes(len(report_data) - len(expected)), report_data)


def evidence_lines(subject: str, result: AttestationResult) -> list[CheckLine]:
    """``<subject> evidence`` (authentic: signatures, chain to a pinned root, collateral) and ``<subject>
    policy`` (the user's reference values, TCB, debug, simulation)."""
    verifier = [c for c in result.checks if not c.name.startswith("policy.") and c.name != "controller"]
    policy = [c for c in result.checks if c.name.startswith("policy.") and c.name not in _BINDING_CHECKS]
    failed = [c for c in verifier if not c.passed]
    tee = (result.tee or "unknown").upper()
    if failed or not result.claims:
        first = failed[0] if failed else None
        detail = f"{first.name}: {first.detail}" if first else "the evidence did not verify"
        return [
            CheckLine(f"{subject} evidence", False, detail),
            CheckLine(f"{subject} policy", False, "not judged: the evidence is not authentic"),
        ]
    note = "; SIMULATED TEE — not confidential" if result.simulated else ""
    lines = [
        CheckLine(f"{subject} evidence", True, f"authentic {tee} evidence ({len(verifier)} checks){note}")
    ]
    refused = [c for c in policy if not c.passed]
    if refused:
        lines.append(CheckLine(f"{subject} policy", False, f"{refused[0].name}: {refused[0].detail}"))
    else:
        measured = measurement_of(result) or "?"
        detail = (
            f"matches policy {result.policy_id!r}: measurement {measured}, TCB {result.tcb_status or '-'}"
        )
        lines.append(CheckLine(f"{subject} policy", True, detail))
    return lines
