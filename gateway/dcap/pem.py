"""Intel's certificates and CRLs from PEM or DER, read strictly.

The PEM text is split by the gateway's one strict splitter (:mod:`teelab.gateway.pem`): a damaged block fails
the whole chain instead of being skipped, as ``cryptography``'s loader would. Every block must be of the kind
asked for, and nothing may stand between the blocks.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from teelab.errors import VerificationError
from teelab.gateway import pem

# What cryptography raises for damaged certificate or CRL fields (it decodes many of them lazily).
PARSE_ERRORS = (
    ValueError,
    TypeError,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)


def pem_blocks(data: bytes, label: bytes, *, check: str, what: str) -> list[bytes]:
    """The DER payload of every PEM block; each block must carry ``label`` and nothing may be damaged."""
    try:
        blocks = pem.pem_blocks(data, what=what)
    except pem.PemError as error:
        raise VerificationError(check, error.message) from None
    for index, block in enumerate(blocks, 1):
        if block.label != label.decode():
            raise VerificationError(
                check, f"{what}: PEM block {index} is a {block.label}, expected {label.decode()}"
            )
    return [block.der for block in blocks]


def load_certificate_der(der: bytes, *, check: str, what: str) -> x509.Certificate:
    try:
        cert = x509.load_der_x509_certificate(der)
        # cryptography decodes these lazily; read them now so a damaged field fails here, by name.
        cert.version  # noqa: B018
        cert.serial_number  # noqa: B018
        cert.subject  # noqa: B018
        cert.issuer  # noqa: B018
        cert.not_valid_before_utc  # noqa: B018
        cert.not_valid_after_utc  # noqa: B018
        cert.extensions  # noqa: B018
    except PARSE_ERRORS as exc:
        raise VerificationError(check, f"{what} is not a valid X.509 certificate: {exc}") from None
    return cert


def load_certificates(data: bytes, *, check: str, what: str) -> tuple[x509.Certificate, ...]:
    """Every certificate of a PEM chain, in order; a damaged block fails the whole chain."""
    ders = pem_blocks(data, b"CERTIFICATE", check=check, what=what)
    return tuple(
        load_certificate_der(der, check=check, what=f"{what}, certificate {i}")
        for i, der in enumerate(ders, 1)
    )


def crl_der(data: bytes, *, check: str, what: str) -> bytes:
    """The DER of a CRL given as DER or as one PEM ``X509 CRL`` block."""
    if data.lstrip().startswith(b"-----BEGIN "):
        blocks = pem_blocks(data, b"X509 CRL", check=check, what=what)
        if len(blocks) != 1:
            raise VerificationError(check, f"{what} holds {len(blocks)} CRLs, expected one")
        return blocks[0]
    return data


def load_crl(data: bytes, *, check: str, what: str) -> tuple[x509.CertificateRevocationList, frozenset[int]]:
    """The CRL and the serial numbers it revokes."""
    der = crl_der(data, check=check, what=what)
    try:
        crl = x509.load_der_x509_crl(der)
        # cryptography parses lazily; read what verification uses so damage shows up here, by name.
        crl.issuer  # noqa: B018
        crl.last_update_utc  # noqa: B018
        crl.next_update_utc  # noqa: B018
        crl.extensions  # noqa: B018
        revoked = frozenset(entry.serial_number for entry in crl)
    except PARSE_ERRORS as exc:
        raise VerificationError(check, f"{what} is not a valid X.509 CRL: {exc}") from None
    return crl, revoked


def to_pem(certs: tuple[x509.Certificate, ...]) -> str:
    return "".join(cert.public_bytes(Encoding.PEM).decode("ascii") for cert in certs)
