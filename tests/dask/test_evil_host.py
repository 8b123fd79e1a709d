"""Evil-host cases for attested Dask clusters: nobody but an attested node of this cluster, in its role, joins.

Where these tests stand: the "host" is this test process doing what a TEE host can — start processes from the
genuine image with inputs of its choosing, start plain Dask workers, connect to any port, replay what it saw
on the wire, and seal bundles to public keys. The nodes are real sim-backend processes whose evidence is a
simulated SGX quote with the launch-time controller in CONFIGID; hardware isolation itself is not tested.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from distributed import Security, Worker

from teelab.dask.controller import ClusterController, stop_process
from teelab.enclave_runtime.backend import EnclaveProcess
from teelab.gateway.identity import GatewayIdentity
from teelab.gateway.result import AttestationResult
from teelab.gateway.session import SessionRefused, answer_channel, attest_hello_and_seal
from teelab.protocols.session import (
    BOOT_REQUEST_ENV,
    ENTRY_DASK_NODE,
    BootRequest,
    DaskNodeBundle,
    HandshakeError,
    Hello,
    SealedBundle,
    encode_frame,
    read_frame,
    seal_bundle,
)
from tests.dask.conftest import DaskEnv

TIMEOUT = 90.0


def registered(cluster: Any) -> list[str]:
    with cluster.get_client() as client:
        return sorted(str(info["name"]) for info in client.scheduler_info()["workers"].values())


def explained(error: BaseException | None) -> str:
    """The messages of an error and its causes (distributed wraps the scheduler's answer)."""
    texts = []
    while error is not None:
        texts.append(str(error))
        error = error.__cause__ or error.__context__
    return " / ".join(texts)


async def join_as_worker(address: str, security: Security | None, name: str) -> BaseException | None:
    """Start a plain Dask worker in this (host) process; the error that stopped it joining, if any."""
    worker = Worker(address, security=security, nthreads=1, name=name, dashboard=False, death_timeout=8)
    try:
        await worker
    except BaseException as error:  # whatever distributed raises: it did not join
        return error
    finally:
        await worker.close()
    return None


def test_a_host_started_worker_never_registers(cluster: Any, dask_env: DaskEnv) -> None:
    address = cluster.scheduler_address
    # Its own certificate (self-signed, as Security.temporary() makes): the TLS handshake fails.
    assert asyncio.run(join_as_worker(address, Security.temporary(), "own-cert")) is not None
    # A plaintext peer on the TLS port.
    plain = "tcp://" + address.removeprefix("tls://")
    assert asyncio.run(join_as_worker(plain, None, "plaintext")) is not None
    assert registered(cluster) == ["0", "1"]


def test_a_client_certificate_cannot_register_as_a_worker(cluster: Any, dask_env: DaskEnv) -> None:
    """The controller's own client certificate is the cluster CA's: TLS admits it, the role check does not."""
    for name in ("posing", "0"):
        error = asyncio.run(join_as_worker(cluster.scheduler_address, cluster.security, name))
        assert error is not None and "only a worker certificate" in explained(error)
    assert registered(cluster) == ["0", "1"]


async def _never(hello: Hello, result: AttestationResult) -> DaskNodeBundle:
    raise AssertionError("a bundle was made for refused evidence")


async def host_launch(
    controller: ClusterController,
    *,
    request_key: bytes,
    platform_controller: bytes,
    converse: Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[None]],
) -> tuple[EnclaveProcess, str]:
    """The host launches the genuine image itself: the boot request names ``request_key`` and the platform
    binds ``platform_controller``; ``converse`` holds the answer channel (with the request's nonce)."""
    nonce = secrets.token_bytes(32)
    loop = asyncio.get_running_loop()
    async with answer_channel("127.0.0.1") as answer:
        request = BootRequest(
            nonce, answer.host, answer.port, controller_key=request_key, entry=ENTRY_DASK_NODE
        )
        process = await loop.run_in_executor(
            None,
            lambda: controller.backend.launch(
                controller.image,
                inputs={BOOT_REQUEST_ENV: request.to_env()},
                controller=platform_controller,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            ),
        )
        try:
            channel = await answer.accept(timeout=TIMEOUT, gone=lambda: process.poll() is not None)
            if channel is not None:
                await converse(*channel, nonce)
            await loop.run_in_executor(None, process.wait, TIMEOUT)
        finally:
            await loop.run_in_executor(None, stop_process, process, 0.0)
    assert process.popen.stderr is not None
    return process, process.popen.stderr.read().decode()


def test_evidence_naming_another_controller_is_refused(cluster: Any, dask_env: DaskEnv) -> None:
    """A host runs the genuine image under its own controller and points it at our answer channel and nonce
    (the attestation oracle of ARCHITECTURE §3): the evidence is genuine, the controller check fails."""
    controller, host = cluster.controller, GatewayIdentity.generate()

    async def scenario() -> None:
        nonce = secrets.token_bytes(32)
        async with answer_channel("127.0.0.1") as ours:

            async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: bytes) -> None:
                del _
                # The host's boot answers the host; the host relays its hello to our controller's channel.
                hello = await read_frame(reader)
                _, relay_writer = await asyncio.open_connection(ours.host, ours.port)
                relay_writer.write(encode_frame(Hello.from_json(hello)))
                await relay_writer.drain()
                channel = await ours.accept(timeout=TIMEOUT, gone=lambda: False)
                assert channel is not None
                with pytest.raises(SessionRefused) as refused:
                    await attest_hello_and_seal(
                        channel,
                        nonce=nonce,
                        identity=controller.identity,
                        appraise=controller.appraise,
                        make_bundle=_never,
                        timeout=TIMEOUT,
                        tls_key=True,
                    )
                # The report data cannot match either (the boot bound the host's nonce): both checks fail.
                failed = {check.name for check in refused.value.result.failed_checks}  # type: ignore[union-attr]
                assert "controller" in failed
                relay_writer.close()
                writer.close()

            await host_launch(
                controller, request_key=host.public, platform_controller=host.controller, converse=forward
            )

    asyncio.run(scenario())


def test_replayed_evidence_is_refused(cluster: Any, dask_env: DaskEnv) -> None:
    """A genuine hello of a node launched for this controller, replayed into a later session: refused."""
    controller = cluster.controller
    captured: list[dict[str, object]] = []

    async def scenario() -> None:
        async def capture(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: bytes) -> None:
            captured.append(await read_frame(reader))
            writer.close()

        await host_launch(
            controller,
            request_key=controller.identity.public,
            platform_controller=controller.identity.controller,
            converse=capture,
        )
        async with answer_channel("127.0.0.1") as later:
            _, replay = await asyncio.open_connection(later.host, later.port)
            replay.write(encode_frame(Hello.from_json(captured[0])))
            await replay.drain()
            channel = await later.accept(timeout=TIMEOUT, gone=lambda: False)
            assert channel is not None
            with pytest.raises(SessionRefused) as refused:
                await attest_hello_and_seal(
                    channel,
                    nonce=secrets.token_bytes(32),
                    identity=controller.identity,
                    appraise=controller.appraise,
                    make_bundle=_never,
                    timeout=TIMEOUT,
                    tls_key=True,
                )
            assert refused.value.check == "policy.expected_report_data"
            replay.close()

    asyncio.run(scenario())
    assert captured


def test_a_bundle_not_authenticated_by_the_controller_is_refused(cluster: Any, dask_env: DaskEnv) -> None:
    """A node launched for our controller takes no bundle from anyone else: a host that saw its hello seals
    a bundle to its E.pub (public) and signs it with its own key — the node exits without starting Dask."""
    controller, host = cluster.controller, GatewayIdentity.generate()
    replies: list[bytes] = []

    async def scenario() -> str:
        async def forge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, nonce: bytes) -> None:
            hello = Hello.from_json(await read_frame(reader))
            bundle = DaskNodeBundle(
                cluster_id="evil",
                role="worker",
                name="0",
                key=bytes(32),
                certificate=controller.ca.certificate_pem,
                ca_certificate=controller.ca.certificate_pem,
                address=cluster.scheduler_address,
            )
            sealed = seal_bundle(hello.enclave_key, nonce, bundle)
            writer.write(
                encode_frame(SealedBundle(sealed, host.sign_bundle(sealed, nonce, hello.enclave_key)))
            )
            await writer.drain()
            replies.append(await reader.read())  # the node sends nothing more: no ready, no failed
            writer.close()

        process, said = await host_launch(
            controller,
            request_key=controller.identity.public,
            platform_controller=controller.identity.controller,
            converse=forge,
        )
        assert process.returncode == 1
        return said

    said = asyncio.run(scenario())
    assert "not authenticated by this kernel's controller" in said
    assert replies == [b""]
    assert registered(cluster) == ["0", "1"]


def test_a_boot_request_naming_another_controller_is_refused(cluster: Any, dask_env: DaskEnv) -> None:
    """The image launched for our controller, with a boot request naming the host's key: the node refuses
    before it makes a key or says anything (else the host would configure a node our evidence vouches for)."""
    controller, host = cluster.controller, GatewayIdentity.generate()
    spoke: list[bool] = []

    async def scenario() -> tuple[EnclaveProcess, str]:
        async def converse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: bytes) -> None:
            spoke.append(True)

        return await host_launch(
            controller,
            request_key=host.public,
            platform_controller=controller.identity.controller,
            converse=converse,
        )

    process, said = asyncio.run(scenario())
    assert process.returncode == 1 and not spoke
    assert "names another controller" in said


def test_a_kernels_hello_is_not_a_nodes(dask_env: DaskEnv) -> None:
    """A hello without a TLS key (a kernel's) never gets a Dask bundle, and a kernel gateway refuses a node's."""

    async def feed(hello: Hello, tls_key: bool) -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(encode_frame(hello))
        reader.feed_eof()
        await attest_hello_and_seal(
            (reader, None),  # type: ignore[arg-type]
            nonce=bytes(32),
            identity=GatewayIdentity.generate(),
            appraise=lambda evidence, report_data: pytest.fail("appraised"),
            make_bundle=_never,
            timeout=5,
            tls_key=tls_key,
        )

    with pytest.raises(HandshakeError, match="must bind its TLS key"):
        asyncio.run(feed(Hello(bytes(32), {}), tls_key=True))
    with pytest.raises(HandshakeError, match="binds no TLS key"):
        asyncio.run(feed(Hello(bytes(32), {}, b"\x30" * 91), tls_key=False))


def test_another_clusters_certificates_are_refused(cluster: Any, dask_env: DaskEnv) -> None:
    """Another tenant's cluster (or a closed cluster of ours: its CA is gone) has its own CA: its certificates
    open no TLS connection to this cluster, as a worker or as a client."""
    other = ClusterController(
        backend="sim", policy=dask_env.policy, image=None, host="127.0.0.1", launch_timeout=TIMEOUT
    )
    assert other.ca.certificate_pem != cluster.controller.ca.certificate_pem
    error = asyncio.run(join_as_worker(cluster.scheduler_address, other.security, "0"))
    assert error is not None

    async def as_client() -> None:
        from distributed import Client

        async with Client(cluster.scheduler_address, security=other.security, asynchronous=True, timeout=5):
            raise AssertionError("another cluster's client certificate connected")

    with pytest.raises((OSError, TimeoutError)):
        asyncio.run(as_client())
    assert registered(cluster) == ["0", "1"]
