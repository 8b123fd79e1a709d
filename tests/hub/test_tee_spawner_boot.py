"""The single-user server's boot in a real simulated TEE, without a hub: what it refuses, and its re-challenges.

The test plays the host (it launches the measured teelab-hub-server image through the sim backend, bound to a
controller) and, where it holds ``G_s``, the spawner.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_der_public_key

from teelab.enclave_runtime.backend import EnclaveProcess, Evidence
from teelab.enclave_runtime.image import EnclaveImage
from teelab.enclave_runtime.sim.backend import SimBackend
from teelab.extension.hub import spawner_protocol as protocol
from teelab.extension.hub.demo import free_port
from teelab.extension.hub.spawner_image import SERVER_IMAGE, image_folder
from teelab.extension.hub.spawner_protocol import (
    ChallengeAnswer,
    ServerBootRequest,
    ServerBundle,
    ServerHello,
    ServerSecrets,
)
from teelab.gateway.identity import GatewayIdentity
from teelab.gateway.policy import load_policy
from teelab.gateway.session import backend_anchors
from teelab.gateway.verifier import verify_evidence
from teelab.protocols.session import SealedBundle, recv_frame, send_frame
from teelab.timeutil import utcnow

pytestmark = pytest.mark.slow

SECONDS = 60


@dataclass
class Tee:
    root: Path
    backend: SimBackend
    image: EnclaveImage


@pytest.fixture(scope="module")
def tee(tmp_path_factory: pytest.TempPathFactory) -> Tee:
    root = tmp_path_factory.mktemp("server-tee")
    built = subprocess.run(
        [sys.executable, "-m", "teelab.extension.hub.spawner_image", str(root)],
        env={**os.environ, "TEELAB_DATA_DIR": str(root / "data")},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr
    backend = SimBackend(root / "data" / "sim-platform")
    return Tee(root, backend, backend.load_image(SERVER_IMAGE, image_folder(root)))


@dataclass
class Boot:
    process: EnclaveProcess
    request: ServerBootRequest
    listener: socket.socket

    def hello(self) -> tuple[socket.socket, ServerHello]:
        self.listener.settimeout(SECONDS)
        channel, _ = self.listener.accept()
        channel.settimeout(SECONDS)
        return channel, ServerHello.from_json(recv_frame(channel))

    def exit_status(self) -> tuple[int, str]:
        status = self.process.wait(timeout=SECONDS)
        assert self.process.popen.stderr is not None
        return status, self.process.popen.stderr.read().decode()


@pytest.fixture
def launch(tee: Tee) -> Iterator[object]:
    started: list[Boot] = []

    def start(
        launched_for: GatewayIdentity, named: GatewayIdentity | None = None, server: str = "alice/"
    ) -> Boot:
        listener = socket.create_server(("127.0.0.1", 0))
        request = ServerBootRequest(
            os.urandom(32),
            ("127.0.0.1", listener.getsockname()[1]),
            (named or launched_for).public,
            server,
            ("127.0.0.1", free_port()),
        )
        process = tee.backend.launch(
            tee.image,
            inputs={protocol.REQUEST_ENV: request.to_env()},
            controller=launched_for.controller,
            stderr=subprocess.PIPE,
        )
        started.append(Boot(process, request, listener))
        return started[-1]

    yield start
    for boot in started:
        boot.process.kill()
        boot.process.wait()
        boot.process.cleanup()
        boot.listener.close()


def _bundle(server: str = "alice/") -> ServerBundle:
    return ServerBundle(
        server=server,
        env={"JUPYTERHUB_USER": "alice"},
        argv=(),
        cwd="/",
        confirm_key=os.urandom(32),
        secrets=ServerSecrets(api_token="not-a-real-token"),
    )


def _send(
    channel: socket.socket, boot: Boot, hello: ServerHello, signer: GatewayIdentity, bundle: ServerBundle
) -> None:
    sealed = protocol.seal(hello.enclave_key, boot.request.nonce, bundle)
    signature = protocol.sign(signer.secret, sealed, boot.request.nonce, hello.enclave_key)
    send_frame(channel, SealedBundle(sealed, signature))


def test_the_boot_refuses_a_bundle_from_another_controller_and_exits(launch: object) -> None:
    spawner, other = GatewayIdentity.generate(), GatewayIdentity.generate()
    boot = launch(spawner)  # type: ignore[operator]
    channel, hello = boot.hello()
    with channel:
        _send(channel, boot, hello, other, _bundle())
        status, stderr = boot.exit_status()
    assert status == 1
    assert "not authenticated by this server's controller" in stderr


def test_the_boot_refuses_a_genuine_bundle_made_for_another_server(launch: object) -> None:
    spawner = GatewayIdentity.generate()
    boot = launch(spawner)  # type: ignore[operator]
    channel, hello = boot.hello()
    with channel:
        _send(channel, boot, hello, spawner, _bundle(server="mallory/"))
        status, stderr = boot.exit_status()
    assert status == 1 and "made for another server" in stderr


def test_a_boot_request_naming_another_controller_than_the_launch_is_refused_before_hello(
    launch: object,
) -> None:
    spawner, host = GatewayIdentity.generate(), GatewayIdentity.generate()
    boot = launch(spawner, named=host)  # type: ignore[operator]
    status, stderr = boot.exit_status()
    assert status == 1 and "names another controller" in stderr
    boot.listener.settimeout(0.1)
    with pytest.raises(TimeoutError):
        boot.listener.accept()


def test_rechallenges_bind_the_same_keys_and_are_never_a_hello(tee: Tee, launch: object) -> None:
    spawner = GatewayIdentity.generate()
    boot = launch(spawner)  # type: ignore[operator]
    channel, hello = boot.hello()
    with channel:
        nonce = os.urandom(32)
        host, port = boot.request.attest_listen
        # Over TLS with the attested key T itself (the spawner pins it: spawner_attest.challenge).
        unverified = ssl.create_default_context()
        unverified.check_hostname, unverified.verify_mode = False, ssl.CERT_NONE
        connection = http.client.HTTPSConnection(host, port, timeout=SECONDS, context=unverified)
        try:
            connection.request("GET", f"/teelab/hub-server/attest?nonce={nonce.hex()}")
            assert isinstance(connection.sock, ssl.SSLSocket)
            peer = connection.sock.getpeercert(binary_form=True)
            challenge = ChallengeAnswer.from_json(json.loads(connection.getresponse().read()))
        finally:
            connection.close()
    assert peer is not None
    presented = x509.load_der_x509_certificate(peer).public_key()
    assert presented.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) == hello.tls_spki
    assert (challenge.enclave_key, challenge.tls_spki) == (hello.enclave_key, hello.tls_spki)
    evidence = Evidence.from_json(challenge.evidence)
    policy = load_policy(tee.root / "policies" / "hub-server.toml")

    def verify(report_data: bytes) -> bool:
        return verify_evidence(
            evidence.blob,
            collateral=tee.backend.collateral_for(evidence.blob, utcnow()),
            at=utcnow(),
            anchors=backend_anchors(tee.backend),
            policy=policy,
            expected_report_data=report_data,
            expected_controller=spawner.controller,
        ).ok

    server = boot.request.server
    assert verify(protocol.challenge_report_data(hello.enclave_key, hello.tls_spki, nonce, server))
    # The answer is no hello for that nonce: a re-challenge cannot start another spawn's handshake.
    assert not verify(protocol.hello_report_data(hello.enclave_key, hello.tls_spki, nonce, server))
    tls_key = load_der_public_key(hello.tls_spki)
    assert isinstance(tls_key, ec.EllipticCurvePublicKey) and tls_key.curve.name == "secp256r1"
