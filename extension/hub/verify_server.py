"""Re-verify the user's own single-user server (``teelab hub verify --user``, second half).

Over the connection just verified, the hub's service answers ``GET /services/teelab-kbs/api/servers/{user}``
with the spawner's record of the user's server: its evidence, the nonce the spawner sent, the server's TLS key
hash and enclave key, and the hub's verdict. The hub's verdict is shown but never trusted: the evidence is
verified again here against the *user's* policy, and its report_data must bind the server's TLS key, its
enclave key, the spawner's nonce and this user's server name, as the server boot computed it
(:mod:`~teelab.extension.hub.spawner_protocol`, ``SHA-512("teelab/hub-server/v1/hello" ‖ E.pub ‖
SPKI-SHA256 ‖ N ‖ SHA-256(user "/" server))``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from teelab.extension.hub.front_door_protocol import MAX_REPLY_BYTES, FrontDoorError
from teelab.extension.hub.verify_channel import HubChannel
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

SERVERS_API = "/services/teelab-kbs/api/servers/"
SUBJECT = "server"
SERVER_PROTOCOL = b"teelab/hub-server/v1"
Stage = Literal["hello", "challenge"]


def server_report_data(
    stage: Stage, enclave_key: bytes, tls_spki_sha256: bytes, nonce: bytes, server: str
) -> bytes:
    """The report_data of a server's evidence: ``SHA-512("teelab/hub-server/v1/<stage>" ‖ E.pub ‖
    SPKI-SHA256 ‖ N ‖ SHA-256(user/server))``, every field 32 bytes."""
    if not len(enclave_key) == len(tls_spki_sha256) == len(nonce) == 32:
        raise FrontDoorError("the server's enclave key, TLS key hash and nonce are 32 bytes each")
    label = SERVER_PROTOCOL + b"/" + stage.encode()
    fields = enclave_key + tls_spki_sha256 + nonce + hashlib.sha256(server.encode()).digest()
    return hashlib.sha512(label + fields).digest()


def _bytes(value: object, key: str) -> bytes:
    """Hex or base64 (the record's encoding of binary fields)."""
    if not isinstance(value, str):
        raise ValueError(f"{key!r} is missing or not a string")
    try:
        return bytes.fromhex(value)
    except ValueError:
        return base64.b64decode(value, validate=True)


@dataclass(frozen=True)
class ServerRecord:
    """The hub's record of one server (untrusted until its evidence verifies)."""

    server: str
    evidence: bytes
    nonce: bytes
    tls_spki_sha256: bytes
    enclave_key: bytes
    stage: Stage
    hub_verdict: str
    collateral: bytes | None
    controller: bytes | None = None  # SHA-256(G_s.pub) the hub says its spawner launched the server for
    # A confidential pod's (TeeKubeSpawner): its Kata init-data annotation, whose digest is the launch field and
    # which names the controller.
    init_data: str | None = None

    @classmethod
    def from_reply(cls, body: bytes, user: str, server_name: str) -> ServerRecord:
        """The record of ``user/server_name`` from the service's reply (TeeSpawner's verdict format,
        ``teelab/hub-server-verdict/v1``, in ``{"user": …, "servers": [ … ]}``); a FrontDoorError when
        malformed."""
        if len(body) > MAX_REPLY_BYTES:
            raise FrontDoorError(f"the hub's reply is larger than {MAX_REPLY_BYTES} bytes")
        wanted = f"{user}/{server_name}"
        try:
            record = _pick(json.loads(body), server_name)
            evidence = record.get("evidence")
            if isinstance(evidence, dict):  # Evidence.to_json(): {"kind", "blob"}
                evidence = evidence.get("blob")
            inputs = record.get("report_data_inputs")
            inputs = inputs if isinstance(inputs, dict) else {}
            label = str(inputs.get("label", "hello"))
            stage = label.rsplit("/", 1)[-1]
            if stage not in ("hello", "challenge"):
                raise ValueError(f"unknown evidence label {label!r}")
            named = record.get("server", wanted)
            if named != wanted:
                raise ValueError(f"the record is for {named!r}, not {wanted!r}")
            collateral = record.get("collateral")
            controller = (
                None if record.get("controller") is None else _bytes(record.get("controller"), "controller")
            )
            if controller is not None and len(controller) != 32:
                raise ValueError("the controller hash is 32 bytes")
            init_data = record.get("init_data")
            if init_data is not None and not isinstance(init_data, str):
                raise ValueError("init_data is not a string")
            status = record.get("status")
            verdict = record.get("verdict")
            return cls(
                server=wanted,
                evidence=base64.b64decode(str(evidence), validate=True),
                nonce=_bytes(record.get("nonce"), "nonce"),
                tls_spki_sha256=_bytes(record.get("tls_spki_sha256"), "tls_spki_sha256"),
                enclave_key=_bytes(inputs.get("enclave_key", record.get("enclave_key")), "enclave_key"),
                stage="hello" if stage == "hello" else "challenge",
                hub_verdict=" / ".join(str(v) for v in (status, verdict) if v is not None) or "?",
                collateral=None if collateral is None else base64.b64decode(str(collateral), validate=True),
                controller=controller,
                init_data=init_data,
            )
        except (ValueError, TypeError, binascii.Error, RecursionError) as error:
            raise FrontDoorError(f"the hub's record of {wanted} is malformed: {error}") from None


def _pick(data: object, server_name: str) -> dict[str, object]:
    """The record itself, or the named one of ``{"servers": [{"server_name": …}]}`` / ``{name: record}``."""
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    servers = data.get("servers")
    if servers is None:
        return data
    if isinstance(servers, dict) and isinstance(servers.get(server_name), dict):
        return dict(servers[server_name])
    if isinstance(servers, list):
        for entry in servers:
            if isinstance(entry, dict) and entry.get("server_name", entry.get("name", "")) == server_name:
                return dict(entry)
    raise ValueError(f"no server named {server_name!r} in the reply (is it running under TeeSpawner?)")


@dataclass
class ServerOutcome:
    lines: list[CheckLine]
    measurement: str | None = None
    record: ServerRecord | None = None


def fetch_record(channel: HubChannel, user: str, token: str, server_name: str) -> ServerRecord:
    reply = channel.get(SERVERS_API + quote(user, safe=""), {"Authorization": f"token {token}"})
    if reply.status != 200:
        raise FrontDoorError(
            f"the hub's service answered HTTP {reply.status} for {user}'s server (403: the token is not "
            f"{user}'s; 404: no attested server is running)"
        )
    return ServerRecord.from_reply(reply.body, user, server_name)


def verify_server(
    record: ServerRecord,
    policy: AppraisalPolicy,
    *,
    at: datetime,
    collateral: Path | bytes | None = None,
    anchors: TrustAnchors | None = None,
) -> ServerOutcome:
    """Re-verify the record's evidence against the user's policy and the binding, as lines."""
    lines = [
        CheckLine(
            f"{SUBJECT} record",
            True,
            f"{record.server} fetched over the verified connection; the hub says {record.hub_verdict!r} "
            "(not trusted: re-verified below)",
        )
    ]
    expected = server_report_data(
        record.stage, record.enclave_key, record.tls_spki_sha256, record.nonce, record.server
    )
    result = verify_evidence(
        record.evidence,
        collateral=record.collateral if record.collateral is not None else collateral,
        at=at,
        anchors=anchors,
        policy=policy,
        expected_report_data=expected,
        # A pod's launch field is its init-data's digest: controller_line checks it through the init-data.
        expected_controller=None if record.init_data is not None else record.controller,
    )
    lines += evidence_lines(SUBJECT, result)
    data = report_data_of(result)
    if data is None:
        lines.append(CheckLine(f"{SUBJECT} binding", False, "not checked: the evidence did not verify"))
    elif binds(data, expected):
        detail = (
            f"the evidence binds the server's TLS key {record.tls_spki_sha256.hex()[:16]}…, its enclave key "
            f"and the name {record.server!r}"
        )
        lines.append(CheckLine(f"{SUBJECT} binding", True, detail))
    else:
        detail = (
            f"the evidence's report_data does not bind the TLS key, enclave key, nonce and name {record.server!r} "
            "the hub reports: evidence of another server (or user), or a record the hub changed"
        )
        lines.append(CheckLine(f"{SUBJECT} binding", False, detail))
    lines.append(controller_line(result, record))
    return ServerOutcome(lines, measurement_of(result), record)


def controller_line(result: AttestationResult, record: ServerRecord) -> CheckLine:
    """``server controller``: the evidence names the controller the hub says launched the server (its
    spawner's ``G_s``): the server obeys that key and no one else's (ARCHITECTURE §3)."""
    name = f"{SUBJECT} controller"
    if record.controller is None:
        return CheckLine(name, False, "the hub's record names no controller for the server")
    if record.init_data is not None:
        return _init_data_controller_line(name, result, record.init_data, record.controller)
    check = next((c for c in result.checks if c.name == "controller"), None)
    if check is None:
        return CheckLine(name, False, "not checked: the evidence did not verify")
    if check.passed:
        return CheckLine(name, True, f"the server obeys the hub spawner's key only ({check.detail})")
    return CheckLine(name, False, check.detail)


def _init_data_controller_line(
    name: str, result: AttestationResult, annotation: str, controller: bytes
) -> CheckLine:
    """A confidential pod's controller: its launch field is the digest of the record's init-data, and that
    init-data names the hub spawner's key."""
    from teelab.extension.hub.kubernetes import check_init_data_controller, read_init_data
    from teelab.protocols.session import HandshakeError

    if result.tee is None:
        return CheckLine(name, False, "not checked: the evidence did not verify")
    try:
        toml = read_init_data(annotation).toml
    except HandshakeError as error:
        return CheckLine(name, False, f"the record's init-data: {error.message}")
    passed, detail = check_init_data_controller(result.claims, toml, controller)
    if passed:
        return CheckLine(name, True, f"the server obeys the hub spawner's key only ({detail})")
    return CheckLine(name, False, detail)
