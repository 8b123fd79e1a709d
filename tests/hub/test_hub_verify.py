"""``teelab hub verify`` and ``teelab hub connect`` against the real attested front door (sim TEE), real TLS on
loopback.

One front door per module, launched through the sim backend in front of a stand-in for the hub's proxy (an
HTTP server on loopback serving the teelab-kbs service's record of alice's server). alice's server evidence is
made by the real sim TEE runtime (``SimRuntime``) over the server boot's report_data. The adversaries: a man in
the middle with a certificate of its own (relaying the real front door's evidence, tampering with it, or
replaying an old answer), a policy pinning another measurement, a changed key, and a hub record of another
user's server.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import http.client
import http.server
import json
import os
import ssl
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from cryptography.x509.oid import NameOID

from teelab.cli import main as teelab_main
from teelab.enclave_runtime.backends import get_backend
from teelab.enclave_runtime.controller import sgx_config_id
from teelab.enclave_runtime.sim.backend import SimBackend
from teelab.enclave_runtime.sim.identity import SimIdentity
from teelab.enclave_runtime.sim.runtime import SimRuntime
from teelab.enclave_runtime.sim.sgx_structs import ATTRIBUTE_INIT, ATTRIBUTE_MODE64BIT
from teelab.extension.hub import spawner_protocol as protocol
from teelab.extension.hub.connect import KeyMismatch, PinnedProxy
from teelab.extension.hub.front_door_launch import (
    RunningFrontDoor,
    build_front_door_image,
    front_door_policy_text,
    launch_front_door,
)
from teelab.extension.hub.front_door_limits import EvidenceLimits
from teelab.extension.hub.front_door_protocol import ATTESTATION_PATH, FrontDoorEvidence, spki_sha256
from teelab.extension.hub.spawner_verdict import Observed
from teelab.extension.hub.verify_channel import HubAddress, HubChannel
from teelab.extension.hub.verify_front_door import binding_lines
from teelab.extension.hub.verify_pins import Pin, PinFile
from teelab.extension.hub.verify_run import ServerRequest, VerifyReport, run_verify
from teelab.extension.hub.verify_server import SERVERS_API, server_report_data
from teelab.gateway.policy import AppraisalPolicy, SgxReference, parse_policy
from teelab.gateway.verifier import default_anchors, verify_evidence
from teelab.timeutil import utcnow

ALICE_TOKEN = "alice-hub-token-0123456789"
SERVER_MRENCLAVE = bytes.fromhex("5e" * 32)
SPAWNER_CONTROLLER = hashlib.sha256(b"G_s.pub of the hub's spawner").digest()
FRONT_DOOR_CHECKS = [
    "TLS",
    "front door evidence",
    "front door policy",
    "front door TLS key",
    "front door nonce",
    "front door pin",
]
SERVER_CHECKS = [
    "server record",
    "server evidence",
    "server policy",
    "server binding",
    "server controller",
    "server pin",
]


def self_signed(name: str) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) of a fresh P-256 key: what a man in the middle presents."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    return certificate.public_bytes(Encoding.PEM), key_pem


def server_record(
    runtime: SimRuntime, *, user: str, bound_to: str, verdict: str = "affirming"
) -> dict[str, Any]:
    """The teelab-kbs service's answer for ``user`` (TeeSpawner's verdict format); the evidence (real sim TEE)
    binds the server ``bound_to``."""
    enclave_key = x25519.X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    tls_spki, nonce = os.urandom(91), os.urandom(32)
    tls_spki_sha256 = hashlib.sha256(tls_spki).digest()
    evidence = runtime.evidence(server_report_data("hello", enclave_key, tls_spki_sha256, nonce, bound_to))
    observed = Observed(enclave_key, tls_spki, evidence, nonce, f"{user}/", "hello").to_json()
    entry = {**observed, "server": f"{user}/", "server_name": "", "status": "attested", "verdict": verdict}
    entry["controller"] = SPAWNER_CONTROLLER.hex()
    return {"user": user, "servers": [entry]}


@dataclass
class StandInHub:
    """What answers behind the front door: the hub service's record API and a page for everything else."""

    records: dict[str, dict[str, Any]]
    seen_paths: list[str] = field(default_factory=list)

    def start(self) -> http.server.ThreadingHTTPServer:
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as configurable-http-proxy

            def do_GET(self) -> None:
                hub.seen_paths.append(self.path)
                status, body = 200, b'{"hub": true}'
                if self.path.startswith(SERVERS_API):
                    user = self.path[len(SERVERS_API) :]
                    if self.headers.get("Authorization") != f"token {ALICE_TOKEN}" or user != "alice":
                        status, body = 403, b'{"error": "forbidden"}'
                    else:
                        status, body = 200, json.dumps(hub.records[user]).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


@dataclass
class ManInTheMiddle:
    """Terminates the user's TLS with a key of its own; asks the real front door for evidence over its own
    connection and answers with it — as is (``relay``), with a byte flipped (``tamper``), or an answer recorded
    earlier (``replay``). Records every header it is sent."""

    front_door_port: int
    tmp: Path
    mode: str = "relay"
    recorded: bytes | None = None
    headers_seen: list[dict[str, str]] = field(default_factory=list)

    def start(self) -> tuple[http.server.ThreadingHTTPServer, bytes]:
        mitm = self
        certificate, key = self_signed("localhost")
        (self.tmp / "mitm.pem").write_bytes(certificate + key)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.tmp / "mitm.pem")

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                mitm.headers_seen.append(dict(self.headers))
                if not self.path.startswith(ATTESTATION_PATH):
                    body, status = b"{}", 404
                elif mitm.mode == "replay" and mitm.recorded is not None:
                    body, status = mitm.recorded, 200
                else:
                    upstream = http.client.HTTPSConnection(
                        "127.0.0.1", mitm.front_door_port, context=ssl._create_unverified_context()
                    )
                    upstream.request("GET", self.path)
                    response = upstream.getresponse()
                    body, status = response.read(), response.status
                    upstream.close()
                    if mitm.mode == "tamper":
                        answer = json.loads(body)
                        blob = bytearray(base64.b64decode(answer["evidence"]))
                        blob[200] ^= 0x01  # inside the report body the quote signs
                        answer["evidence"] = base64.b64encode(bytes(blob)).decode()
                        body = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        der = x509.load_pem_x509_certificate(certificate).public_bytes(Encoding.DER)
        return server, spki_sha256(der)


@dataclass
class Deployment:
    front_door: RunningFrontDoor
    hub: StandInHub
    policy: AppraisalPolicy
    server_policy: AppraisalPolicy
    runtime: SimRuntime
    backend: SimBackend
    data_dir: Path

    @property
    def address(self) -> HubAddress:
        return HubAddress("127.0.0.1", self.front_door.port)

    @property
    def anchors(self) -> Any:
        return default_anchors(self.backend.root_pins())


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, shared_cache_dir: Path) -> Iterator[Deployment]:
    data = tmp_path_factory.mktemp("hub-verify-data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TEELAB_DATA_DIR", str(data))
        patch.setenv("TEELAB_CACHE_DIR", str(shared_cache_dir))
        backend = get_backend("sim")
        assert isinstance(backend, SimBackend)
        image = build_front_door_image(backend)
        platform = backend.platform
        runtime = SimRuntime(
            SimIdentity(
                platform=platform.path,
                mrenclave=SERVER_MRENCLAVE,
                mrsigner=bytes(32),
                isv_prod_id=0,
                isv_svn=0,
                attributes=ATTRIBUTE_INIT | ATTRIBUTE_MODE64BIT,
                config_id=sgx_config_id(SPAWNER_CONTROLLER),  # the launch field, as the sim loader sets it
            ),
            platform,
        )
        hub = StandInHub({"alice": server_record(runtime, user="alice", bound_to="alice/")})
        upstream = hub.start()
        # Every test here asks from 127.0.0.1 in quick succession: a bucket the module cannot empty
        # (the limits themselves: test_front_door_limits.py).
        running = launch_front_door(
            backend,
            image,
            upstream=("127.0.0.1", upstream.server_address[1]),
            limits=EvidenceLimits(burst=1000),
        )
        try:
            yield Deployment(
                front_door=running,
                hub=hub,
                policy=parse_policy(front_door_policy_text(image, simulated=True)),
                server_policy=AppraisalPolicy(
                    id="alice-server",
                    allow_simulation=True,
                    sgx=SgxReference(mrenclave=(SERVER_MRENCLAVE.hex(),)),
                ),
                runtime=runtime,
                backend=backend,
                data_dir=data,
            )
        finally:
            running.stop()
            upstream.shutdown()


def names(report: VerifyReport) -> list[str]:
    return [line.name for line in report.lines]


def failed(report: VerifyReport) -> dict[str, str]:
    return {line.name: line.detail for line in report.lines if not line.passed}


def alice(deployment: Deployment) -> ServerRequest:
    return ServerRequest("alice", ALICE_TOKEN, policy=deployment.server_policy)


def test_genuine_front_door_and_own_server_pass_and_are_pinned(
    deployment: Deployment, tmp_path: Path
) -> None:
    pins = PinFile(tmp_path / "pins.json")
    report = run_verify(
        deployment.address, deployment.policy, pins, server=alice(deployment), anchors=deployment.anchors
    )
    assert failed(report) == {}
    assert names(report) == FRONT_DOOR_CHECKS + SERVER_CHECKS
    assert report.ok
    saved = pins.load(deployment.address.origin)
    assert saved.front_door is not None
    assert saved.front_door.tls_spki_sha256 == deployment.front_door.tls_spki_sha256.hex()
    assert saved.servers["alice/"].measurement == SERVER_MRENCLAVE.hex()
    assert stat.S_IMODE(os.stat(tmp_path / "pins.json").st_mode) == 0o600
    # The hub's stand-in saw the record request arrive through the front door's tunnel, on the same connection.
    assert deployment.hub.seen_paths[-1] == SERVERS_API + "alice"


def test_the_cli_prints_one_line_per_check_and_keeps_the_token_out_of_its_output(
    deployment: Deployment,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("TEELAB_DATA_DIR", str(deployment.data_dir))  # the sim platform's root is known there
    (tmp_path / "front-door.toml").write_text(front_door_policy_text(_image(deployment), simulated=True))
    (tmp_path / "server.toml").write_text(
        f'id = "alice-server"\nallow_simulation = true\n[sgx]\nmrenclave = ["{SERVER_MRENCLAVE.hex()}"]\n'
    )
    (tmp_path / "token").write_text(ALICE_TOKEN + "\n")
    argv = [
        "hub", "verify", deployment.address.origin, "--policy", str(tmp_path / "front-door.toml"),
        "--user", "alice", "--token-file", str(tmp_path / "token"),
        "--server-policy", str(tmp_path / "server.toml"), "--pin-file", str(tmp_path / "pins.json"),
    ]  # fmt: skip
    assert teelab_main(argv) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == [
        f"✓ {name}" for name in FRONT_DOOR_CHECKS + SERVER_CHECKS
    ]
    assert lines[-1].startswith("verified https://127.0.0.1:")
    assert ALICE_TOKEN not in out
    # A second run: the same key, measurement and controller as pinned.
    assert teelab_main(argv) == 0
    assert "✓ front door pin: same key, measurement and controller as pinned" in capsys.readouterr().out


def _image(deployment: Deployment) -> Any:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TEELAB_DATA_DIR", str(deployment.data_dir))
        return build_front_door_image(deployment.backend)


def test_a_man_in_the_middle_relaying_the_real_evidence_fails_the_key_binding_and_never_sees_the_token(
    deployment: Deployment, tmp_path: Path
) -> None:
    mitm = ManInTheMiddle(deployment.front_door.port, tmp_path)
    server, mitm_key = mitm.start()
    try:
        address = HubAddress("127.0.0.1", server.server_address[1])
        report = run_verify(
            address, deployment.policy, PinFile(tmp_path / "pins.json"), server=alice(deployment),
            anchors=deployment.anchors,
        )  # fmt: skip
    finally:
        server.shutdown()
    problems = failed(report)
    assert "man in the middle" in problems["front door TLS key"]
    assert mitm_key.hex()[:16] in problems["front door TLS key"]
    # The evidence itself is genuine and fresh (the MITM relayed this run's nonce): only the key gives it away.
    assert set(problems) == {"front door TLS key", "server record"}
    assert "not asked" in problems["server record"]
    assert all("Authorization" not in headers for headers in mitm.headers_seen)
    assert not (tmp_path / "pins.json").exists()


def test_tampered_evidence_fails_the_evidence_check(deployment: Deployment, tmp_path: Path) -> None:
    mitm = ManInTheMiddle(deployment.front_door.port, tmp_path, mode="tamper")
    server, _ = mitm.start()
    try:
        address = HubAddress("127.0.0.1", server.server_address[1])
        report = run_verify(
            address, deployment.policy, PinFile(tmp_path / "pins.json"), anchors=deployment.anchors
        )
    finally:
        server.shutdown()
    problems = failed(report)
    assert report.first_failure is not None and report.first_failure.name == "front door evidence"
    assert "signature" in problems["front door evidence"]
    assert problems["front door policy"].startswith("not judged")


def test_replayed_evidence_fails_the_nonce_check(deployment: Deployment, tmp_path: Path) -> None:
    # Through a MITM that recorded an answer of the real front door to an earlier nonce.
    with HubChannel(deployment.address) as channel:
        old = channel.get(f"{ATTESTATION_PATH}?nonce={'00' * 32}").body
    mitm = ManInTheMiddle(deployment.front_door.port, tmp_path, mode="replay", recorded=old)
    server, _ = mitm.start()
    try:
        address = HubAddress("127.0.0.1", server.server_address[1])
        report = run_verify(
            address, deployment.policy, PinFile(tmp_path / "pins.json"), anchors=deployment.anchors
        )
    finally:
        server.shutdown()
    problems = failed(report)
    assert "replayed evidence" in problems["front door nonce"]
    assert "front door evidence" not in problems  # authentic, only stale


def test_replayed_evidence_for_the_right_key_still_fails_the_nonce_check(deployment: Deployment) -> None:
    """The front door's own key with an old nonce (what a replay would look like if TLS were not in the way)."""
    with HubChannel(deployment.address) as channel:
        answer = FrontDoorEvidence.from_reply(channel.get(f"{ATTESTATION_PATH}?nonce={'11' * 32}").body)
        key = channel.tls_spki_sha256
    result = verify_evidence(
        answer.evidence,
        collateral=answer.collateral,
        at=utcnow(),
        anchors=deployment.anchors,
        policy=deployment.policy,
    )
    lines = {line.name: line for line in binding_lines(result, key, os.urandom(32), answer)}
    assert lines["front door TLS key"].passed
    assert not lines["front door nonce"].passed
    assert "replayed evidence" in lines["front door nonce"].detail


def test_a_policy_pinning_another_measurement_fails_the_policy_check(
    deployment: Deployment, tmp_path: Path
) -> None:
    other = AppraisalPolicy(
        id="other-front-door", allow_simulation=True, sgx=SgxReference(mrenclave=("ab" * 32,))
    )
    report = run_verify(
        deployment.address, other, PinFile(tmp_path / "pins.json"), anchors=deployment.anchors
    )
    problems = failed(report)
    assert list(problems) == ["front door policy"]
    assert "policy.mrenclave" in problems["front door policy"]


def test_a_changed_key_fails_the_pin_unless_updated(deployment: Deployment, tmp_path: Path) -> None:
    pins = PinFile(tmp_path / "pins.json")
    pins.save(
        deployment.address.origin,
        type(pins.load(deployment.address.origin))(front_door=Pin("ee" * 32, None)),
    )
    report = run_verify(deployment.address, deployment.policy, pins, anchors=deployment.anchors)
    assert list(failed(report)) == ["front door pin"]
    assert "--update-pins" in failed(report)["front door pin"]
    assert (pins.load(deployment.address.origin).front_door or Pin("", None)).tls_spki_sha256 == "ee" * 32
    updated = run_verify(
        deployment.address, deployment.policy, pins, update_pins=True, anchors=deployment.anchors
    )
    assert updated.ok
    pinned = pins.load(deployment.address.origin).front_door
    assert pinned is not None and pinned.tls_spki_sha256 == deployment.front_door.tls_spki_sha256.hex()


def test_the_server_binding_is_the_one_the_server_boot_computes() -> None:
    key, spki, nonce = os.urandom(32), os.urandom(91), os.urandom(32)
    spki_hash = hashlib.sha256(spki).digest()
    assert server_report_data("hello", key, spki_hash, nonce, "alice/") == protocol.hello_report_data(
        key, spki, nonce, "alice/"
    )
    assert server_report_data("challenge", key, spki_hash, nonce, "alice/") == protocol.challenge_report_data(
        key, spki, nonce, "alice/"
    )


def test_the_hubs_record_of_another_users_server_fails_the_server_binding(
    deployment: Deployment, tmp_path: Path
) -> None:
    genuine = deployment.hub.records["alice"]
    deployment.hub.records["alice"] = server_record(deployment.runtime, user="alice", bound_to="bob/")
    try:
        report = run_verify(
            deployment.address, deployment.policy, PinFile(tmp_path / "p.json"), server=alice(deployment),
            anchors=deployment.anchors,
        )  # fmt: skip
    finally:
        deployment.hub.records["alice"] = genuine
    problems = failed(report)
    assert list(problems) == ["server binding"]  # the hub said "affirming"; that is not what counts


def test_a_server_launched_for_another_controller_fails_the_controller_check(
    deployment: Deployment, tmp_path: Path
) -> None:
    genuine = deployment.hub.records["alice"]
    record = server_record(deployment.runtime, user="alice", bound_to="alice/")
    record["servers"][0]["controller"] = hashlib.sha256(b"someone else's G").hexdigest()
    deployment.hub.records["alice"] = record
    try:
        report = run_verify(
            deployment.address, deployment.policy, PinFile(tmp_path / "p.json"), server=alice(deployment),
            anchors=deployment.anchors,
        )  # fmt: skip
    finally:
        deployment.hub.records["alice"] = genuine
    problems = failed(report)
    assert list(problems) == ["server controller"]
    assert "CONFIGID" in problems["server controller"]


def test_the_users_own_server_policy_judges_the_server_not_the_hubs_verdict(
    deployment: Deployment, tmp_path: Path
) -> None:
    mine = AppraisalPolicy(id="mine", allow_simulation=True, sgx=SgxReference(mrenclave=("cd" * 32,)))
    report = run_verify(
        deployment.address, deployment.policy, PinFile(tmp_path / "p.json"),
        server=ServerRequest("alice", ALICE_TOKEN, policy=mine), anchors=deployment.anchors,
    )  # fmt: skip
    assert list(failed(report)) == ["server policy"]


def test_a_token_of_another_user_is_refused_by_the_hub(deployment: Deployment, tmp_path: Path) -> None:
    report = run_verify(
        deployment.address, deployment.policy, PinFile(tmp_path / "p.json"),
        server=ServerRequest("alice", "bobs-token"), anchors=deployment.anchors,
    )  # fmt: skip
    problems = failed(report)
    assert list(problems) == ["server record"]
    assert "HTTP 403" in problems["server record"]


# -- teelab hub connect -------------------------------------------------------------------------------------


def _get_through(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", path)
    response = connection.getresponse()
    result = response.status, response.read()
    connection.close()
    return result


class ProxyThread:
    """A PinnedProxy serving on its own event loop in a thread (the test is the browser)."""

    def __init__(self, proxy: PinnedProxy, *, check_first: bool) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

        async def start() -> asyncio.Server:
            if check_first:
                return await proxy.start(0)
            return await asyncio.start_server(proxy.handle, "127.0.0.1", 0)

        self.server = asyncio.run_coroutine_threadsafe(start(), self.loop).result(60)
        self.port = int(self.server.sockets[0].getsockname()[1])

    def stop(self) -> None:
        async def stop() -> None:
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)


def test_connect_reaches_the_hub_through_the_verified_key(deployment: Deployment) -> None:
    proxy = PinnedProxy(deployment.address, deployment.front_door.tls_spki_sha256, log=lambda _: None)
    running = ProxyThread(proxy, check_first=True)
    try:
        status, body = _get_through(running.port, "/hub/home")
    finally:
        running.stop()
    assert (status, json.loads(body)) == (200, {"hub": True})
    assert deployment.hub.seen_paths[-1] == "/hub/home"


def test_connect_refuses_an_upstream_with_another_key(deployment: Deployment, tmp_path: Path) -> None:
    mitm = ManInTheMiddle(deployment.front_door.port, tmp_path)
    server, _ = mitm.start()
    address = HubAddress("127.0.0.1", server.server_address[1])
    messages: list[str] = []
    proxy = PinnedProxy(address, deployment.front_door.tls_spki_sha256, log=messages.append)
    try:
        with pytest.raises(KeyMismatch, match="refusing to connect"):
            asyncio.run(proxy.start(0))
        running = ProxyThread(proxy, check_first=False)  # a key swapped after the start: per connection
        try:
            status, body = _get_through(running.port, "/hub/home")
        finally:
            running.stop()
    finally:
        server.shutdown()
    assert status == 502 and b"refusing to connect" in body
    assert mitm.headers_seen == []  # not one byte of the browser's reached the other key
    assert proxy.refused == 1 and "not the verified" in messages[0]


def test_connect_cli_exits_non_zero_on_a_changed_key(
    deployment: Deployment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pins = PinFile(tmp_path / "pins.json")
    pins.save(deployment.address.origin, type(pins.load("x"))(front_door=Pin("ee" * 32, None)))
    argv = [
        "hub",
        "connect",
        deployment.address.origin,
        "--pin-file",
        str(tmp_path / "pins.json"),
        "--port",
        "0",
    ]
    assert teelab_main(argv) == 1
    assert "refusing to connect" in capsys.readouterr().err


def test_the_cli_says_what_failed_and_exits_1(
    deployment: Deployment,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("TEELAB_DATA_DIR", str(deployment.data_dir))
    policy = tmp_path / "other.toml"
    policy.write_text(f'id = "other"\nallow_simulation = true\n[sgx]\nmrenclave = ["{"ab" * 32}"]\n')
    argv = [
        "hub",
        "verify",
        deployment.address.origin,
        "--policy",
        str(policy),
        "--pin-file",
        str(tmp_path / "p"),
    ]
    assert teelab_main(argv) == 1
    captured = capsys.readouterr()
    assert "✗ front door policy: policy.mrenclave" in captured.out
    assert captured.err.startswith("teelab hub verify: NOT VERIFIED — front door policy: policy.mrenclave")
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize(
    "body",
    [b"", b"[]", b"{}", b'{"servers": []}', b'{"servers": [{"server_name": ""}]}', b"\xff", b"[" * 100000,
     b'{"servers": [{"server_name": "", "evidence": "AA==", "nonce": "zz", "tls_spki_sha256": "00"}]}',
     b'{"servers": [{"server_name": "", "server": "bob/", "evidence": "AA=="}]}'],
)  # fmt: skip
def test_a_hostile_server_record_raises_only_teelabs_error(body: bytes) -> None:
    from teelab.extension.hub.front_door_protocol import FrontDoorError
    from teelab.extension.hub.verify_server import ServerRecord

    with pytest.raises(FrontDoorError):
        ServerRecord.from_reply(body, "alice", "")


def test_a_pin_file_others_can_write_or_not_ours_is_refused(tmp_path: Path) -> None:
    from teelab.errors import ConfigError

    path = tmp_path / "pins.json"
    pins = PinFile(path)
    pins.save("https://hub:443", type(pins.load("x"))(front_door=Pin("aa" * 32, None)))
    os.chmod(path, 0o662)
    with pytest.raises(ConfigError, match="writable by other users"):
        pins.load("https://hub:443")
    for text in (
        "not json",
        "[]",
        '{"version": 2, "hubs": {}}',
        '{"version": 1, "hubs": {"https://hub:443": 5}}',
    ):
        path.unlink()
        path.write_text(text)
        os.chmod(path, 0o600)
        with pytest.raises(ConfigError):
            pins.load("https://hub:443")
