"""AMD's certificate revocation lists: an ARK's CRL names the ASKs/ASVKs AMD has revoked.

AMD KDS publishes one per product line (``https://kdsintf.amd.com/{vcek|vlek}/v1/<product>/crl``, DER,
RSA-PSS signed by the ARK); a host may also put it in the guest's certificate table (the CRL GUID). Either
way it is checked like a certificate: issued by the pinned ARK, signature valid, current at the verification
time. Nothing is fetched implicitly; without a CRL the chain check says revocation was not checked.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from teelab.errors import VerificationError
from teelab.gateway import asn1, pem

CRL_CHECK = "amd_crl"
# AMD's CRLs are a few kilobytes (a handful of revoked serials); far larger is not one.
MAX_CRL_BYTES = 1 << 20


def _fail(detail: str, hint: str | None = None) -> VerificationError:
    return VerificationError(CRL_CHECK, detail, hint=hint)


@dataclass(frozen=True, eq=False)
class AmdCrl:
    der: bytes = field(repr=False)
    issuer_name: bytes = field(repr=False)
    issuer_cn: str
    this_update: datetime
    next_update: datetime | None
    revoked: frozenset[int]
    crl: x509.CertificateRevocationList = field(repr=False)

    def signed_by(self, public_key: object) -> bool:
        return isinstance(public_key, rsa.RSAPublicKey) and _signature_valid(self.der, _spki(public_key))


def _spki(public_key: rsa.RSAPublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@functools.lru_cache(maxsize=64)
def _signature_valid(crl_der: bytes, spki: bytes) -> bool:
    # RSA-4096 PSS: cached, as a CRL is checked against the same ARK at every verification.
    key = serialization.load_der_public_key(spki)
    assert isinstance(key, rsa.RSAPublicKey)
    try:
        return x509.load_der_x509_crl(crl_der).is_signature_valid(key)
    except Exception:  # an algorithm the key cannot check is a "no", never an escape
        return False


def parse_crl(data: bytes) -> AmdCrl:
    """One DER CRL. Raises VerificationError(check="amd_crl") for anything that is not one."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _fail(f"a CRL is bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_CRL_BYTES:
        raise _fail(f"the CRL is {len(data)} bytes; AMD's are a few kilobytes")
    try:
        # cryptography reads trailing garbage leniently in places; the outer element must be exact.
        if asn1.read(data).end != len(data):
            raise _fail("bytes follow the CRL")
        crl = x509.load_der_x509_crl(data)
        revoked = frozenset(entry.serial_number for entry in crl)
        issuer = crl.issuer
        issuer_name = issuer.public_bytes()
        names = issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        issuer_cn = str(names[0].value) if names else issuer.rfc4514_string()
        this_update = crl.last_update_utc
        next_update = crl.next_update_utc
    except VerificationError:
        raise
    except Exception as exc:  # ValueError, or anything else cryptography raises on hostile bytes
        raise _fail(f"not a DER certificate revocation list: {exc}") from None
    return AmdCrl(data, issuer_name, issuer_cn, this_update, next_update, revoked, crl)


def _crl_blocks(blob: bytes) -> list[pem.PemBlock]:
    # Only the CRL blocks are read here; the certificate reader judges the rest of the text.
    try:
        return pem.pem_blocks(blob, what="the certificate text", only="X509 CRL", strict_layout=False)
    except pem.PemError as error:
        raise _fail(error.message) from None


def crls_in_pem(blob: bytes) -> list[AmdCrl]:
    """The ``X509 CRL`` blocks of a PEM text (certificates beside them are left to the certificate reader)."""
    return [parse_crl(block.der) for block in _crl_blocks(blob)]


def without_crls(blob: bytes) -> bytes:
    """``blob`` with its PEM CRL blocks removed."""
    return pem.without_blocks(blob, _crl_blocks(blob))


def certificate_serial(tbs: bytes) -> int:
    """The serial number in a certificate's TBS (after the optional ``[0]`` version)."""
    try:
        children = asn1.read(tbs).children()
        serial = children[1] if children and children[0].tag == asn1.context(0) else children[0]
        serial.expect(asn1.INTEGER, "serialNumber")
        return int.from_bytes(serial.value, "big", signed=True)
    except (asn1.DerError, IndexError) as exc:
        raise _fail(f"cannot read the certificate's serial number: {exc}") from None
