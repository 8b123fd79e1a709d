"""Certificates and CRLs from PEM or DER, read strictly.

``cryptography.x509.load_pem_x509_certificates`` silently skips a damaged PEM block, so a chain with a broken
END line loads as a shorter chain. Here every BEGIN marker must open a complete block whose base64 decodes to
a certificate; otherwise the whole input is refused.
"""

from __future__ import annotations

import base64
import binascii
import re

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from teelab.errors import VerificationError

# What cryptography raises for damaged certificate or CRL fields (it decodes many of them lazily).
PARSE_ERRORS = (
    ValueError,
    TypeError,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)

_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----([A-Za-z0-9+/=\s]*?)-----END \1-----")
_BEGIN = b"-----BEGIN "


def pem_blocks(data: bytes, label: bytes, *, check: str, what: str) -> list[bytes]:
    """The DER payload of every PEM block; each block must carry ``label`` and nothing may be damaged."""
    text = data.rstrip(b"\0")  # quotes pad the PEM chain with NULs
    blocks = list(_BLOCK.finditer(text))
    markers = text.count(_BEGIN)
    if markers != len(blocks):
        raise VerificationError(
            check,
            f"{what} has {markers} PEM BEGIN markers but only {len(blocks)} complete blocks "
            "(a block is damaged)",
        )
    covered = 0
    out: list[bytes] = []
    for index, block in enumerate(blocks, 1):
        if text[covered : block.start()].strip():
            raise VerificationError(check, f"{what} has stray bytes before PEM block {index}")
        covered = block.end()
        if block.group(1) != label:
            raise VerificationError(
                check, f"{what}: PEM block {index} is a {block.group(1).decode()}, expected {label.decode()}"
            )
        try:
            out.append(base64.b64decode(b"".join(block.group(2).split()), validate=True))
        except (binascii.Error, ValueError):
            raise VerificationError(check, f"{what}: PEM block {index} is not valid base64") from None
    if text[covered:].strip():
        raise VerificationError(check, f"{what} has stray bytes after its last PEM block")
    return out


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
    if data.lstrip().startswith(_BEGIN):
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
