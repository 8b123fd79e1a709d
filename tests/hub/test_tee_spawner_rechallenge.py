"""poll()'s re-challenge goes over TLS with the server's attested in-TEE key ``T`` pinned.

A real server boot in the simulated TEE (the test holds its hello, as the spawner would); the spawner's own
``challenge`` asks it directly, then through a relay that terminates TLS with a key of its own and forwards the
genuine answer (fresh evidence for the hub's nonce, over the right keys): only the channel's key gives it away.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from teelab.extension.hub import spawner_protocol as protocol
from teelab.extension.hub.demo import free_port
from teelab.extension.hub.spawner_attest import ChallengeOutcome, challenge
from teelab.extension.hub.spawner_protocol import ServerBootRequest, ServerHello
from teelab.gateway.identity import GatewayIdentity
from teelab.gateway.policy import load_policy
from teelab.gateway.session import appraiser
from teelab.protocols.session import recv_frame
from tests.hub.test_tee_kube_spawner_boot import Tee, tee

pytestmark = pytest.mark.slow
__all__ = ["tee"]  # the module's built server image (a fixture)

SECONDS = 60


@pytest.fixture
def attested(tee: Tee) -> Iterator[tuple[ServerBootRequest, ServerHello, GatewayIdentity]]:
    """A boot that said hello (and waits for its bundle): its re-challenge listener answers meanwhile."""
    spawner = GatewayIdentity.generate()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        request = ServerBootRequest(
            os.urandom(32),
            ("127.0.0.1", listener.getsockname()[1]),
            spawner.public,
            "alice/",
            ("127.0.0.1", free_port()),
        )
        process = tee.backend.launch(
            tee.image, inputs={protocol.REQUEST_ENV: request.to_env()}, controller=spawner.controller
        )
        try:
            listener.settimeout(SECONDS)
            channel, _ = listener.accept()
            with channel:
                channel.settimeout(SECONDS)
                hello = ServerHello.from_json(recv_frame(channel))
                yield request, hello, spawner
        finally:
            process.kill()
            process.wait()
            process.cleanup()


def _ask(tee: Tee, host: str, port: int, hello: ServerHello, spawner: GatewayIdentity) -> ChallengeOutcome:
    policy = load_policy(tee.root / "policies" / "hub-server.toml")
    return asyncio.run(
        challenge(
            host,
            port,
            server="alice/",
            enclave_key=hello.enclave_key,
            tls_spki=hello.tls_spki,
            appraise=appraiser(tee.backend, policy, controller=spawner.controller),
            timeout=SECONDS,
        )
    )


def _relay_tls(tmp_path: Path) -> ssl.SSLContext:
    """A TLS server context with a key of the relay's own."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "teelab hub server")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pem = tmp_path / "relay.pem"
    pem.write_bytes(
        certificate.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem)
    return context


def test_the_rechallenge_is_answered_over_tls_with_the_attested_key(
    tee: Tee, attested: tuple[ServerBootRequest, ServerHello, GatewayIdentity]
) -> None:
    request, hello, spawner = attested
    outcome = _ask(tee, *request.attest_listen, hello, spawner)
    assert outcome.ok and outcome.status == "attested", outcome.reason


def test_a_relay_terminating_tls_with_its_own_key_is_caught_though_it_forwards_the_genuine_answer(
    tee: Tee, attested: tuple[ServerBootRequest, ServerHello, GatewayIdentity], tmp_path: Path
) -> None:
    request, hello, spawner = attested
    genuine_host, genuine_port = request.attest_listen
    upstream = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    upstream.check_hostname, upstream.verify_mode = False, ssl.CERT_NONE
    relayed: list[bytes] = []

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        up_reader, up_writer = await asyncio.open_connection(genuine_host, genuine_port, ssl=upstream)
        up_writer.write(head)
        await up_writer.drain()
        answer = await up_reader.read()
        up_writer.close()
        relayed.append(answer)
        writer.write(answer)
        await writer.drain()
        writer.close()

    async def run() -> ChallengeOutcome:
        server = await asyncio.start_server(relay, "127.0.0.1", 0, ssl=_relay_tls(tmp_path))
        port = server.sockets[0].getsockname()[1]
        try:
            policy = load_policy(tee.root / "policies" / "hub-server.toml")
            return await challenge(
                "127.0.0.1",
                port,
                server="alice/",
                enclave_key=hello.enclave_key,
                tls_spki=hello.tls_spki,
                appraise=appraiser(tee.backend, policy, controller=spawner.controller),
                timeout=SECONDS,
            )
        finally:
            server.close()

    outcome = asyncio.run(run())
    assert relayed and b" 200 " in relayed[0].split(b"\r\n", 1)[0]  # the genuine TEE's answer went through
    assert outcome.answer is not None and outcome.answer.enclave_key == hello.enclave_key
    assert not outcome.ok and outcome.status == "key-changed"
    assert outcome.reason is not None and "a relay answers" in outcome.reason


def test_a_plain_http_listener_is_no_answer(
    tee: Tee, attested: tuple[ServerBootRequest, ServerHello, GatewayIdentity]
) -> None:
    """What answered before (plain HTTP) does not any more: the hub asks for TLS only."""
    _request, hello, _spawner = attested
    with socket.create_server(("127.0.0.1", 0)) as plain:
        port = plain.getsockname()[1]

        async def run() -> ChallengeOutcome:
            loop = asyncio.get_running_loop()

            def answer_plainly() -> None:
                connection, _ = plain.accept()
                with connection:
                    connection.recv(4096)
                    connection.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}")

            served = loop.run_in_executor(None, answer_plainly)
            outcome = await challenge(
                "127.0.0.1",
                port,
                server="alice/",
                enclave_key=hello.enclave_key,
                tls_spki=hello.tls_spki,
                appraise=lambda evidence, report_data: pytest.fail("nothing to appraise"),
                timeout=SECONDS,
            )
            await served
            return outcome

        outcome = asyncio.run(run())
    assert not outcome.ok and outcome.status == "unreachable"
