"""The boot of an attested Dask node: the kernel image's boot hands over to it when the boot request asks for
a Dask node (``entry = "dask-node"``); the role and everything else arrive sealed.

1. Read the boot request (a nonce, where to answer, ``G_c.pub`` — the cluster controller's key; nothing
   secret) and refuse one naming another controller than the platform was launched for.
2. Make the ephemeral X25519 key E and the node's TLS key T (ECDSA P-256), both only in this process; ask the
   TEE for evidence over ``SHA-512("teelab/session/v1/tls-key" ‖ E.pub ‖ N ‖ SHA-256(T.spki))``.
3. Send the hello {E.pub, T.spki, evidence}; receive the :class:`DaskNodeBundle` sealed to E.pub and signed by
   G_c — only if the controller accepted the evidence. A bundle G_c did not sign is refused unread.
4. Set Dask's configuration in code (:mod:`teelab.dask.config`: no HTTP routes, no spill, no P2P disk, TLS
   required, nothing from the host), build ``distributed.Security`` in memory (:mod:`teelab.dask.tls`), and
   only then start the scheduler (role-checking, :mod:`teelab.dask.scheduler`) or the worker. A worker gets
   the key-release session a kernel gets: its own E and evidence, and the grant delegated to it.
5. Confirm readiness with an HMAC only a holder of the bundle can compute; run until the cluster ends.

The boot imports no verifier code. What it writes to stderr is read by the host: the failed step, never a key.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from teelab.enclave_runtime.backend import TeeRuntime
from teelab.enclave_runtime.controller import CONTROLLER_ENV
from teelab.enclave_runtime.runtime import current_runtime
from teelab.errors import TeelabError
from teelab.protocols.session import (
    BOOT_REQUEST_ENV,
    ENTRY_DASK_NODE,
    BootRequest,
    DaskNodeBundle,
    Failed,
    HandshakeError,
    Hello,
    Ready,
    Refused,
    SealedBundle,
    check_bundle_signature,
    controller_hash,
    decode_one_of,
    decrypt_bundle,
    parse_dask_bundle,
    ready_confirmation,
    recv_frame,
    send_frame,
    session_report_data,
)

HANDSHAKE_TIMEOUT = 300.0  # the controller answers after verification; it holds the real deadline
# A worker that cannot register with its scheduler for this long ends (Dask's death_timeout): a scheduler that
# closed itself (idle, its controller gone) leaves no worker retrying forever. Once registered, a worker
# closes as soon as its connection to the scheduler breaks.
WORKER_DEATH_TIMEOUT = 120.0


@dataclass
class AttestedNode:
    """What the handshake leaves the node: the opened bundle, its keys (in memory) and the open channel."""

    request: BootRequest
    bundle: DaskNodeBundle
    enclave_secret: X25519PrivateKey
    enclave_key: bytes
    tls_key: ec.EllipticCurvePrivateKey
    runtime: TeeRuntime
    channel: socket.socket


def check_launch_controller(runtime: TeeRuntime, request: BootRequest, env: Mapping[str, str]) -> None:
    """Obey only the controller the platform names (as the kernel boot does): a host launching the image bound
    to a victim's controller with a request naming its own key gets a boot that refuses and exits."""
    expected = controller_hash(request.controller_key)
    for source, value in (
        ("the platform's launch-time field", runtime.controller()),
        ("the measured image", env.get(CONTROLLER_ENV)),
    ):
        if isinstance(value, str):
            try:
                value = bytes.fromhex(value)
            except ValueError:
                value = b"?"
        if isinstance(value, bytes) and any(value) and not hmac.compare_digest(value, expected):
            raise HandshakeError(
                f"the boot request names another controller than {source} this node was launched with"
            )


def handshake(env: Mapping[str, str]) -> AttestedNode:
    request = BootRequest.from_env(env.get(BOOT_REQUEST_ENV))
    if request.entry != ENTRY_DASK_NODE:
        raise HandshakeError("the boot request does not ask for a Dask node")
    runtime = current_runtime()
    check_launch_controller(runtime, request, env)
    secret = X25519PrivateKey.generate()
    enclave_key = secret.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    tls_key = ec.generate_private_key(ec.SECP256R1())
    tls_public = tls_key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    evidence = runtime.evidence(session_report_data(enclave_key, request.nonce, tls_public))
    channel = socket.create_connection((request.host, request.port), timeout=HANDSHAKE_TIMEOUT)
    try:
        send_frame(channel, Hello(enclave_key, evidence.to_json(), tls_public))
        reply = decode_one_of(recv_frame(channel), Refused, SealedBundle)
        if isinstance(reply, Refused):
            raise HandshakeError(f"the cluster controller refused this node: {reply.reason}")
        assert isinstance(reply, SealedBundle)
        plaintext = decrypt_bundle(secret, request.nonce, reply.sealed)
        # Only the controller may configure this node: a bundle anyone else sealed to E.pub is refused unread.
        check_bundle_signature(
            request.controller_key, reply.signature, reply.sealed, request.nonce, enclave_key
        )
        bundle = parse_dask_bundle(plaintext)
    except BaseException:
        channel.close()
        raise
    return AttestedNode(request, bundle, secret, enclave_key, tls_key, runtime, channel)


def scratch() -> str:
    """The TEE's own scratch space (``TMPDIR`` of the image: a fresh in-TEE folder per launch)."""
    return os.environ.get("TMPDIR") or tempfile.gettempdir()


def _own_address_towards(address: str) -> str:
    """The local interface that reaches ``address`` (no packet is sent): where this worker listens."""
    host, _, port = address.removeprefix("tls://").rpartition(":")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((host.strip("[]"), int(port)))
        return str(probe.getsockname()[0])


async def _serve(node: AttestedNode, security: Any) -> int:
    from distributed import Worker

    from teelab.dask.config import HTTP_ADDRESS
    from teelab.dask.scheduler import AttestedScheduler

    bundle = node.bundle
    server: Any
    if bundle.role == "scheduler":
        host, _, port = bundle.address.removeprefix("tls://").rpartition(":")
        server = AttestedScheduler(
            host=host,
            port=int(port),
            protocol="tls",
            security=security,
            dashboard=False,
            dashboard_address=HTTP_ADDRESS,
            idle_timeout=bundle.idle_timeout,  # from the sealed bundle only (None: never)
        )
    else:
        server = Worker(
            bundle.address,
            name=bundle.name,
            nthreads=bundle.nthreads,
            security=security,
            protocol="tls",
            host=_own_address_towards(bundle.address),
            dashboard=False,
            dashboard_address=HTTP_ADDRESS,
            local_directory=os.path.join(scratch(), "dask-worker"),
            death_timeout=WORKER_DEATH_TIMEOUT,
        )
    try:
        await server
    except BaseException as error:
        send_frame(node.channel, Failed(type(error).__name__))
        raise
    send_frame(node.channel, Ready(ready_confirmation(bundle.key, node.request.nonce, node.enclave_key)))
    node.channel.close()
    await server.finished()
    return 0


def run(node: AttestedNode) -> int:
    from teelab.dask import config
    from teelab.dask.tls import InMemorySecurity, TlsIdentity, check_node_certificate

    bundle = node.bundle
    role = check_node_certificate(bundle.certificate, bundle.ca_certificate, node.tls_key.public_key())
    if role != (bundle.role, bundle.name):
        raise HandshakeError("the node certificate names another role or name than the bundle")
    config.apply(scratch())
    security = InMemorySecurity(TlsIdentity(bundle.ca_certificate, bundle.certificate, node.tls_key))
    import teelab.session

    # Code running on the node (tasks, Client.run) gets evidence as a kernel's user code does: only through
    # teelab.session.attest(), over SHA-512("teelab/user/v1" ‖ data), naming the cluster's controller.
    teelab.session.install(
        attestation=bundle.attestation or {}, key_broker=bundle.key_broker, attest=node.runtime.evidence
    )
    if bundle.role == "worker":
        from teelab.sealed_store.notebook import ReaderSession, install_key_release

        # As the kernel boot does: E's secret and the raw evidence function go to the dataset reader only.
        install_key_release(ReaderSession(bundle.key_broker, node.enclave_secret, node.runtime.evidence))
    return asyncio.run(_serve(node, security))


def _clean_up_scratch() -> None:
    folder = os.environ.get("TMPDIR", "")
    if os.path.basename(folder).startswith(("teelab-tee-", "teelab-cvm-")):
        shutil.rmtree(folder, ignore_errors=True)


def _end_with_the_launcher() -> None:
    """A node whose controller's process is gone stops: nobody could reach it, and it holds data in memory."""
    launcher = os.getppid()
    if launcher == 1:
        return

    def watch() -> None:
        while os.getppid() == launcher:
            time.sleep(1.0)
        _clean_up_scratch()
        os._exit(1)

    threading.Thread(target=watch, name="teelab-launcher-watch", daemon=True).start()


def _exit_on_sigterm() -> None:
    def stop(signum: int, frame: object) -> None:
        _clean_up_scratch()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)


def main() -> int:
    _exit_on_sigterm()
    _end_with_the_launcher()
    from teelab.dask import config

    config.isolate_from_host(scratch())  # before anything imports dask
    try:
        node = handshake(os.environ)
    except TeelabError as error:
        print(f"teelab dask node: {error.message}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"teelab dask node: the handshake channel failed: {error.strerror or error}", file=sys.stderr)
        return 1
    try:
        return run(node)
    except TeelabError as error:
        print(f"teelab dask node: {error.message}", file=sys.stderr)
        return 1
    finally:
        _clean_up_scratch()


if __name__ == "__main__":
    sys.exit(main())
