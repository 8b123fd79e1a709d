"""The attested-session protocol ``teelab/session/v1`` (docs/protocols/session-handshake.md), both ends' bytes.

The gateway (:mod:`teelab.gateway.session`) and the in-TEE boot (:mod:`teelab.kernel.boot`) import this module
and nothing of each other: the typed messages and their strict decoders, the report-data binding, the HPKE
suite that seals the session bundle to the enclave's ephemeral key, the key confirmation, and the framing of
the answer channel. Everything decoded here crossed the untrusted host, so every decoder fails only with
:class:`HandshakeError`, naming what was wrong.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, TypeVar

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from teelab.errors import TeelabError

PROTOCOL = "teelab/session/v1"
NONCE_SIZE = 32
X25519_KEY_SIZE = 32
CONTROLLER_KEY_SIZE = 32  # G.pub, an Ed25519 public key
SIGNATURE_SIZE = 64
BOOT_REQUEST_ENV = "TEELAB_BOOT_REQUEST"
# The kernel's five sockets, in jupyter_client's order; the bundle carries a port for each.
PORT_NAMES = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
MAX_FRAME = 1 << 20  # evidence is a few KB; nothing legitimate comes near 1 MiB
_MAX_REASON = 500
_LENGTH = struct.Struct(">I")
_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
_BUNDLE_INFO = PROTOCOL.encode() + b"/bundle"
_READY_LABEL = PROTOCOL.encode() + b"/ready"
_CONTROLLER_LABEL = PROTOCOL.encode() + b"/controller"
_Z85_KEY_SIZE = 40  # a CURVE key in Z85, as zmq.curve_keypair() makes them
# What the boot request may ask the image's boot to be: a Jupyter kernel (the default) or a Dask node
# (teelab.dask.boot). Host-chosen, so it only selects which genuine code runs; the role, certificate and
# everything else a node needs arrive sealed (DaskNodeBundle).
ENTRY_KERNEL = "kernel"
ENTRY_DASK_NODE = "dask-node"
ENTRIES = (ENTRY_KERNEL, ENTRY_DASK_NODE)
MAX_TLS_KEY = 1024  # a DER SubjectPublicKeyInfo (P-256: 91 bytes; RSA-4096: 550)
_TLS_KEY_LABEL = PROTOCOL.encode() + b"/tls-key"
DASK_ROLES = ("scheduler", "worker")
_MAX_PEM = 16 * 1024


class HandshakeError(TeelabError):
    """A handshake message was malformed, out of order, or the peer went away."""


# -- strict field readers ------------------------------------------------------------------------------


def _field(data: Mapping[str, object], key: str, kind: type, what: str) -> Any:
    value = data.get(key)
    # bool is an int in Python; a port or a flag of the wrong kind is still malformed.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise HandshakeError(f"{what}: {key} is missing or not a {kind.__name__}")
    return value


def _optional_str(data: Mapping[str, object], key: str, what: str) -> str | None:
    return None if data.get(key) is None else str(_field(data, key, str, what))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise HandshakeError(f"{what} is missing or not a string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise HandshakeError(f"{what} is not base64") from None


def _unhex(value: str, what: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise HandshakeError(f"{what} is not hex") from None


def _reason(value: object) -> str:
    return str(value)[:_MAX_REASON] if isinstance(value, str) else "no reason given"


# -- the messages on the answer channel ----------------------------------------------------------------

_M = TypeVar("_M", bound="Message")


class Message:
    """A frame's content: a JSON object whose ``type`` names the message."""

    kind: ClassVar[str]

    def to_json(self) -> dict[str, object]:
        raise NotImplementedError

    @classmethod
    def _decode(cls: type[_M], message: Mapping[str, object]) -> _M:
        raise NotImplementedError

    @classmethod
    def from_json(cls: type[_M], message: Mapping[str, object]) -> _M:
        if message.get("type") != cls.kind:
            raise HandshakeError(f"expected a {cls.kind} message, got {str(message.get('type'))[:40]!r}")
        return cls._decode(message)


@dataclass(frozen=True)
class Hello(Message):
    """TEE → gateway: the enclave's ephemeral key E.pub and evidence over the session binding.

    ``tls_key`` (a Dask node's only): the DER SubjectPublicKeyInfo of the TLS key the node generated, which
    the report data binds too (:func:`session_report_data`); the controller certifies exactly that key.
    """

    kind: ClassVar[str] = "hello"
    enclave_key: bytes
    evidence: Mapping[str, object]  # the evidence envelope as JSON (the verifier side decodes it)
    tls_key: bytes | None = None

    def to_json(self) -> dict[str, object]:
        message: dict[str, object] = {
            "type": self.kind,
            "enclave_key": b64(self.enclave_key),
            "evidence": dict(self.evidence),
        }
        if self.tls_key is not None:
            message["tls_key"] = b64(self.tls_key)
        return message

    @classmethod
    def _decode(cls, message: Mapping[str, object]) -> Hello:
        key = unb64(message.get("enclave_key"), "enclave_key")
        if len(key) != X25519_KEY_SIZE:
            raise HandshakeError(f"enclave_key must be {X25519_KEY_SIZE} bytes, not {len(key)}")
        evidence = message.get("evidence")
        if not isinstance(evidence, dict):
            raise HandshakeError("evidence is missing or not an object")
        tls_key = None
        if message.get("tls_key") is not None:
            tls_key = unb64(message.get("tls_key"), "tls_key")
            if not 0 < len(tls_key) <= MAX_TLS_KEY:
                raise HandshakeError(f"tls_key must be 1 to {MAX_TLS_KEY} bytes, not {len(tls_key)}")
        return cls(key, evidence, tls_key)


@dataclass(frozen=True)
class Refused(Message):
    """Gateway → TEE: the evidence did not pass; ``reason`` is only the failed check's name."""

    kind: ClassVar[str] = "refused"
    reason: str

    def to_json(self) -> dict[str, object]:
        return {"type": self.kind, "reason": self.reason}

    @classmethod
    def _decode(cls, message: Mapping[str, object]) -> Refused:
        return cls(_reason(message.get("reason")))


@dataclass(frozen=True)
class SealedBundle(Message):
    """Gateway → TEE: the :class:`SessionBundle` sealed to the attested E.pub (:func:`seal_bundle`), and the
    controller's signature over it (:func:`sign_bundle`): the boot opens nothing its controller did not sign."""

    kind: ClassVar[str] = "bundle"
    sealed: bytes
    signature: bytes

    def to_json(self) -> dict[str, object]:
        return {"type": self.kind, "sealed": b64(self.sealed), "signature": b64(self.signature)}

    @classmethod
    def _decode(cls, message: Mapping[str, object]) -> SealedBundle:
        signature = unb64(message.get("signature"), "signature")
        if len(signature) != SIGNATURE_SIZE:
            raise HandshakeError(f"signature must be {SIGNATURE_SIZE} bytes, not {len(signature)}")
        return cls(unb64(message.get("sealed"), "sealed"), signature)


@dataclass(frozen=True)
class Failed(Message):
    """TEE → gateway: the bundle opened but the kernel could not start (the error's type name only)."""

    kind: ClassVar[str] = "failed"
    reason: str

    def to_json(self) -> dict[str, object]:
        return {"type": self.kind, "reason": self.reason}

    @classmethod
    def _decode(cls, message: Mapping[str, object]) -> Failed:
        return cls(_reason(message.get("reason")))


@dataclass(frozen=True)
class Ready(Message):
    """TEE → gateway: the kernel listens; ``confirm`` is :func:`ready_confirmation`."""

    kind: ClassVar[str] = "ready"
    confirm: bytes

    def to_json(self) -> dict[str, object]:
        return {"type": self.kind, "confirm": b64(self.confirm)}

    @classmethod
    def _decode(cls, message: Mapping[str, object]) -> Ready:
        return cls(unb64(message.get("confirm"), "confirm"))


def decode_one_of(message: Mapping[str, object], *kinds: type[Message]) -> Message:
    """``message`` as whichever of ``kinds`` its ``type`` names; anything else is a HandshakeError."""
    for kind in kinds:
        if message.get("type") == kind.kind:
            return kind.from_json(message)
    expected = " or ".join(kind.kind for kind in kinds)
    raise HandshakeError(f"expected a {expected} message, got {str(message.get('type'))[:40]!r}")


# -- the session bundle (the plaintext the SealedBundle carries) ----------------------------------------


@dataclass(frozen=True)
class KeyBrokerSection:
    """Where the kernel's dataset reader finds its key broker, and the session grant the gateway obtained.

    ``grant`` and ``kbs_key`` are absent when no broker answered while the session was attested: the kernel
    still starts, and reading a dataset then says why not.
    """

    address: str  # HOST:PORT or grpcs://HOST:PORT
    store: str  # the dataset store's fsspec URL
    user: str  # whom the grant names
    kbs_key: bytes | None = None  # the broker's pinned HPKE key: the kernel seals the grant to it
    kbs_ca: str | None = None  # PEM CA of a broker at grpcs:// with a private CA
    grant: str | None = None
    grant_expires_at: datetime | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "address": self.address,
            "store": self.store,
            "user": self.user,
            "kbs_key": self.kbs_key.hex() if self.kbs_key is not None else None,
            "kbs_ca": self.kbs_ca,
            "grant": self.grant,
            "grant_expires_at": self.grant_expires_at.isoformat() if self.grant_expires_at else None,
        }

    @classmethod
    def from_json(cls, data: object) -> KeyBrokerSection:
        what = "the bundle's key broker section"
        if not isinstance(data, dict):
            raise HandshakeError(f"{what} is not an object")
        key = _optional_str(data, "kbs_key", what)
        expires = _optional_str(data, "grant_expires_at", what)
        try:
            expires_at = datetime.fromisoformat(expires) if expires is not None else None
        except ValueError:
            raise HandshakeError(f"{what}: grant_expires_at is not an ISO time") from None
        return cls(
            address=_field(data, "address", str, what),
            store=_field(data, "store", str, what),
            user=_field(data, "user", str, what),
            kbs_key=_unhex(key, "kbs_key") if key is not None else None,
            kbs_ca=_optional_str(data, "kbs_ca", what),
            grant=_optional_str(data, "grant", what),
            grant_expires_at=expires_at,
        )


@dataclass(frozen=True)
class SessionBundle:
    """What only the attested enclave may learn: the kernel's connection secrets and the attestation result."""

    session_id: str
    kernel_id: str | None
    ip: str
    ports: tuple[int, ...]  # one per name in PORT_NAMES, in that order
    key: bytes  # the HMAC key H
    signature_scheme: str
    curve_publickey: bytes  # K.pub, Z85
    curve_secretkey: bytes  # K.sec, Z85
    attestation: Mapping[str, object]  # the gateway's attestation result, as `teelab evidence verify --json`
    key_broker: KeyBrokerSection | None = None
    transport: str = "tcp"

    def port(self, name: str) -> int:
        return self.ports[PORT_NAMES.index(name)]

    def to_json(self) -> dict[str, object]:
        return {
            "session_id": self.session_id,
            "kernel_id": self.kernel_id,
            "ip": self.ip,
            "transport": self.transport,
            **dict(zip(PORT_NAMES, self.ports, strict=True)),
            "key": self.key.decode("ascii"),
            "signature_scheme": self.signature_scheme,
            "curve_publickey": self.curve_publickey.decode("ascii"),
            "curve_secretkey": self.curve_secretkey.decode("ascii"),
            "attestation": dict(self.attestation),
            "key_broker": self.key_broker.to_json() if self.key_broker is not None else None,
        }

    @classmethod
    def from_json(cls, data: object) -> SessionBundle:
        what = "the session bundle"
        if not isinstance(data, dict):
            raise HandshakeError(f"{what} is not a JSON object")
        ports = tuple(_field(data, name, int, what) for name in PORT_NAMES)
        if not all(0 < port < 65536 for port in ports):
            raise HandshakeError(f"{what}: a port is out of range")
        if data.get("transport") != "tcp":
            raise HandshakeError(f"{what}: the transport must be tcp")
        curve = [_field(data, name, str, what) for name in ("curve_publickey", "curve_secretkey")]
        if any(len(key) != _Z85_KEY_SIZE or not key.isascii() for key in curve):
            raise HandshakeError(f"{what}: a CURVE key is not {_Z85_KEY_SIZE} Z85 characters")
        key = _field(data, "key", str, what)
        if not key or not key.isascii():
            raise HandshakeError(f"{what}: the HMAC key is empty or not ASCII")
        attestation = _field(data, "attestation", dict, what)
        broker = data.get("key_broker")
        return cls(
            session_id=_field(data, "session_id", str, what),
            kernel_id=_optional_str(data, "kernel_id", what),
            ip=_field(data, "ip", str, what),
            ports=ports,
            key=key.encode("ascii"),
            signature_scheme=_field(data, "signature_scheme", str, what),
            curve_publickey=curve[0].encode("ascii"),
            curve_secretkey=curve[1].encode("ascii"),
            attestation=attestation,
            key_broker=KeyBrokerSection.from_json(broker) if broker is not None else None,
        )


def _pem(data: Mapping[str, object], key: str, what: str, marker: str) -> str:
    value = _field(data, key, str, what)
    if len(value) > _MAX_PEM or f"-----BEGIN {marker}-----" not in value or not value.isascii():
        raise HandshakeError(f"{what}: {key} is not a PEM {marker.lower()}")
    return str(value)


MAX_IDLE_TIMEOUT = 30 * 24 * 3600.0  # a month: longer is "never", which is None


@dataclass(frozen=True)
class DaskNodeBundle:
    """What only an attested Dask node may learn (teelab.dask; docs/protocols/session-handshake.md).

    ``certificate`` is the cluster CA's certificate for the TLS key the node's hello bound, naming the role
    and name (SAN URI ``teelab-dask://ROLE/NAME``); ``address`` is where the scheduler listens (the
    scheduler binds it, a worker connects to it); ``key`` only confirms readiness (:func:`ready_confirmation`).
    A worker's ``key_broker`` is the grant the controller's session delegated to this node's E.pub.
    """

    cluster_id: str
    role: str  # one of DASK_ROLES
    name: str
    key: bytes  # 32 random bytes, hex on the wire
    certificate: str  # PEM
    ca_certificate: str  # PEM
    address: str  # tls://HOST:PORT
    nthreads: int = 1
    key_broker: KeyBrokerSection | None = None
    attestation: Mapping[str, object] | None = None  # the controller's result for this node
    # A scheduler closes itself after this many seconds with no client and no task (None: never).
    idle_timeout: float | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "dask": {
                "cluster_id": self.cluster_id,
                "role": self.role,
                "name": self.name,
                "key": self.key.hex(),
                "certificate": self.certificate,
                "ca_certificate": self.ca_certificate,
                "address": self.address,
                "nthreads": self.nthreads,
                "key_broker": self.key_broker.to_json() if self.key_broker is not None else None,
                "attestation": dict(self.attestation) if self.attestation is not None else None,
                "idle_timeout": self.idle_timeout,
            }
        }

    @classmethod
    def from_json(cls, data: object) -> DaskNodeBundle:
        what = "the Dask node bundle"
        if not isinstance(data, dict) or not isinstance(data.get("dask"), dict):
            raise HandshakeError(f"{what} has no dask section")
        section: dict[str, object] = data["dask"]
        role = _field(section, "role", str, what)
        if role not in DASK_ROLES:
            raise HandshakeError(f"{what}: unknown role {role[:40]!r}")
        key = _unhex(_field(section, "key", str, what), "key")
        if len(key) != 32:
            raise HandshakeError(f"{what}: the confirmation key is not 32 bytes")
        name = _field(section, "name", str, what)
        if not 0 < len(name) <= 200 or not name.isprintable():
            raise HandshakeError(f"{what}: the node name is empty, too long or not printable")
        address = _field(section, "address", str, what)
        host, _, port = address.removeprefix("tls://").rpartition(":")
        if not address.startswith("tls://") or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise HandshakeError(f"{what}: the address is not tls://HOST:PORT")
        nthreads = _field(section, "nthreads", int, what)
        if not 0 < nthreads <= 1024:
            raise HandshakeError(f"{what}: nthreads is out of range")
        broker = section.get("key_broker")
        attestation = section.get("attestation")
        if attestation is not None and not isinstance(attestation, dict):
            raise HandshakeError(f"{what}: attestation is not an object")
        idle_timeout = section.get("idle_timeout")
        if idle_timeout is not None and (
            isinstance(idle_timeout, bool)
            or not isinstance(idle_timeout, int | float)
            or not 0 < idle_timeout <= MAX_IDLE_TIMEOUT
        ):
            raise HandshakeError(
                f"{what}: idle_timeout is not a number of seconds in (0, {MAX_IDLE_TIMEOUT}]"
            )
        return cls(
            cluster_id=_field(section, "cluster_id", str, what),
            role=role,
            name=name,
            key=key,
            certificate=_pem(section, "certificate", what, "CERTIFICATE"),
            ca_certificate=_pem(section, "ca_certificate", what, "CERTIFICATE"),
            address=address,
            nthreads=nthreads,
            key_broker=KeyBrokerSection.from_json(broker) if broker is not None else None,
            attestation=attestation,
            idle_timeout=float(idle_timeout) if idle_timeout is not None else None,
        )


Bundle = SessionBundle | DaskNodeBundle


# -- the boot request (gateway → TEE through the host, in the environment) -----------------------------


@dataclass(frozen=True)
class BootRequest:
    """What the gateway gives the in-TEE boot through the host: nothing secret.

    ``controller_key`` is ``G.pub``, the launching gateway's identity: the boot accepts a session bundle only
    with its signature, and the backend binds ``SHA-256(G.pub)`` into the TEE's evidence at launch.
    """

    nonce: bytes
    host: str
    port: int
    controller_key: bytes
    entry: str = ENTRY_KERNEL  # which boot of the image answers (ENTRIES); absent from a kernel's request

    def to_env(self) -> str:
        request: dict[str, object] = {
            "protocol": PROTOCOL,
            "nonce": self.nonce.hex(),
            "respond_to": f"{self.host}:{self.port}",
            "controller_key": self.controller_key.hex(),
        }
        if self.entry != ENTRY_KERNEL:
            request["entry"] = self.entry
        return json.dumps(request)

    @classmethod
    def from_env(cls, value: str | None) -> BootRequest:
        if not value:
            raise HandshakeError(f"no boot request: {BOOT_REQUEST_ENV} is not set")
        try:
            data = json.loads(value)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            if data.get("protocol") != PROTOCOL:
                raise ValueError(f"unsupported protocol {str(data.get('protocol'))[:40]!r}")
            nonce = bytes.fromhex(data["nonce"])
            controller_key = bytes.fromhex(data["controller_key"])
            host, _, port = str(data["respond_to"]).rpartition(":")
            if len(nonce) != NONCE_SIZE or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError("nonce or response address has the wrong shape")
            if len(controller_key) != CONTROLLER_KEY_SIZE:
                raise ValueError(f"controller_key must be {CONTROLLER_KEY_SIZE} bytes")
            entry = data.get("entry", ENTRY_KERNEL)
            if entry not in ENTRIES:
                raise ValueError(f"unknown entry {str(entry)[:40]!r}")
            return cls(nonce=nonce, host=host, port=int(port), controller_key=controller_key, entry=entry)
        except (ValueError, KeyError, TypeError, RecursionError) as error:
            raise HandshakeError(f"malformed boot request: {error}") from None


def requested_entry(value: str | None) -> str:
    """Which boot the request asks for; :data:`ENTRY_KERNEL` for anything malformed (the kernel boot then
    refuses the request and says why)."""
    try:
        return BootRequest.from_env(value).entry
    except HandshakeError:
        return ENTRY_KERNEL


# -- the bytes both ends compute -----------------------------------------------------------------------


def session_report_data(enclave_key: bytes, nonce: bytes, tls_key: bytes | None = None) -> bytes:
    """``SHA-512("teelab/session/v1" ‖ E.pub ‖ N)``: what the evidence must carry as report_data.

    A Dask node's hello also binds its TLS key: ``SHA-512("teelab/session/v1/tls-key" ‖ E.pub ‖ N ‖
    SHA-256(T.spki))`` — another label and length, so neither form can pass for the other.
    """
    if tls_key is None:
        return hashlib.sha512(PROTOCOL.encode() + enclave_key + nonce).digest()
    return hashlib.sha512(_TLS_KEY_LABEL + enclave_key + nonce + hashlib.sha256(tls_key).digest()).digest()


def seal_bundle(enclave_key: bytes, nonce: bytes, bundle: Bundle) -> bytes:
    """Encrypt the session bundle so only the holder of the attested key's secret can read it."""
    public = X25519PublicKey.from_public_bytes(enclave_key)
    return _SUITE.encrypt(json.dumps(bundle.to_json()).encode(), public, info=_BUNDLE_INFO + nonce)


def decrypt_bundle(enclave_secret: X25519PrivateKey, nonce: bytes, sealed: bytes) -> bytes:
    """The bundle's plaintext, not yet parsed: check its controller's signature before reading it."""
    try:
        return _SUITE.decrypt(sealed, enclave_secret, info=_BUNDLE_INFO + nonce)
    except (InvalidTag, ValueError):
        raise HandshakeError("the session bundle does not open with this enclave's key") from None


def parse_bundle(plaintext: bytes) -> SessionBundle:
    try:
        data = json.loads(plaintext)
    except (ValueError, RecursionError):
        raise HandshakeError("the session bundle is not JSON") from None
    return SessionBundle.from_json(data)


def open_bundle(enclave_secret: X25519PrivateKey, nonce: bytes, sealed: bytes) -> SessionBundle:
    return parse_bundle(decrypt_bundle(enclave_secret, nonce, sealed))


def parse_dask_bundle(plaintext: bytes) -> DaskNodeBundle:
    try:
        data = json.loads(plaintext)
    except (ValueError, RecursionError):
        raise HandshakeError("the Dask node bundle is not JSON") from None
    return DaskNodeBundle.from_json(data)


def controller_hash(controller_key: bytes) -> bytes:
    """``SHA-256(G.pub)``: the controller the platform binds into the kernel's evidence (ARCHITECTURE §3)."""
    return hashlib.sha256(controller_key).digest()


def _controller_message(sealed: bytes, nonce: bytes, enclave_key: bytes) -> bytes:
    # Fixed-size fields first, the variable-length ciphertext last: the encoding is unambiguous.
    return _CONTROLLER_LABEL + nonce + enclave_key + sealed


def sign_bundle(controller: Ed25519PrivateKey, sealed: bytes, nonce: bytes, enclave_key: bytes) -> bytes:
    """G's Ed25519 signature over the sealed bundle, this session's nonce and the attested E.pub.

    cryptography's HPKE has no auth mode (RFC 9180 mode_auth), so the bundle is sealed in base mode and
    signed: only the gateway holding G can make a bundle the boot accepts, for this session only.
    """
    return controller.sign(_controller_message(sealed, nonce, enclave_key))


def check_bundle_signature(
    controller_key: bytes, signature: bytes, sealed: bytes, nonce: bytes, enclave_key: bytes
) -> None:
    """Raise HandshakeError unless ``controller_key`` (G.pub) signed this sealed bundle for this session."""
    try:
        Ed25519PublicKey.from_public_bytes(controller_key).verify(
            signature, _controller_message(sealed, nonce, enclave_key)
        )
    except (InvalidSignature, ValueError):
        raise HandshakeError(
            "the session bundle was not authenticated by this kernel's controller (the gateway that launched it)"
        ) from None


def ready_confirmation(hmac_key: bytes, nonce: bytes, enclave_key: bytes) -> bytes:
    """Proof that the enclave opened the bundle: only a holder of the session's HMAC key can compute it."""
    return hmac.new(hmac_key, _READY_LABEL + nonce + enclave_key, hashlib.sha256).digest()


def check_ready(hmac_key: bytes, nonce: bytes, enclave_key: bytes, confirmation: bytes) -> bool:
    return hmac.compare_digest(ready_confirmation(hmac_key, nonce, enclave_key), confirmation)


# -- framing: 4-byte big-endian length, then UTF-8 JSON ------------------------------------------------


def encode_frame(message: Message) -> bytes:
    body = json.dumps(message.to_json(), separators=(",", ":")).encode()
    if len(body) > MAX_FRAME:
        raise HandshakeError(f"handshake message of {len(body)} bytes exceeds the {MAX_FRAME}-byte limit")
    return _LENGTH.pack(len(body)) + body


def decode_body(body: bytes) -> dict[str, object]:
    try:
        message = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise HandshakeError(f"handshake message is not JSON: {error}") from None
    if not isinstance(message, dict):
        raise HandshakeError("handshake message is not a JSON object")
    return message


def _length(header: bytes) -> int:
    length: int = _LENGTH.unpack(header)[0]
    if length > MAX_FRAME:
        raise HandshakeError(f"handshake message announces {length} bytes, over the {MAX_FRAME}-byte limit")
    return length


async def read_frame(reader: asyncio.StreamReader) -> dict[str, object]:
    try:
        body = await reader.readexactly(_length(await reader.readexactly(_LENGTH.size)))
    except asyncio.IncompleteReadError:
        raise HandshakeError("the TEE closed the handshake channel") from None
    return decode_body(body)


def recv_frame(sock: socket.socket) -> dict[str, object]:
    def exactly(n: int) -> bytes:
        chunks = bytearray()
        while len(chunks) < n:
            chunk = sock.recv(n - len(chunks))
            if not chunk:
                raise HandshakeError("the gateway closed the handshake channel")
            chunks.extend(chunk)
        return bytes(chunks)

    return decode_body(exactly(_length(exactly(_LENGTH.size))))


def send_frame(sock: socket.socket, message: Message) -> None:
    sock.sendall(encode_frame(message))
