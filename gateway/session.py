"""The gateway's side of the attested-session handshake (docs/protocols/session-handshake.md).

:func:`answer_channel` listens where the kernel boot answers; :func:`attest_and_seal` holds the whole
conversation on it: await the hello, verify its evidence against the session's nonce and enclave key, refuse
(and say which check failed) or seal the session bundle to the attested key, and await the key confirmation.
The bundle is never made, let alone sent, before the evidence passed. The messages themselves are defined in
:mod:`teelab.protocols.session`, which the in-TEE boot imports too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from teelab.enclave_runtime.backend import EnclaveBackend, Evidence
from teelab.errors import TeelabError
from teelab.gateway.anchors import TrustAnchors
from teelab.gateway.identity import GatewayIdentity
from teelab.gateway.policy import AppraisalPolicy
from teelab.gateway.result import AttestationResult
from teelab.gateway.verifier import default_anchors, verify_evidence
from teelab.protocols.session import (
    Bundle,
    Failed,
    HandshakeError,
    Hello,
    Ready,
    Refused,
    SealedBundle,
    SessionBundle,
    check_ready,
    decode_one_of,
    encode_frame,
    read_frame,
    seal_bundle,
    session_report_data,
)
from teelab.timeutil import utcnow

# (evidence, the report_data it must carry) -> the attestation result
Appraise = Callable[[Evidence, bytes], AttestationResult]
# (the attested E.pub, the accepted result) -> the bundle to seal to it
MakeBundle = Callable[[bytes, AttestationResult], Awaitable[SessionBundle]]
# (the attested hello, the accepted result) -> the bundle to seal to its E.pub (a Dask node's: teelab.dask)
MakeHelloBundle = Callable[[Hello, AttestationResult], Awaitable[Bundle]]
Channel = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class SessionRefused(TeelabError):
    """The gateway refused the kernel: ``check`` names the failed check, ``result`` is the verdict (if any)."""

    def __init__(self, check: str, detail: str, result: AttestationResult | None = None) -> None:
        super().__init__(f"{check}: {detail}")
        self.check, self.detail, self.result = check, detail, result


def backend_anchors(backend: EnclaveBackend) -> TrustAnchors:
    """The production roots plus the roots ``backend`` pins (a simulated platform's root, marked simulated)."""
    return default_anchors(backend.root_pins())


def appraiser(
    backend: EnclaveBackend,
    policy: AppraisalPolicy,
    *,
    controller: bytes | None,
    clock: Callable[[], datetime] = utcnow,
) -> Appraise:
    """Verify evidence from ``backend``'s TEE with its collateral and roots, judged by ``policy``; with
    ``controller`` (this gateway's ``SHA-256(G.pub)``) the evidence must also carry it (the check
    ``controller``): evidence of a kernel some other party launched — an attestation oracle — never passes."""
    anchors = backend_anchors(backend)

    def appraise(evidence: Evidence, report_data: bytes) -> AttestationResult:
        at = clock()
        return verify_evidence(
            evidence.blob,
            collateral=backend.collateral_for(evidence.blob, at),
            certs=evidence.certificates,
            at=at,
            anchors=anchors,
            policy=policy,
            expected_report_data=report_data,
            expected_controller=controller,
        )

    return appraise


@dataclass
class AnswerChannel:
    """The gateway's listening socket for one boot's answer; the first connection is the boot's."""

    host: str
    port: int = 0
    _connection: asyncio.Future[Channel] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._connection.done():
            writer.close()  # one boot answers per session; anything else is noise from the host
        else:
            self._connection.set_result((reader, writer))

    async def accept(self, *, timeout: float, gone: Callable[[], bool]) -> Channel | None:
        """The boot's connection; None once ``gone()`` says the boot exited; TimeoutError after ``timeout``."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not self._connection.done():
            if gone():
                return None
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError
            await asyncio.wait([self._connection], timeout=0.05)
        return self._connection.result()


@contextlib.asynccontextmanager
async def answer_channel(host: str) -> AsyncIterator[AnswerChannel]:
    channel = AnswerChannel(host)
    server = await asyncio.start_server(channel._accept, host=host, port=0)
    channel.port = server.sockets[0].getsockname()[1]
    try:
        yield channel
    finally:
        server.close()
        if channel._connection.done() and not channel._connection.cancelled():
            channel._connection.result()[1].close()


async def attest_and_seal(
    channel: Channel,
    *,
    nonce: bytes,
    identity: GatewayIdentity,
    appraise: Appraise,
    make_bundle: MakeBundle,
    timeout: float,
) -> AttestationResult:
    """Run the handshake on the boot's connection; the accepted result once the kernel confirmed.

    ``appraise`` must check the controller binding against ``identity`` (:func:`appraiser` does); the bundle
    goes out sealed to the attested key and signed by ``identity`` — the only bundle the boot accepts.

    Raises :class:`SessionRefused` (the evidence failed a check, or the confirmation was not made with the
    session's key), :class:`HandshakeError` (malformed or out-of-order messages, the kernel failed to start)
    or TimeoutError; on every one of them the caller kills the launched process.
    """

    async def kernel_bundle(hello: Hello, result: AttestationResult) -> Bundle:
        return await make_bundle(hello.enclave_key, result)

    return await attest_hello_and_seal(
        channel,
        nonce=nonce,
        identity=identity,
        appraise=appraise,
        make_bundle=kernel_bundle,
        timeout=timeout,
        tls_key=False,
    )


async def attest_hello_and_seal(
    channel: Channel,
    *,
    nonce: bytes,
    identity: GatewayIdentity,
    appraise: Appraise,
    make_bundle: MakeHelloBundle,
    timeout: float,
    tls_key: bool,
) -> AttestationResult:
    """:func:`attest_and_seal` for a boot whose hello must (``tls_key``: a Dask node's) or must not (a
    kernel's) bind a TLS key; ``make_bundle`` sees the attested hello."""
    reader, writer = channel
    hello = Hello.from_json(await asyncio.wait_for(read_frame(reader), timeout))
    if (hello.tls_key is not None) != tls_key:
        raise HandshakeError(
            "a Dask node's hello must bind its TLS key" if tls_key else "a kernel's hello binds no TLS key"
        )
    evidence = Evidence.from_json(hello.evidence)
    expected = session_report_data(hello.enclave_key, nonce, hello.tls_key)
    # Verification parses and checks signatures: off the event loop, which serves every user of the server.
    result = await asyncio.get_running_loop().run_in_executor(None, appraise, evidence, expected)
    if not result.ok:
        failed = result.failed_checks[0] if result.failed_checks else None
        check, detail = (failed.name, failed.detail) if failed else ("policy", "rejected")
        writer.write(encode_frame(Refused(check)))
        await writer.drain()
        raise SessionRefused(check, detail, result)
    bundle = await make_bundle(hello, result)
    sealed = seal_bundle(hello.enclave_key, nonce, bundle)
    writer.write(encode_frame(SealedBundle(sealed, identity.sign_bundle(sealed, nonce, hello.enclave_key))))
    await writer.drain()
    reply = decode_one_of(await asyncio.wait_for(read_frame(reader), timeout), Ready, Failed)
    if isinstance(reply, Failed):
        raise HandshakeError(f"the kernel failed to start inside the TEE: {reply.reason}")
    assert isinstance(reply, Ready)
    if not check_ready(bundle.key, nonce, hello.enclave_key, reply.confirm):
        raise SessionRefused(
            "key_confirmation", "the kernel's readiness message was not made with this session's key", result
        )
    return result
