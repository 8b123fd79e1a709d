"""The front door's attestation endpoint: the one format both ends import (docs/hosted-hub.md).

``GET /.well-known/teelab/attestation?nonce=<64 hex digits>`` over TLS to the hub's front door answers JSON
``{"version": 1, "evidence": b64, "evidence_kind": str, "nonce": hex, "tls_spki_sha256": hex,
"collateral": b64 | null}``, where the evidence's report_data is

    SHA-512("teelab/hub-tls/v1" ‖ SHA-256(SubjectPublicKeyInfo of the front door's TLS certificate) ‖ nonce)

so a client that sent a fresh nonce over a TLS connection, and takes the SPKI from that very connection, learns
that the key at the other end of *this* connection is held by the attested front door. The reply's own
``nonce`` and ``tls_spki_sha256`` are only what the front door claims; the client recomputes the binding from
what it knows itself. ``collateral`` is the platform's signed collateral, offered for convenience: every
document in it is signed and checked, so the host providing it is safe.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from teelab.errors import TeelabError

ATTESTATION_PATH = "/.well-known/teelab/attestation"
TLS_DOMAIN = b"teelab/hub-tls/v1"
NONCE_BYTES = 32
VERSION = 1
# Evidence is a few kilobytes and the sim's collateral bundle tens of kilobytes; a reply far larger is hostile.
MAX_REPLY_BYTES = 4 << 20
MAX_POD_FIELDS = 32


class FrontDoorError(TeelabError):
    """The front door (or what answers in its place) sent something unusable, or could not be reached."""


def spki_sha256(certificate_der: bytes) -> bytes:
    """SHA-256 of the certificate's SubjectPublicKeyInfo (DER): the key, whatever certificate carries it."""
    try:
        certificate = x509.load_der_x509_certificate(certificate_der)
        spki = certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    except (ValueError, TypeError) as error:
        raise FrontDoorError(f"the peer's TLS certificate cannot be read: {error}") from None
    return hashlib.sha256(spki).digest()


def front_door_report_data(tls_spki_sha256: bytes, nonce: bytes) -> bytes:
    """``SHA-512("teelab/hub-tls/v1" ‖ SPKI-SHA256 ‖ nonce)``: the report_data of the front door's evidence."""
    if len(tls_spki_sha256) != 32 or len(nonce) != NONCE_BYTES:
        raise FrontDoorError("the TLS key hash is 32 bytes and the nonce 32 bytes")
    return hashlib.sha512(TLS_DOMAIN + tls_spki_sha256 + nonce).digest()


def parse_nonce(text: str) -> bytes:
    """A nonce given as 64 hex digits (what the endpoint's query carries)."""
    try:
        nonce = bytes.fromhex(text)
    except ValueError:
        raise FrontDoorError("the nonce must be hex") from None
    if len(nonce) != NONCE_BYTES:
        raise FrontDoorError(f"the nonce must be {NONCE_BYTES} bytes ({2 * NONCE_BYTES} hex digits)")
    return nonce


@dataclass(frozen=True)
class FrontDoorEvidence:
    """One answer of the attestation endpoint."""

    evidence: bytes
    evidence_kind: str
    nonce: bytes
    tls_spki_sha256: bytes
    collateral: bytes | None = None
    # The hub pod (docs/hosted-hub.md): what else the front door's measured image runs — the hub's config
    # digest, the proxy's files' digest, versions. Absent for a front door alone. Sent over the TLS connection
    # whose key the evidence binds, so it is the measured program's own statement once that binding holds.
    pod: dict[str, str] | None = None

    def to_json(self) -> dict[str, object]:
        pod = {} if self.pod is None else {"pod": dict(self.pod)}
        return {
            **pod,
            "version": VERSION,
            "evidence": base64.b64encode(self.evidence).decode(),
            "evidence_kind": self.evidence_kind,
            "nonce": self.nonce.hex(),
            "tls_spki_sha256": self.tls_spki_sha256.hex(),
            "collateral": base64.b64encode(self.collateral).decode() if self.collateral is not None else None,
        }

    @classmethod
    def from_reply(cls, body: bytes) -> FrontDoorEvidence:
        """Parse the endpoint's reply (untrusted bytes); anything malformed is a FrontDoorError."""
        if len(body) > MAX_REPLY_BYTES:
            raise FrontDoorError(f"the attestation reply is {len(body)} bytes (limit {MAX_REPLY_BYTES})")
        try:
            data = json.loads(body)
            if not isinstance(data, dict) or data.get("version") != VERSION:
                raise ValueError(f"not a version {VERSION} attestation reply")
            collateral = data.get("collateral")
            pod = data.get("pod")
            if pod is not None and not (
                isinstance(pod, dict)
                and len(pod) <= MAX_POD_FIELDS
                and all(isinstance(k, str) and isinstance(v, str) for k, v in pod.items())
            ):
                raise ValueError("'pod' must map names to strings")
            return cls(
                evidence=base64.b64decode(_text(data, "evidence"), validate=True),
                evidence_kind=_text(data, "evidence_kind"),
                nonce=bytes.fromhex(_text(data, "nonce")),
                tls_spki_sha256=bytes.fromhex(_text(data, "tls_spki_sha256")),
                collateral=None if collateral is None else base64.b64decode(str(collateral), validate=True),
                pod=None if pod is None else {str(k): str(v) for k, v in pod.items()},
            )
        except (ValueError, TypeError, binascii.Error, RecursionError) as error:
            raise FrontDoorError(f"malformed attestation reply from the front door: {error}") from None


def _text(data: dict[str, object], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise ValueError(f"{key!r} must be a string")
    return value
