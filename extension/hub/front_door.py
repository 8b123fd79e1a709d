"""The hub's attested front door: the TLS endpoint users reach, run inside the TEE (docs/hosted-hub.md).

Launched through a TEE backend (``front_door_launch``), this program

1. makes its TLS key inside the TEE (P-256, never written to any file: the certificate and key reach
   OpenSSL through an anonymous in-memory file), with a certificate for the hub's host names;
2. answers ``GET /.well-known/teelab/attestation?nonce=…`` (:mod:`.front_door_protocol`) with fresh evidence
   binding that key and the client's nonce;
3. passes every other request, byte for byte, to the hub's configurable-http-proxy on loopback (in the same
   confidential VM or pod), adding ``X-Forwarded-Proto: https``.

A connection is answered by the front door itself only until its first proxied request; from then on it is a
tunnel to the proxy (which speaks HTTP keep-alive and websockets on its own). ``teelab hub verify`` asks for
evidence first and then the hub's API over the same connection.

The host gives only ``TEELAB_FRONT_DOOR_REQUEST`` (where to listen, the loopback upstream, host names, where
the platform's public collateral is); nothing secret comes from it and nothing secret goes to it. Announces
``{"port": …, "tls_spki_sha256": …}`` on one line of standard output once it listens.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import NameOID

from teelab.errors import TeelabError
from teelab.extension.hub.front_door_limits import EvidenceLimiter, EvidenceLimits, Refusal
from teelab.extension.hub.front_door_protocol import (
    ATTESTATION_PATH,
    FrontDoorError,
    FrontDoorEvidence,
    front_door_report_data,
    parse_nonce,
    spki_sha256,
)

if TYPE_CHECKING:
    from teelab.kernel.attested_module import Evidence

REQUEST_ENV = "TEELAB_FRONT_DOOR_REQUEST"
MAX_HEAD_BYTES = 64 << 10
PIPE_CHUNK = 64 << 10
CERTIFICATE_DAYS = 90


@dataclass(frozen=True)
class FrontDoorRequest:
    listen_host: str
    listen_port: int
    upstream_host: str
    upstream_port: int
    hostnames: tuple[str, ...]
    collateral: str | None
    # How often evidence is made per client and at once (front_door_limits); absent: the safe defaults.
    evidence_limits: EvidenceLimits = field(default_factory=EvidenceLimits)

    @classmethod
    def from_env(cls, text: str | None) -> FrontDoorRequest:
        """The host's request (untrusted): a FrontDoorError unless well formed, and the upstream on loopback."""
        if not text:
            raise FrontDoorError(f"no {REQUEST_ENV}: launch the front door through `teelab hub front-door`")
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as error:
            raise FrontDoorError(f"malformed {REQUEST_ENV}: {error}") from None
        return cls.from_data(data)

    @classmethod
    def from_data(cls, data: object) -> FrontDoorRequest:
        """The same checks on an already decoded request (the hub pod adds its own loopback upstream)."""
        try:
            if not isinstance(data, dict):
                raise TypeError("the request is not a JSON object")
            request = cls(
                listen_host=str(data["listen_host"]),
                listen_port=int(data["listen_port"]),
                upstream_host=str(data["upstream_host"]),
                upstream_port=int(data["upstream_port"]),
                hostnames=tuple(str(name) for name in data["hostnames"]),
                collateral=None if data.get("collateral") is None else str(data["collateral"]),
                evidence_limits=EvidenceLimits.from_data(data.get("evidence_limits")),
            )
            upstream_is_loopback = ipaddress.ip_address(request.upstream_host).is_loopback
            if not (0 <= request.listen_port < 65536 and 0 <= request.upstream_port < 65536):
                raise ValueError("a port is 0 to 65535")
        # OverflowError: JSON's Infinity as a port (int(float("inf"))).
        except (ValueError, TypeError, KeyError, OverflowError, RecursionError) as error:
            raise FrontDoorError(f"malformed {REQUEST_ENV}: {error}") from None
        if not upstream_is_loopback:
            # The hop to the proxy is plaintext: it must stay inside this TEE (same VM or pod, loopback).
            raise FrontDoorError(f"the upstream {request.upstream_host} is not a loopback address")
        if not request.hostnames:
            raise FrontDoorError("the front door needs at least one host name for its certificate")
        return request


def tls_identity(hostnames: tuple[str, ...]) -> tuple[ssl.SSLContext, bytes]:
    """A server context for a key made here, and that key's SPKI-SHA256."""
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for name in hostnames:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            names.append(x509.DNSName(name))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERTIFICATE_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = certificate.public_bytes(Encoding.PEM) + key.private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # OpenSSL loads keys from files only; an anonymous memory file is one no other process can open.
    fd = os.memfd_create("teelab-front-door-tls", os.MFD_CLOEXEC)
    try:
        os.write(fd, pem)
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    return context, spki_sha256(certificate.public_bytes(Encoding.DER))


def _forwarded(head: bytes) -> bytes:
    """The request head for the proxy: the client's own ``X-Forwarded-Proto`` replaced by ours (TLS ended here)."""
    line, *headers = head[:-4].split(b"\r\n")
    kept = [h for h in headers if not h.lower().startswith(b"x-forwarded-proto:")]
    return b"\r\n".join([line, b"X-Forwarded-Proto: https", *kept]) + b"\r\n\r\n"


def _reply(status: str, body: bytes, *, close: bool, extra: str = "") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"Cache-Control: no-store\r\n{extra}Connection: {'close' if close else 'keep-alive'}\r\n\r\n"
    )
    return head.encode("ascii") + body


def _error(status: str, message: str, *, close: bool = False) -> bytes:
    return _reply(status, json.dumps({"error": message}).encode(), close=close)


def _too_many(refusal: Refusal) -> bytes:
    """429 with ``Retry-After``; the connection stays open (the client may go on to the hub)."""
    body = {"error": refusal.message, "limit": refusal.limit, "retry_after": refusal.retry_after}
    return _reply(
        "429 Too Many Requests",
        json.dumps(body).encode(),
        close=False,
        extra=f"Retry-After: {refusal.retry_after}\r\n",
    )


class FrontDoor:
    def __init__(
        self,
        request: FrontDoorRequest,
        pod: dict[str, str] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        evidence: Callable[[bytes], Evidence] | None = None,
    ) -> None:
        """``clock`` and ``evidence`` are for tests (advance time; another sim TEE's evidence in-process)."""
        from teelab.kernel.attested_module import tee_evidence

        self.request = request
        self.limiter = EvidenceLimiter(request.evidence_limits, clock)
        # The hub pod's description of what else its measured image runs (None: a front door alone).
        self.pod = pod
        self.context, self.tls_spki_sha256 = tls_identity(request.hostnames)
        self._evidence = evidence or tee_evidence

    def attestation(self, nonce: bytes) -> bytes:
        evidence = self._evidence(front_door_report_data(self.tls_spki_sha256, nonce))
        collateral = None
        if self.request.collateral:
            try:
                with open(self.request.collateral, "rb") as handle:
                    collateral = handle.read()
            except OSError:
                collateral = None  # the client then needs collateral of its own; the evidence is unaffected
        answer = FrontDoorEvidence(
            evidence.blob, evidence.kind.value, nonce, self.tls_spki_sha256, collateral, self.pod
        )
        return json.dumps(answer.to_json()).encode()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError):
            pass  # the client went away or sent too much: nothing to answer
        finally:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            try:
                method, target, _ = head.split(b"\r\n", 1)[0].decode("ascii").split(" ")
            except (UnicodeDecodeError, ValueError):
                writer.write(_error("400 Bad Request", "malformed request line", close=True))
                await writer.drain()
                return
            url = urlsplit(target)
            if url.path != ATTESTATION_PATH:
                await self._tunnel(head, reader, writer)
                return
            lowered = head.lower()
            if method != "GET" or b"\r\ncontent-length:" in lowered or b"\r\ntransfer-encoding:" in lowered:
                writer.write(_error("400 Bad Request", "the attestation endpoint takes GET only", close=True))
                await writer.drain()
                return
            try:
                nonce = parse_nonce(parse_qs(url.query).get("nonce", [""])[0])
            except FrontDoorError as error:
                writer.write(_error("400 Bad Request", error.message))
            else:
                writer.write(await self._limited_attestation(nonce, writer.get_extra_info("peername")))
            await writer.drain()

    async def _limited_attestation(self, nonce: bytes, peer: object) -> bytes:
        host = str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)
        refusal = self.limiter.acquire(host)
        if refusal is not None:
            return _too_many(refusal)
        try:
            body = await asyncio.to_thread(self.attestation, nonce)
        finally:
            self.limiter.release()
        return _reply("200 OK", body, close=False)

    async def _tunnel(self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(
                self.request.upstream_host, self.request.upstream_port
            )
        except OSError:
            writer.write(_error("502 Bad Gateway", "the hub's proxy is not reachable", close=True))
            await writer.drain()
            return
        up_writer.write(_forwarded(head))
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            up_writer.close()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while chunk := await source.read(PIPE_CHUNK):
            sink.write(chunk)
            await sink.drain()
        if sink.can_write_eof():
            sink.write_eof()  # half-close: the other direction may still carry the answer
        else:
            sink.close()  # TLS has no half-close; closing ends the other direction's pipe too
    except (ConnectionError, ssl.SSLError, OSError):
        sink.close()


async def serve(request: FrontDoorRequest, pod: dict[str, str] | None = None) -> None:
    door = FrontDoor(request, pod)
    server = await asyncio.start_server(
        door.handle, request.listen_host, request.listen_port, ssl=door.context, limit=MAX_HEAD_BYTES
    )
    port = server.sockets[0].getsockname()[1]
    print(json.dumps({"port": port, "tls_spki_sha256": door.tls_spki_sha256.hex()}), flush=True)
    async with server:
        await server.serve_forever()


def main() -> int:
    from teelab.kernel.attested_module import tee_name

    try:
        tee_name()  # first: the loader hands the TEE's identity over right after the start
    except TeelabError as error:
        print(f"teelab front door: {error.message}", file=sys.stderr)
        return 1
    try:
        request = FrontDoorRequest.from_env(os.environ.get(REQUEST_ENV))
    except FrontDoorError as error:
        print(f"teelab front door: {error.message}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(request))
    except TeelabError as error:
        print(f"teelab front door: {error.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
