"""The bytes both ends of ``teelab/kbs/v1`` compute (docs/protocols/kbs.md), defined once.

The report_data binding, the HPKE suite and info strings, and the enclave-key hash. The kernel (client) and
the key broker (server) import these, so a change to the binding is one change, seen by both.
"""

from __future__ import annotations

import hashlib
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from teelab.sealed_store.kbs.reasons import Reason, denied

PROTOCOL = "teelab/kbs/v1"
SERVICE_NAME = "teelab.kbs.v1.KeyBroker"  # the gRPC service (protos/teelab/kbs/v1/kbs.proto)
NONCE_SIZE = 32
X25519_KEY_SIZE = 32
DEK_SIZE = 32
HPKE_SUITE_NAME = "X25519/HKDF-SHA256/AES-256-GCM"
SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)

_REPORT_DATA_LABEL = PROTOCOL.encode()
RELEASE_INFO = PROTOCOL.encode() + b"/dek"
REGISTER_INFO = PROTOCOL.encode() + b"/register"
GRANT_INFO = PROTOCOL.encode() + b"/grant"
DELEGATE_LABEL = PROTOCOL.encode() + b"/delegate"
DELEGATED_INFO = PROTOCOL.encode() + b"/delegated"


def release_request_digest(dataset: str, version: int | None) -> bytes:
    """SHA-256 of what a release asks for: ``dataset ‖ 0 ‖ u32be(version)``, version 0 meaning "current"."""
    return hashlib.sha256(dataset.encode() + b"\x00" + struct.pack(">I", version or 0)).digest()


def release_report_data(
    nonce: bytes, enclave_key: bytes, grant: bytes, *, dataset: str, version: int | None
) -> bytes:
    """``SHA-512("teelab/kbs/v1" ‖ nonce ‖ E.pub ‖ SHA-256(grant) ‖ SHA-256(dataset ‖ 0 ‖ u32be(version)))``.

    It binds the evidence to this challenge (freshness), to the key the data key is sealed to (only this
    enclave can open the answer), to the session grant (a grant is useless beside another enclave's
    evidence) and to the request — dataset and version, 0 for "the current one" — so a host in the middle
    cannot turn a request for the current version into one for an old version. Every part has a fixed
    length, so the concatenation is unambiguous.
    """
    return hashlib.sha512(
        _REPORT_DATA_LABEL
        + nonce
        + enclave_key
        + hashlib.sha256(grant).digest()
        + release_request_digest(dataset, version)
    ).digest()


def release_answer_info(nonce: bytes, dataset: str, version: int, manifest_sha256: str) -> bytes:
    """HPKE info of a released data key: the nonce and the answer — dataset, the version released and its
    manifest's digest. A rewritten version or manifest in the answer makes the key fail to open."""
    answer = dataset.encode() + b"\x00" + struct.pack(">I", version) + manifest_sha256.encode()
    return RELEASE_INFO + nonce + hashlib.sha256(answer).digest()


def enclave_key_sha256(enclave_key: bytes) -> str:
    """Hex SHA-256 of E.pub: the ``ekh`` claim a session grant is bound to."""
    return hashlib.sha256(enclave_key).hexdigest()


def register_info(dataset: str, version: int) -> bytes:
    """HPKE info for a data key sealed to the KBS: names the dataset version it is for, so a sealed key
    captured for one version cannot be registered as another."""
    return REGISTER_INFO + b"\x00" + dataset.encode() + b"\x00" + struct.pack(">I", version)


def seal_dek_for_kbs(kbs_public_key: bytes, dataset: str, version: int, dek: bytes) -> bytes:
    """Owner side of registration: the data key sealed to the KBS's HPKE key (never plaintext on the wire)."""
    _check_dek(dek)
    public = X25519PublicKey.from_public_bytes(kbs_public_key)
    return SUITE.encrypt(dek, public, info=register_info(dataset, version))


def open_registered_dek(kbs_secret: X25519PrivateKey, dataset: str, version: int, sealed: bytes) -> bytes:
    try:
        dek = SUITE.decrypt(sealed, kbs_secret, info=register_info(dataset, version))
    except (InvalidTag, ValueError):
        raise denied(
            Reason.DEK_INVALID, f"the sealed data key does not open for {dataset} version {version}"
        ) from None
    _check_dek(dek)
    return dek


def seal_dek_for_enclave(
    enclave_key: bytes, nonce: bytes, dek: bytes, *, dataset: str, version: int, manifest_sha256: str
) -> bytes:
    """Server side of release: the data key sealed to the attested enclave's key E.pub, bound to the answer."""
    public = X25519PublicKey.from_public_bytes(enclave_key)
    return SUITE.encrypt(dek, public, info=release_answer_info(nonce, dataset, version, manifest_sha256))


def open_released_dek(
    enclave_secret: X25519PrivateKey,
    nonce: bytes,
    sealed: bytes,
    *,
    dataset: str,
    version: int,
    manifest_sha256: str,
) -> bytes:
    """Kernel side of release: only the holder of E's secret opens it, and only for the answer it was sealed
    with (the dataset, version and manifest digest the broker stated)."""
    try:
        dek = SUITE.decrypt(
            sealed, enclave_secret, info=release_answer_info(nonce, dataset, version, manifest_sha256)
        )
    except (InvalidTag, ValueError):
        raise denied(
            Reason.PROTOCOL_ERROR,
            "the released data key does not open with this enclave's key for the answer as received "
            "(another key, or a version or manifest rewritten on the way)",
        ) from None
    if len(dek) != DEK_SIZE:
        raise denied(Reason.PROTOCOL_ERROR, f"the released data key is {len(dek)} bytes, not {DEK_SIZE}")
    return dek


def seal_grant_for_kbs(kbs_public_key: bytes, nonce: bytes, grant: str) -> bytes:
    """The session grant as it travels in a release: sealed to the broker, bound to this release's nonce."""
    public = X25519PublicKey.from_public_bytes(kbs_public_key)
    return SUITE.encrypt(grant.encode(), public, info=GRANT_INFO + nonce)


def open_sealed_grant(kbs_secret: X25519PrivateKey, nonce: bytes, sealed: bytes) -> str:
    try:
        return SUITE.decrypt(sealed, kbs_secret, info=GRANT_INFO + nonce).decode()
    except (InvalidTag, ValueError, UnicodeDecodeError):
        raise ValueError("it does not open with this key broker's key for this nonce") from None


def delegation_request_digest(
    child_enclave_key_sha256: str, child_controller_sha256: str, datasets: tuple[str, ...], ttl_seconds: int
) -> bytes:
    """SHA-256 of what a delegation asks for: ``child ekh (32) ‖ child controller (32) ‖ u32be(ttl, 0: until
    the parent expires) ‖ u32be(len(datasets)) ‖ (u8 len ‖ name)*`` (names are at most 128 ASCII bytes)."""
    body = bytes.fromhex(child_enclave_key_sha256) + bytes.fromhex(child_controller_sha256)
    body += struct.pack(">II", ttl_seconds, len(datasets))
    for name in datasets:
        encoded = name.encode()
        body += struct.pack(">B", len(encoded)) + encoded
    return hashlib.sha256(body).digest()


def delegation_report_data(nonce: bytes, enclave_key: bytes, grant: bytes, request_digest: bytes) -> bytes:
    """``SHA-512("teelab/kbs/v1/delegate" ‖ nonce ‖ E.pub ‖ SHA-256(parent grant) ‖ request digest)``.

    Fresh (the nonce), from the session the parent grant names (E.pub), for this parent grant, and for this
    child — key, controller, datasets and lifetime — so a host in the middle cannot redirect the child grant
    to an enclave of its own or widen it. Its label differs from a release's: neither passes as the other.
    """
    return hashlib.sha512(
        DELEGATE_LABEL + nonce + enclave_key + hashlib.sha256(grant).digest() + request_digest
    ).digest()


def seal_delegated_grant(enclave_key: bytes, nonce: bytes, grant: str) -> bytes:
    """Server side of delegation: the child grant sealed to the parent session's E.pub for this nonce."""
    public = X25519PublicKey.from_public_bytes(enclave_key)
    return SUITE.encrypt(grant.encode(), public, info=DELEGATED_INFO + nonce)


def open_delegated_grant(enclave_secret: X25519PrivateKey, nonce: bytes, sealed: bytes) -> str:
    try:
        return SUITE.decrypt(sealed, enclave_secret, info=DELEGATED_INFO + nonce).decode("ascii")
    except (InvalidTag, ValueError, UnicodeDecodeError):
        raise denied(
            Reason.PROTOCOL_ERROR, "the delegated grant does not open with this session's key for this nonce"
        ) from None


def _check_dek(dek: bytes) -> None:
    if len(dek) != DEK_SIZE:
        raise denied(Reason.DEK_INVALID, f"a data key is {DEK_SIZE} bytes, not {len(dek)}")
