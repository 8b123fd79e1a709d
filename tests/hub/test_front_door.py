"""The attested front door itself (sim TEE, real TLS on loopback): its attestation endpoint, where its key
lives, the tunnel to the hub's proxy, and what the host may ask of it."""

from __future__ import annotations

import hashlib
import http.client
import http.server
import json
import os
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_private_key

from teelab.enclave_runtime.backends import get_backend
from teelab.enclave_runtime.sim.backend import SimBackend
from teelab.errors import EnclaveError
from teelab.extension.hub.front_door_launch import RunningFrontDoor, build_front_door_image, launch_front_door
from teelab.extension.hub.front_door_protocol import (
    ATTESTATION_PATH,
    FrontDoorEvidence,
    front_door_report_data,
    spki_sha256,
)
from teelab.gateway.policy import AppraisalPolicy
from teelab.gateway.verifier import default_anchors, verify_evidence
from teelab.timeutil import utcnow

CONTROLLER = hashlib.sha256(b"the operator's front-door controller key").digest()


@dataclass
class Door:
    running: RunningFrontDoor
    backend: SimBackend
    upstream_seen: list[dict[str, str]]
    data: Path
    upstream_port: int

    def connect(self) -> http.client.HTTPSConnection:
        connection = http.client.HTTPSConnection(
            "127.0.0.1", self.running.port, context=ssl._create_unverified_context(), timeout=30
        )
        connection.connect()
        return connection


@pytest.fixture(scope="module")
def door(tmp_path_factory: pytest.TempPathFactory, shared_cache_dir: Path) -> Iterator[Door]:
    data = tmp_path_factory.mktemp("front-door-data")
    seen: list[dict[str, str]] = []

    class Upstream(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            seen.append({"path": self.path, **dict(self.headers)})
            body = b"proxied"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TEELAB_DATA_DIR", str(data))
        patch.setenv("TEELAB_CACHE_DIR", str(shared_cache_dir))
        backend = get_backend("sim")
        assert isinstance(backend, SimBackend)
        image = build_front_door_image(backend)
        running = launch_front_door(
            backend, image, upstream=("127.0.0.1", upstream.server_address[1]), controller=CONTROLLER
        )
        try:
            yield Door(running, backend, seen, data, upstream.server_address[1])
        finally:
            running.stop()
            upstream.shutdown()


def _attest(connection: http.client.HTTPSConnection, nonce: bytes) -> tuple[int, bytes]:
    connection.request("GET", f"{ATTESTATION_PATH}?nonce={nonce.hex()}")
    response = connection.getresponse()
    return response.status, response.read()


def test_the_evidence_binds_the_key_it_serves_tls_with_and_names_its_controller(door: Door) -> None:
    connection = door.connect()
    assert isinstance(connection.sock, ssl.SSLSocket)
    served = spki_sha256(connection.sock.getpeercert(binary_form=True) or b"")
    nonce = os.urandom(32)
    status, body = _attest(connection, nonce)
    connection.close()
    assert status == 200
    answer = FrontDoorEvidence.from_reply(body)
    assert served == answer.tls_spki_sha256 == door.running.tls_spki_sha256
    result = verify_evidence(
        answer.evidence,
        collateral=answer.collateral,
        at=utcnow(),
        anchors=default_anchors(door.backend.root_pins()),
        policy=AppraisalPolicy(allow_simulation=True),
        expected_report_data=front_door_report_data(served, nonce),
        expected_controller=CONTROLLER,
    )
    assert result.ok, result.error
    assert {c.name: c.passed for c in result.checks}["controller"]


def _public_key_hashes(data: bytes) -> set[bytes]:
    """SPKI-SHA256 of every PEM private key in ``data``."""
    found = set()
    for block in re.findall(
        rb"-----BEGIN [A-Z ]*PRIVATE KEY-----.+?-----END [A-Z ]*PRIVATE KEY-----", data, re.S
    ):
        try:
            key = load_pem_private_key(block, password=None)
        except (ValueError, TypeError):
            continue
        spki = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        found.add(hashlib.sha256(spki).digest())
    return found


def test_its_private_key_is_in_no_file_or_environment_the_host_sees(door: Door) -> None:
    process = door.running.process
    places = [door.data, *([process.scratch] if process.scratch else [])]
    keys_on_disk: set[bytes] = set()
    for folder in places:
        for path in folder.rglob("*"):
            if path.is_file():
                keys_on_disk |= _public_key_hashes(path.read_bytes())
    assert keys_on_disk, "the scan reads keys (the image's signing key and the sim platform's are there)"
    assert door.running.tls_spki_sha256 not in keys_on_disk
    assert b"PRIVATE KEY" not in Path(f"/proc/{process.pid}/environ").read_bytes()
    assert b"PRIVATE KEY" not in Path(f"/proc/{process.pid}/cmdline").read_bytes()


def test_a_malformed_nonce_is_refused_and_the_connection_stays_usable(door: Door) -> None:
    connection = door.connect()
    connection.request("GET", f"{ATTESTATION_PATH}?nonce=abcd")
    response = connection.getresponse()
    assert response.status == 400 and b"32 bytes" in response.read()
    status, _ = _attest(connection, os.urandom(32))
    connection.close()
    assert status == 200


def test_after_the_attestation_the_connection_is_a_tunnel_to_the_proxy(door: Door) -> None:
    connection = door.connect()
    assert _attest(connection, os.urandom(32))[0] == 200
    connection.request("GET", "/hub/api?x=1", headers={"X-Forwarded-Proto": "http"})  # the client's claim
    response = connection.getresponse()
    assert (response.status, response.read()) == (200, b"proxied")
    connection.request("GET", "/user/alice/")  # keep-alive through the tunnel
    assert connection.getresponse().read() == b"proxied"
    connection.close()
    assert [s["path"] for s in door.upstream_seen[-2:]] == ["/hub/api?x=1", "/user/alice/"]
    assert door.upstream_seen[-2]["X-Forwarded-Proto"] == "https"  # the only one: the client's was dropped


def test_a_post_to_the_attestation_endpoint_is_refused(door: Door) -> None:
    with socket.create_connection(("127.0.0.1", door.running.port)) as raw:
        context = ssl._create_unverified_context()
        with context.wrap_socket(raw) as tls:
            tls.sendall(
                f"POST {ATTESTATION_PATH}?nonce={'00' * 32} HTTP/1.1\r\nContent-Length: 0\r\n\r\n".encode()
            )
            answer = tls.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400") and b"GET only" in answer


def test_the_front_door_refuses_an_upstream_off_loopback(door: Door) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TEELAB_DATA_DIR", str(door.data))
        image = build_front_door_image(door.backend)
        with pytest.raises(EnclaveError, match="did not start"):
            launch_front_door(door.backend, image, upstream=("10.1.2.3", 8000))


def test_the_answer_parser_only_raises_its_own_error() -> None:
    from teelab.extension.hub.front_door_protocol import FrontDoorError

    for body in (b"", b"[]", b'{"version": 1}', b'{"version": 1, "evidence": "!!"}', b"{" * 10000, b"\xff"):
        with pytest.raises(FrontDoorError):
            FrontDoorEvidence.from_reply(body)
    assert json.loads(json.dumps(FrontDoorEvidence(b"e", "k", b"n", b"s").to_json()))["collateral"] is None


def test_front_door_measure_writes_the_policy_that_accepts_the_running_door(
    door: Door, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from teelab.cli import main as teelab_main
    from teelab.gateway.policy import load_policy

    monkeypatch.setenv("TEELAB_DATA_DIR", str(door.data))
    assert teelab_main(["hub", "front-door-measure", "--policy-out", str(tmp_path / "door.toml")]) == 0
    assert "mrenclave" in capsys.readouterr().out
    connection = door.connect()
    nonce = os.urandom(32)
    answer = FrontDoorEvidence.from_reply(_attest(connection, nonce)[1])
    connection.close()
    result = verify_evidence(
        answer.evidence,
        collateral=answer.collateral,
        at=utcnow(),
        policy=load_policy(tmp_path / "door.toml"),
        expected_report_data=front_door_report_data(door.running.tls_spki_sha256, nonce),
    )
    assert result.ok and result.verdict == "warning", result.error  # accepted, and marked simulated


def test_the_front_door_command_serves_until_stopped_and_takes_its_tee_with_it(door: Door) -> None:
    import subprocess
    import sys

    teelab = Path(sys.executable).with_name("teelab")
    argv = [str(teelab), "hub", "front-door", "--upstream", f"127.0.0.1:{door.upstream_port}"]
    command = subprocess.Popen(
        [*argv, "--listen", "127.0.0.1:0"],
        env={**os.environ, "TEELAB_DATA_DIR": str(door.data)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert command.stdout is not None
        first, second = command.stdout.readline(), command.stdout.readline()
        port = int(first.split("https://127.0.0.1:")[1].split("/")[0])
        announced = bytes.fromhex(second.split("SPKI-SHA256 ")[1].split()[0])
        connection = http.client.HTTPSConnection(
            "127.0.0.1", port, context=ssl._create_unverified_context(), timeout=30
        )
        assert _attest(connection, os.urandom(32))[0] == 200
        assert isinstance(connection.sock, ssl.SSLSocket)
        assert spki_sha256(connection.sock.getpeercert(binary_form=True) or b"") == announced
        connection.close()
    finally:
        command.terminate()
        assert command.wait(30) == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
