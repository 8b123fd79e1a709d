"""The verdict TeeSpawner keeps on a single-user server (``spawner.get_state()["teelab_attestation"]``).

One JSON object, the same in the spawner's state, the hub service's ``api/servers`` and the spawn page: what
was verified (the evidence itself, base64, and everything its report_data binds) and what the hub concluded,
so that a user's own tool (``teelab hub verify``) can re-verify the evidence against the user's own policy.
docs/hosted-hub.md lists the fields.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from teelab.extension.hub import spawner_protocol as protocol
from teelab.gateway.result import AttestationResult
from teelab.kernel.attested_module import Evidence
from teelab.timeutil import isoformat

FORMAT = "teelab/hub-server-verdict/v1"
STATE_KEY = "teelab_attestation"
# The claims that name the code, per TEE, in the order a person pins them.
_MEASUREMENTS = (("mrenclave", "MRENCLAVE"), ("mrtd", "MRTD"), ("measurement", "MEASUREMENT"))


@dataclass(frozen=True)
class PolicyChoice:
    """The hub's policy for one server: which selector of ``policy_for`` chose it, and its file."""

    selector: str
    file: str


def _measurement(result: AttestationResult | None) -> dict[str, object] | None:
    if result is None:
        return None
    for claim, label in _MEASUREMENTS:
        if claim in result.claims:
            return {"label": label, "value": result.claims[claim]}
    return None


@dataclass(frozen=True)
class Observed:
    """What the server's boot sent, and the nonce it answered."""

    enclave_key: bytes
    tls_spki: bytes
    evidence: Evidence
    nonce: bytes
    server: str
    label: str  # "hello" or "challenge"

    def report_data(self) -> bytes:
        make = protocol.hello_report_data if self.label == "hello" else protocol.challenge_report_data
        return make(self.enclave_key, self.tls_spki, self.nonce, self.server)

    def to_json(self) -> dict[str, object]:
        return {
            "enclave_key": protocol.b64(self.enclave_key),
            "enclave_key_sha256": hashlib.sha256(self.enclave_key).hexdigest(),
            "tls_spki": protocol.b64(self.tls_spki),
            "tls_spki_sha256": hashlib.sha256(self.tls_spki).hexdigest(),
            "evidence": self.evidence.to_json(),
            "nonce": self.nonce.hex(),
            "report_data": self.report_data().hex(),
            "report_data_inputs": {
                "label": f"{protocol.PROTOCOL}/{self.label}",
                "enclave_key": self.enclave_key.hex(),
                "tls_spki_sha256": hashlib.sha256(self.tls_spki).hexdigest(),
                "nonce": self.nonce.hex(),
                "server": self.server,
                "server_sha256": hashlib.sha256(self.server.encode()).hexdigest(),
                "formula": "SHA-512(label ‖ enclave_key ‖ tls_spki_sha256 ‖ nonce ‖ server_sha256)",
            },
        }


def make_verdict(
    *,
    status: str,
    user: str,
    server_name: str,
    backend: str,
    controller_key: bytes,
    policy: PolicyChoice | None,
    observed: Observed | None,
    result: AttestationResult | None,
    reason: str | None,
    at: datetime,
) -> dict[str, Any]:
    """``status``: ``attested`` (every step passed), ``refused`` (the evidence failed a check), ``failed`` (the
    boot or the handshake failed before a verdict), ``key-changed`` / ``unreachable`` (a later re-challenge)."""
    verdict: dict[str, Any] = {
        "format": FORMAT,
        "status": status,
        "ok": status == "attested",
        "reason": reason,
        "user": user,
        "server_name": server_name,
        "server": protocol.server_id(user, server_name),
        "backend": backend,
        "simulated": result.simulated if result is not None else None,
        "verdict": result.verdict if result is not None else None,
        "policy": {
            "selector": policy.selector if policy else None,
            "file": policy.file if policy else None,
            "id": result.policy_id if result is not None else None,
            "digest": result.policy_digest if result is not None else None,
        },
        "measurement": _measurement(result),
        "controller": hashlib.sha256(controller_key).hexdigest(),
        "controller_key": controller_key.hex(),
        "checks": [check.to_json() for check in result.checks] if result is not None else [],
        "attestation": result.to_json() if result is not None else None,
        "attested_at": isoformat(at),
        "last_challenge": None,
    }
    if observed is not None:
        verdict.update(observed.to_json())
    return verdict


def challenge_record(
    *, at: datetime, nonce: bytes, ok: bool, reason: str | None, answer: Mapping[str, object] | None
) -> dict[str, object]:
    return {"at": isoformat(at), "nonce": nonce.hex(), "ok": ok, "reason": reason, "answer": answer}
