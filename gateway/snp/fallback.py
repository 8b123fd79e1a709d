"""Reading a VCEK/VLEK without ``cryptography``'s X.509 loader (vectors/NOTES.md pitfall 11).

Every VCEK and VLEK AMD issues has serial number 0, which RFC 5280 forbids. ``cryptography`` 48-50 loads
such certificates with a deprecation warning and has announced that a future release will refuse them. When
that happens the loader in :mod:`teelab.gateway.snp.certs` comes here: the few fields SNP verification needs
are read straight from the DER, and the certificate's RSASSA-PSS signature is checked over its TBS bytes with
the issuer's key, so a refused leaf stays verifiable without trusting anything this module parses.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from teelab.gateway import asn1
from teelab.gateway.asn1 import DerError, Element

OID_RSASSA_PSS = "1.2.840.113549.1.1.10"
OID_MGF1 = "1.2.840.113549.1.1.8"
OID_SHA384 = "2.16.840.1.101.3.4.2.2"
OID_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
OID_COMMON_NAME = "2.5.4.3"

# AMD signs every certificate in the chain with RSASSA-PSS, SHA-384, MGF1-SHA-384, 48-byte salt.
PSS_SALT_LENGTH = 48


@dataclass(frozen=True)
class RawCertificate:
    """The parts of an X.509 certificate SNP verification uses, as encoded."""

    tbs: bytes
    signature_algorithm: bytes
    # The copy inside the TBS; RFC 5280 §4.1.1.2 requires it to equal the outer one.
    tbs_signature_algorithm: bytes
    signature: bytes
    issuer: bytes
    subject: bytes
    issuer_cn: str | None
    subject_cn: str | None
    not_before: datetime
    not_after: datetime
    spki: bytes
    spki_algorithm: str
    # extnID -> extnValue (the OCTET STRING's content)
    extensions: dict[str, bytes]


def parse_certificate(data: bytes) -> RawCertificate:
    """Read a DER certificate's structure; raises DerError. Checks no signature."""
    cert = asn1.read_single(data, asn1.SEQUENCE, "certificate")
    parts = cert.children()
    if len(parts) != 3:
        raise DerError(f"certificate: expected 3 elements, found {len(parts)}")
    tbs, outer_alg, signature = parts
    tbs.expect(asn1.SEQUENCE, "tbsCertificate")
    outer_alg.expect(asn1.SEQUENCE, "signatureAlgorithm")
    signature.expect(asn1.BIT_STRING, "signatureValue")
    if signature.value[:1] != b"\x00":
        raise DerError("signatureValue: a signature is a whole number of bytes")

    fields = tbs.children()
    at = 0
    if fields and fields[0].tag == asn1.context(0):
        version = _only(fields[0], "version")
        if asn1.decode_unsigned(version.expect(asn1.INTEGER, "version").value, "version") != 2:
            raise DerError("version: only X.509 v3 certificates carry extensions")
        at = 1
    if len(fields) < at + 6:
        raise DerError(f"tbsCertificate: {len(fields)} elements are too few")
    # The serial number is deliberately not interpreted: AMD's are 0, which is the reason this module exists.
    fields[at].expect(asn1.INTEGER, "serialNumber")
    inner_alg = fields[at + 1].expect(asn1.SEQUENCE, "signature")
    issuer = fields[at + 2].expect(asn1.SEQUENCE, "issuer")
    validity = fields[at + 3].expect(asn1.SEQUENCE, "validity").children()
    subject = fields[at + 4].expect(asn1.SEQUENCE, "subject")
    spki = fields[at + 5].expect(asn1.SEQUENCE, "subjectPublicKeyInfo")
    if len(validity) != 2:
        raise DerError("validity: expected notBefore and notAfter")

    extensions: dict[str, bytes] = {}
    for optional in fields[at + 6 :]:
        if optional.tag == asn1.context(3):
            extensions = _extensions(_only(optional, "extensions").expect(asn1.SEQUENCE, "extensions"))
        elif optional.tag not in (0x81, 0x82, 0xA1, 0xA2):
            raise DerError(f"tbsCertificate: unexpected element with tag 0x{optional.tag:02x}")

    spki_items = spki.children()
    if len(spki_items) != 2:
        raise DerError("subjectPublicKeyInfo: expected algorithm and key")
    spki_alg = spki_items[0].expect(asn1.SEQUENCE, "subjectPublicKeyInfo.algorithm").children()
    if not spki_alg:
        raise DerError("subjectPublicKeyInfo.algorithm is empty")
    return RawCertificate(
        tbs=tbs.encoded,
        signature_algorithm=outer_alg.encoded,
        tbs_signature_algorithm=inner_alg.encoded,
        signature=signature.value[1:],
        issuer=issuer.encoded,
        subject=subject.encoded,
        issuer_cn=common_name(issuer),
        subject_cn=common_name(subject),
        not_before=asn1.decode_time(validity[0], "notBefore"),
        not_after=asn1.decode_time(validity[1], "notAfter"),
        spki=spki.encoded,
        spki_algorithm=asn1.decode_oid(spki_alg[0].expect(asn1.OID, "algorithm").value),
        extensions=extensions,
    )


def _only(wrapper: Element, what: str) -> Element:
    """The single element inside an EXPLICIT ``[n]`` wrapper."""
    items = wrapper.children()
    if len(items) != 1:
        raise DerError(f"{what}: expected one element inside [{wrapper.tag & 0x1F}], found {len(items)}")
    return items[0]


def _extensions(block: Element) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for extension in block.children():
        items = extension.expect(asn1.SEQUENCE, "extension").children()
        if len(items) == 3:
            items[1].expect(asn1.BOOLEAN, "extension.critical")
            items = [items[0], items[2]]
        if len(items) != 2:
            raise DerError("extension: expected extnID, [critical,] extnValue")
        oid = asn1.decode_oid(items[0].expect(asn1.OID, "extnID").value)
        if oid in found:
            raise DerError(f"extension {oid} appears twice")
        found[oid] = items[1].expect(asn1.OCTET_STRING, "extnValue").value
    return found


def common_name(name: Element) -> str | None:
    """The first commonName in a Name, or None when it has none."""
    for rdn in name.children():
        for attribute in rdn.expect(asn1.SET, "RelativeDistinguishedName").children():
            items = attribute.expect(asn1.SEQUENCE, "AttributeTypeAndValue").children()
            if len(items) != 2:
                raise DerError("AttributeTypeAndValue: expected type and value")
            if asn1.decode_oid(items[0].expect(asn1.OID, "attribute type").value) == OID_COMMON_NAME:
                return asn1.decode_text(items[1], "commonName")
    return None


def _hash_is_sha384(algorithm: Element) -> bool:
    items = algorithm.expect(asn1.SEQUENCE, "hash AlgorithmIdentifier").children()
    if not items or asn1.decode_oid(items[0].expect(asn1.OID, "hash algorithm").value) != OID_SHA384:
        return False
    # Parameters are absent or NULL (RFC 4055 allows both).
    return len(items) == 1 or (len(items) == 2 and items[1].tag == asn1.NULL and not items[1].value)


def check_pss_sha384(algorithm: bytes) -> None:
    """Require RSASSA-PSS with SHA-384, MGF1-SHA-384, salt 48 and trailer 1 — what AMD's chain uses.

    Only the parameters are read here; ``cryptography``'s verifier does the rest. Raises DerError otherwise.
    """
    items = asn1.read_single(algorithm, asn1.SEQUENCE, "signatureAlgorithm").children()
    if len(items) != 2 or asn1.decode_oid(items[0].expect(asn1.OID, "algorithm").value) != OID_RSASSA_PSS:
        raise DerError("signature algorithm is not RSASSA-PSS with parameters")
    params = {item.tag: item for item in items[1].expect(asn1.SEQUENCE, "RSASSA-PSS-params").children()}
    if set(params) - {asn1.context(n) for n in range(4)}:
        raise DerError("RSASSA-PSS-params has an unknown field")
    hash_field, mgf_field, salt_field = (params.get(asn1.context(n)) for n in range(3))
    # The DEFAULTs are SHA-1 and salt 20, never what AMD uses, so all three fields must be present.
    if hash_field is None or mgf_field is None or salt_field is None:
        raise DerError("RSASSA-PSS-params leaves the hash, MGF or salt at its SHA-1 default")
    if not _hash_is_sha384(_only(hash_field, "hashAlgorithm")):
        raise DerError("RSASSA-PSS hash is not SHA-384")
    mgf_items = _only(mgf_field, "maskGenAlgorithm").expect(asn1.SEQUENCE, "maskGenAlgorithm").children()
    if (
        len(mgf_items) != 2
        or asn1.decode_oid(mgf_items[0].expect(asn1.OID, "maskGenAlgorithm").value) != OID_MGF1
        or not _hash_is_sha384(mgf_items[1])
    ):
        raise DerError("RSASSA-PSS mask generation is not MGF1 with SHA-384")
    salt = _only(salt_field, "saltLength")
    if asn1.decode_unsigned(salt.expect(asn1.INTEGER, "saltLength").value, "saltLength") != PSS_SALT_LENGTH:
        raise DerError(f"RSASSA-PSS salt length is not {PSS_SALT_LENGTH}")
    trailer_field = params.get(asn1.context(3))
    if trailer_field is not None:
        trailer = _only(trailer_field, "trailerField")
        if asn1.decode_unsigned(trailer.expect(asn1.INTEGER, "trailerField").value, "trailerField") != 1:
            raise DerError("RSASSA-PSS trailer field is not 1")


def verify_pss_sha384(issuer_key: rsa.RSAPublicKey, signature: bytes, tbs: bytes) -> None:
    """Raises cryptography's InvalidSignature when ``signature`` is not the issuer's over ``tbs``."""
    issuer_key.verify(
        signature,
        tbs,
        padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=PSS_SALT_LENGTH),
        hashes.SHA384(),
    )
