"""The hub's side of ``teelab/hub-server/v1`` (docs/protocols/session-handshake.md, "The hub-server variant").

:func:`attest_and_deliver` holds the spawn-time conversation on the boot's answer channel: await the hello,
verify its evidence (policy, report_data binding, controller), refuse and say which check failed, or seal the
server's bundle to the attested key, sign it with ``G_s`` and await the key confirmation. Nothing of the
bundle — let alone a secret — exists before the evidence passed. :func:`challenge` is the re-challenge
``poll()`` makes: fresh evidence over the recorded keys, over TLS with the recorded key ``T`` pinned.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from teelab.errors import EvidenceError
from teelab.extension.hub import spawner_protocol as protocol
from teelab.extension.hub.spawner_protocol import ChallengeAnswer, ServerBundle, ServerHello
from teelab.extension.hub.spawner_verdict import Observed
from teelab.gateway.identity import GatewayIdentity
from teelab.gateway.result import AttestationResult
from teelab.gateway.session import Appraise, Channel, SessionRefused
from teelab.kernel.attested_module import Evidence
from teelab.protocols.session import (
    Failed,
    HandshakeError,
    Ready,
    Refused,
    SealedBundle,
    decode_one_of,
    encode_frame,
    read_frame,
)

ATTEST_PATH = "/teelab/hub-server/attest"
MAX_ANSWER = 1024 * 1024  # a challenge answer: keys and one piece of evidence (with its certificates)
# (name of the step, what happened) -> shown on the spawn-pending page
Step = Callable[[str, str], None]
MakeBundle = Callable[[ServerHello, AttestationResult], Awaitable[ServerBundle]]


@dataclass(frozen=True)
class Attested:
    observed: Observed
    result: AttestationResult


def _controller_detail(result: AttestationResult) -> str:
    for check in result.checks:
        if check.name == "controller":
            return check.detail
    return "no controller check was made"


async def _appraise(appraise: Appraise, evidence: Evidence, report_data: bytes) -> AttestationResult:
    # Verification parses and checks signatures: off the event loop, which serves the whole hub.
    return await asyncio.get_running_loop().run_in_executor(None, appraise, evidence, report_data)


async def attest_and_deliver(
    channel: Channel,
    *,
    nonce: bytes,
    server: str,
    identity: GatewayIdentity,
    appraise: Appraise,
    make_bundle: MakeBundle,
    step: Step,
    timeout: float,
    on_hello: Callable[[Observed], None] = lambda observed: None,
) -> Attested:
    """The accepted verdict once the server's boot confirmed it opened the bundle.

    Raises :class:`SessionRefused` (a failed check, with the result), :class:`HandshakeError` (malformed or
    out-of-order messages, the boot failed) or TimeoutError; the caller kills the launched process."""
    reader, writer = channel
    hello = ServerHello.from_json(await asyncio.wait_for(read_frame(reader), timeout))
    try:
        evidence = Evidence.from_json(hello.evidence)
    except EvidenceError as error:
        raise HandshakeError(f"the server's hello carries malformed evidence: {error.message}") from None
    observed = Observed(hello.enclave_key, hello.tls_spki, evidence, nonce, server, "hello")
    on_hello(observed)
    step(
        "evidence",
        f"Evidence received from the server's TEE ({evidence.kind.value}; enclave key "
        f"{observed.to_json()['enclave_key_sha256']!s:.16}…, TLS key {observed.to_json()['tls_spki_sha256']!s:.16}…)",
    )
    result = await _appraise(appraise, evidence, observed.report_data())
    if not result.ok:
        failed = result.failed_checks[0] if result.failed_checks else None
        check, detail = (failed.name, failed.detail) if failed else ("policy", "rejected")
        writer.write(encode_frame(Refused(check)))
        await writer.drain()
        raise SessionRefused(check, detail, result)
    shown = f" — {'; '.join(result.warnings)}" if result.warnings else ""
    step("verified", f"Evidence verified against policy {result.policy_id}: {result.verdict}{shown}")
    step("controller", f"Controller checked: {_controller_detail(result)}")
    bundle = await make_bundle(hello, result)
    sealed = protocol.seal(hello.enclave_key, nonce, bundle)
    signature = protocol.sign(identity.secret, sealed, nonce, hello.enclave_key)
    writer.write(encode_frame(SealedBundle(sealed, signature)))
    await writer.drain()
    reply = decode_one_of(await asyncio.wait_for(read_frame(reader), timeout), Ready, Failed)
    if isinstance(reply, Failed):
        raise HandshakeError(f"the server failed to start inside the TEE: {reply.reason}")
    assert isinstance(reply, Ready)
    if not protocol.check_ready(bundle.confirm_key, nonce, hello.enclave_key, reply.confirm):
        raise SessionRefused(
            "key_confirmation", "the server's confirmation was not made with this bundle's key", result
        )
    step(
        "sealed", "Secrets sealed to the attested key (hub API token, server configuration): server confirmed"
    )
    return Attested(observed, result)


@dataclass(frozen=True)
class ChallengeOutcome:
    """``status`` when not ok: ``unreachable`` (no valid answer), ``key-changed`` (another TEE answered),
    ``refused`` (the answer fails the policy now: e.g. the operator no longer allows its measurement)."""

    ok: bool
    status: str
    nonce: bytes
    reason: str | None
    answer: ChallengeAnswer | None
    result: AttestationResult | None


async def _get_over_tls(host: str, port: int, path: str) -> tuple[bytes, bytes]:
    """``GET path`` over TLS: the peer's SubjectPublicKeyInfo (DER, from this very handshake) and the 200
    answer's body. No certificate authority: the caller pins the key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the key is compared with the attested one instead
    reader, writer = await asyncio.open_connection(host, port, ssl=context)
    try:
        spki = peer_spki(writer.get_extra_info("ssl_object").getpeercert(binary_form=True))
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        raw = bytearray()  # extended in place: a peer sending tiny records costs linear time, not quadratic
        while len(raw) <= MAX_ANSWER and (more := await reader.read(MAX_ANSWER + 1 - len(raw))):
            raw += more
    finally:
        writer.close()
    return spki, answer_body(bytes(raw))


def peer_spki(certificate: bytes | None) -> bytes:
    """The SubjectPublicKeyInfo (DER) of the certificate the peer presented (untrusted bytes): ValueError if
    there is none or it cannot be read (cryptography raises ``UnsupportedAlgorithm`` for a key type it does
    not know, ``InvalidVersion`` for a version field other than v1 or v3: neither is a ValueError)."""
    if certificate is None:
        raise ValueError("the server presented no certificate")
    try:
        return (
            x509.load_der_x509_certificate(certificate)
            .public_key()
            .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
    except (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion) as error:
        raise ValueError(f"the server's certificate cannot be read: {error}") from None


def answer_body(raw: bytes) -> bytes:
    """The body of an HTTP/1.1 answer read to its end (untrusted bytes): ValueError unless its status is 200
    and it is at most ``MAX_ANSWER`` bytes."""
    if len(raw) > MAX_ANSWER:
        raise ValueError(f"the answer is larger than {MAX_ANSWER} bytes")
    head, _, body = raw.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or status[1] != b"200":
        raise ValueError(f"the answer's status is {b' '.join(status[1:3])[:40].decode(errors='replace')!r}")
    return body


async def challenge(
    host: str,
    port: int,
    *,
    server: str,
    enclave_key: bytes,
    tls_spki: bytes,
    appraise: Appraise,
    timeout: float,
) -> ChallengeOutcome:
    """Ask the server's boot for fresh evidence; ok only if it comes over TLS with the recorded key ``T`` and
    is over the *recorded* E.pub and TLS key."""
    nonce = os.urandom(protocol.NONCE_SIZE)
    try:
        channel_spki, body = await asyncio.wait_for(
            _get_over_tls(host, port, f"{ATTEST_PATH}?nonce={nonce.hex()}"), timeout
        )
        answer = ChallengeAnswer.from_json(json.loads(body))
        evidence = Evidence.from_json(answer.evidence)
    except (OSError, TimeoutError, ValueError, RecursionError, HandshakeError, EvidenceError) as error:
        reason = f"the server's TEE did not answer a challenge: {error}"
        return ChallengeOutcome(False, "unreachable", nonce, reason, None, None)
    if answer.enclave_key != enclave_key or answer.tls_spki != tls_spki:
        which = "enclave key" if answer.enclave_key != enclave_key else "TLS key"
        reason = f"the server's {which} changed since it was attested: another TEE answers"
        return ChallengeOutcome(False, "key-changed", nonce, reason, answer, None)
    if not hmac.compare_digest(channel_spki, tls_spki):
        reason = "the challenge's TLS connection presented another key than the attested one: a relay answers"
        return ChallengeOutcome(False, "key-changed", nonce, reason, answer, None)
    observed = Observed(enclave_key, tls_spki, evidence, nonce, server, "challenge")
    result = await _appraise(appraise, evidence, observed.report_data())
    if not result.ok:
        return ChallengeOutcome(
            False, "refused", nonce, f"the re-challenge failed: {result.error}", answer, result
        )
    return ChallengeOutcome(True, "attested", nonce, None, answer, result)
