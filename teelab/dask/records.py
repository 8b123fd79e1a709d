"""What ``TeeCluster.attestation`` lists: one record per node start, accepted or refused."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

_MEASUREMENT_CLAIMS = ("mrenclave", "mrtd", "measurement")


@dataclass(frozen=True)
class NodeAttestation:
    """The controller's verdict on one node start.

    ``verdict`` is the verifier's (``affirming``, ``warning`` — e.g. simulated —, ``contraindicated``), or
    ``refused`` when the node never produced an appraisable hello (its boot failed, the handshake broke).
    ``controller`` is the controller check's outcome (``pass``/``fail``: its detail), ``failure`` the
    ``check: detail`` that refused the node, ``result`` the full attestation result (``teelab evidence
    verify --json``'s shape) when there is one.
    """

    name: str
    role: str
    verdict: str
    measurement: str | None
    controller: str
    time: datetime
    tee: str | None = None
    simulated: bool = False
    failure: str | None = None
    pid: int | None = None
    result: dict[str, Any] | None = None

    @property
    def accepted(self) -> bool:
        return self.failure is None and self.verdict in ("affirming", "warning")

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "verdict": self.verdict,
            "measurement": self.measurement,
            "controller": self.controller,
            "time": self.time.isoformat(),
            "tee": self.tee,
            "simulated": self.simulated,
            "failure": self.failure,
            "pid": self.pid,
            "result": self.result,
        }


def measurement_of(claims: Any) -> str | None:
    for name in _MEASUREMENT_CLAIMS:
        value = claims.get(name) if hasattr(claims, "get") else None
        if isinstance(value, str):
            return value
    return None


def controller_outcome(checks: Any) -> str:
    for check in checks:
        if check.name == "controller":
            return f"{'pass' if check.passed else 'fail'}: {check.detail}"
    return "not checked"
