"""The attested-session handshake (protocol ``teelab/session/v1``, docs/protocols/session-handshake.md).

Both ends live here so the bytes each side computes are defined once: the report-data binding, the HPKE
suite and info string that seal the session bundle to the enclave's ephemeral key, and the key
confirmation the enclave sends back once the kernel is listening. The gateway side never hands the bundle
out until :func:`teelab.gateway.verifier.verify_evidence` has accepted evidence bound to this session's
nonce and enclave key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from teelab.gateway.wire import HandshakeError

PROTOCOL = "teelab/session/v1"
NONCE_SIZE = 32
X25519_KEY_SIZE = 32
_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
_BUNDLE_INFO = PROTOCOL.encode() + b"/bundle"
_READY_LABEL = PROTOCOL.encode() + b"/ready"


def session_report_data(enclave_key: bytes, nonce: bytes) -> bytes:
    """``SHA-512("teelab/session/v1" ‖ E.pub ‖ N)``: what the evidence must carry as report_data."""
    return hashlib.sha512(PROTOCOL.encode() + enclave_key + nonce).digest()


def seal_bundle(enclave_key: bytes, nonce: bytes, bundle: dict[str, object]) -> bytes:
    """Encrypt the session bundle so only the holder of the attested key's secret can read it."""
    public = X25519PublicKey.from_public_bytes(enclave_key)
    return _SUITE.encrypt(json.dumps(bundle).encode(), public, info=_BUNDLE_INFO + nonce)


def open_bundle(enclave_secret: X25519PrivateKey, nonce: bytes, sealed: bytes) -> dict[str, object]:
    try:
        plaintext = _SUITE.decrypt(sealed, enclave_secret, info=_BUNDLE_INFO + nonce)
    except (InvalidTag, ValueError):
        raise HandshakeError("the session bundle does not open with this enclave's key") from None
    try:
        bundle = json.loads(plaintext)
    except (ValueError, RecursionError):
        raise HandshakeError("the session bundle is not JSON") from None
    if not isinstance(bundle, dict):
        raise HandshakeError("the session bundle is not a JSON object")
    return bundle


def ready_confirmation(hmac_key: bytes, nonce: bytes, enclave_key: bytes) -> bytes:
    """Proof that the enclave opened the bundle: only a holder of the session's HMAC key can compute it."""
    return hmac.new(hmac_key, _READY_LABEL + nonce + enclave_key, hashlib.sha256).digest()


def check_ready(hmac_key: bytes, nonce: bytes, enclave_key: bytes, confirmation: bytes) -> bool:
    return hmac.compare_digest(ready_confirmation(hmac_key, nonce, enclave_key), confirmation)


@dataclass(frozen=True)
class BootRequest:
    """What the gateway gives the in-TEE boot through the host: nothing secret."""

    nonce: bytes
    host: str
    port: int

    def to_env(self) -> str:
        return json.dumps(
            {"protocol": PROTOCOL, "nonce": self.nonce.hex(), "respond_to": f"{self.host}:{self.port}"}
        )

    @classmethod
    def from_env(cls, value: str | None) -> BootRequest:
        if not value:
            raise HandshakeError("no boot request: TEELAB_BOOT_REQUEST is not set")
        try:
            data = json.loads(value)
            if data.get("protocol") != PROTOCOL:
                raise ValueError(f"unsupported protocol {data.get('protocol')!r}")
            nonce = bytes.fromhex(data["nonce"])
            host, _, port = str(data["respond_to"]).rpartition(":")
            if len(nonce) != NONCE_SIZE or not host:
                raise ValueError("nonce or response address has the wrong shape")
            return cls(nonce=nonce, host=host, port=int(port))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise HandshakeError(f"malformed boot request: {error}") from None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise HandshakeError(f"{what} is missing or not a string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise HandshakeError(f"{what} is not base64") from None


def parse_hello(message: dict[str, object]) -> tuple[bytes, dict[str, object]]:
    """The enclave's first message: its ephemeral public key and its evidence (as Evidence JSON)."""
    if message.get("type") != "hello":
        raise HandshakeError(f"expected a hello message, got {message.get('type')!r}")
    key = unb64(message.get("enclave_key"), "enclave_key")
    if len(key) != X25519_KEY_SIZE:
        raise HandshakeError(f"enclave_key must be {X25519_KEY_SIZE} bytes, not {len(key)}")
    evidence = message.get("evidence")
    if not isinstance(evidence, dict):
        raise HandshakeError("evidence is missing or not an object")
    return key, evidence


def parse_ready(message: dict[str, object]) -> bytes:
    kind = message.get("type")
    if kind == "failed":
        raise HandshakeError(f"the kernel failed to start inside the TEE: {str(message.get('reason'))[:500]}")
    if kind != "ready":
        raise HandshakeError(f"expected a ready message, got {kind!r}")
    return unb64(message.get("confirm"), "confirm")
