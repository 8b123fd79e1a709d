"""Verify the hub's front door over the very TLS connection in use (``teelab hub verify``, first half).

1. the channel (:class:`~.verify_channel.HubChannel`) took the peer's SPKI from this connection's handshake;
2. a fresh random nonce goes to the attestation endpoint over that connection;
3. the evidence is verified against the user's pinned policy, with the report_data required to be
   ``SHA-512("teelab/hub-tls/v1" ‖ SPKI of this connection ‖ this nonce)``.

What the front door *says* its key and nonce are is never trusted; it only helps name what went wrong: evidence
for another nonce is a replay, evidence for another key means someone else terminates this TLS connection.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from teelab.extension.hub.front_door_protocol import (
    ATTESTATION_PATH,
    NONCE_BYTES,
    FrontDoorError,
    FrontDoorEvidence,
    front_door_report_data,
)
from teelab.extension.hub.verify_channel import HubChannel, Reply
from teelab.extension.hub.verify_checks import (
    CheckLine,
    binds,
    evidence_lines,
    measurement_of,
    report_data_of,
)
from teelab.gateway.anchors import TrustAnchors
from teelab.gateway.policy import AppraisalPolicy
from teelab.gateway.result import AttestationResult
from teelab.gateway.verifier import verify_evidence

SUBJECT = "front door"


@dataclass
class FrontDoorOutcome:
    lines: list[CheckLine]
    measurement: str | None = None
    answer: FrontDoorEvidence | None = None

    @property
    def ok(self) -> bool:
        return all(line.passed for line in self.lines)


def verify_front_door(
    channel: HubChannel,
    policy: AppraisalPolicy,
    *,
    at: datetime,
    collateral: Path | None = None,
    anchors: TrustAnchors | None = None,
    nonce: bytes | None = None,
) -> FrontDoorOutcome:
    """Every front-door check, as lines; ``nonce`` is drawn fresh unless a test gives one."""
    key = channel.tls_spki_sha256
    nonce = nonce if nonce is not None else secrets.token_bytes(NONCE_BYTES)
    outcome = FrontDoorOutcome(
        [
            CheckLine(
                "TLS",
                True,
                f"{channel.address.origin} over {channel.tls_version}, key SPKI-SHA256 {key.hex()}",
            )
        ]
    )
    try:
        reply = channel.get(f"{ATTESTATION_PATH}?nonce={nonce.hex()}")
        if reply.status == 429:
            raise FrontDoorError(rate_limited(reply))
        if reply.status != 200:
            raise FrontDoorError(
                f"the attestation endpoint answered HTTP {reply.status}: not a teelab front door?"
            )
        answer = FrontDoorEvidence.from_reply(reply.body)
    except FrontDoorError as error:
        outcome.lines.append(CheckLine(f"{SUBJECT} evidence", False, error.message))
        return outcome
    outcome.answer = answer
    result = verify_evidence(
        answer.evidence,
        collateral=collateral if collateral is not None else answer.collateral,
        at=at,
        anchors=anchors,
        policy=policy,
        expected_report_data=front_door_report_data(key, nonce),
    )
    outcome.lines += evidence_lines(SUBJECT, result)
    outcome.lines += binding_lines(result, key, nonce, answer)
    if answer.pod is not None:  # a hub pod (docs/hosted-hub.md): the hub and the proxy are in this image
        from teelab.extension.hub.hub_pod_verify import pod_line

        outcome.lines.append(pod_line(answer.pod, verified=all(line.passed for line in outcome.lines)))
    outcome.measurement = measurement_of(result)
    return outcome


def rate_limited(reply: Reply) -> str:
    """The line for a 429: the front door limits how often it makes evidence (docs/hosted-hub.md)."""
    seconds = (reply.retry_after or "").strip()
    wait = (
        f"retry in {int(seconds)} s"
        if seconds.isascii() and seconds.isdigit() and len(seconds) < 7
        else "retry later"
    )
    why = ""
    try:
        error = json.loads(reply.body).get("error")
        if isinstance(error, str):
            # Printed to the user's terminal: no control characters from the peer.
            why = " ({})".format("".join(c for c in error[:200] if c.isprintable()))
    except (ValueError, AttributeError, RecursionError):
        pass  # the reason is only for the user to read; the status says enough
    return f"rate-limited, {wait}{why}"


def binding_lines(
    result: AttestationResult, key: bytes, nonce: bytes, answer: FrontDoorEvidence
) -> list[CheckLine]:
    """``front door TLS key`` and ``front door nonce``: what the evidence's report_data binds."""
    key_name, nonce_name = f"{SUBJECT} TLS key", f"{SUBJECT} nonce"
    data = report_data_of(result)
    if data is None:
        skipped = "not checked: the evidence did not verify"
        return [CheckLine(key_name, False, skipped), CheckLine(nonce_name, False, skipped)]
    if binds(data, front_door_report_data(key, nonce)):
        return [
            CheckLine(key_name, True, f"the evidence binds this connection's key {key.hex()[:16]}…"),
            CheckLine(nonce_name, True, f"the evidence binds the fresh nonce {nonce.hex()[:16]}… sent now"),
        ]
    claimed_key, claimed_nonce = answer.tls_spki_sha256, answer.nonce
    sizes_ok = len(claimed_key) == 32 and len(claimed_nonce) == NONCE_BYTES
    our_key_old_nonce = sizes_ok and binds(data, front_door_report_data(key, claimed_nonce))
    other_key = sizes_ok and (
        binds(data, front_door_report_data(claimed_key, nonce))
        or binds(data, front_door_report_data(claimed_key, claimed_nonce))
    )
    if our_key_old_nonce:
        key_line = CheckLine(key_name, True, "the evidence binds this connection's key")
    elif other_key:
        key_line = CheckLine(
            key_name,
            False,
            f"the evidence binds another TLS key ({claimed_key.hex()[:16]}…), not this connection's "
            f"({key.hex()[:16]}…): something between you and the attested front door terminates TLS (a man in "
            "the middle relaying its evidence)",
        )
    else:
        key_line = CheckLine(
            key_name,
            False,
            "the evidence's report_data binds neither this connection's key nor the key the reply names",
        )
    if sizes_ok and binds(data, front_door_report_data(claimed_key, nonce)):
        nonce_line = CheckLine(
            nonce_name, True, f"the evidence binds the fresh nonce {nonce.hex()[:16]}… sent now"
        )
    elif our_key_old_nonce or other_key:
        nonce_line = CheckLine(
            nonce_name,
            False,
            f"the evidence was made for another nonce ({claimed_nonce.hex()[:16]}…), not the one sent now "
            f"({nonce.hex()[:16]}…): replayed evidence",
        )
    else:
        nonce_line = CheckLine(
            nonce_name, False, "the evidence's report_data does not bind the nonce sent now"
        )
    return [key_line, nonce_line]
