"""The ECDSA P-256 and X.509 primitives DCAP needs, with every failure mode turned into a plain answer.

Intel signatures are raw ``r || s`` (32 bytes each) and keys raw ``X || Y``; ``cryptography`` wants DER
signatures and SEC1 points. Keys repeat across quotes from one platform, so their loading is cached.
"""

from __future__ import annotations

from functools import lru_cache

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

_P256 = ec.SECP256R1()
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())


@lru_cache(maxsize=4096)
def p256_key(raw: bytes) -> ec.EllipticCurvePublicKey | None:
    """The P-256 key whose raw ``X || Y`` is ``raw``, or None if that is not a point on the curve."""
    if len(raw) != 64:
        return None
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(_P256, b"\x04" + raw)
    except ValueError:
        return None


def cert_p256_key(cert: x509.Certificate) -> ec.EllipticCurvePublicKey | None:
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return None
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    return None


def verify_raw(key: ec.EllipticCurvePublicKey, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` (raw r || s) is ``key``'s ECDSA-SHA256 signature over ``message``."""
    if len(signature) != 64:
        return False
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    try:
        key.verify(der, message, _ECDSA_SHA256)
    except InvalidSignature:
        return False
    return True


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> str | None:
    """None if ``issuer`` signed ``cert`` (names chain and the signature verifies), else the reason."""
    try:
        cert.verify_directly_issued_by(issuer)
    except InvalidSignature:
        return "its signature does not verify with the issuer's key"
    except ValueError as exc:
        return str(exc)
    except (TypeError, UnsupportedAlgorithm) as exc:
        return f"its signature cannot be checked ({exc})"
    return None


def crl_signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    if crl.issuer != issuer.subject:
        return False
    try:
        key = issuer.public_key()
        # Intel (and teelab's simulated platform) sign CRLs with ECDSA; other key types are not expected.
        return isinstance(key, ec.EllipticCurvePublicKey) and crl.is_signature_valid(key)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()
