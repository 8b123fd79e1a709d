"""The certificates that vouch for an SEV-SNP report: a VCEK or VLEK, its ASK or ASVK, and the ARK.

They arrive as DER or PEM files, a folder of them, bytes, or the certificate table of an extended report,
in any order; each is recognised by what it is (key type, self-signature, name, AMD extensions), never by
file name or position. Parsing is cached per DER encoding, so a host that hands over the same VCEK for every
kernel start pays for it once.

``cryptography`` loads AMD's leaf certificates only with a deprecation warning (their serial number is 0,
vectors/NOTES.md pitfall 11). That warning is silenced right where teelab loads them, and when a future
``cryptography`` refuses them outright, leaves are read by :mod:`teelab.gateway.snp.fallback` instead.
"""

from __future__ import annotations

import functools
import hashlib
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID

from teelab.errors import VerificationError
from teelab.gateway import asn1, pem
from teelab.gateway.snp import fallback
from teelab.gateway.snp.amd_ca import AMD_CA_PEM, CaRole
from teelab.gateway.snp.cert_table import CRL_GUID, CertTableEntry, parse_cert_table
from teelab.gateway.snp.crl import AmdCrl, crls_in_pem, parse_crl, without_crls

CERTS_CHECK = "snp_certificates"

Role = Literal["ark", "ask", "asvk", "vcek", "vlek"]
LeafKind = Literal["vcek", "vlek"]
ParsedWith = Literal["cryptography", "der-fallback"]

# AMD's VCEK/VLEK extensions (AMD KDS spec 57230 §3; vectors/NOTES.md §3).
_AMD = "1.3.6.1.4.1.3704.1."
OID_STRUCT_VERSION = _AMD + "1"
OID_PRODUCT_NAME = _AMD + "2"
OID_HW_ID = _AMD + "4"
OID_CSP_ID = _AMD + "5"
# Named security patch levels, keyed like the appraisal policy's TCB components.
SPL_OIDS = {
    "bootloader": _AMD + "3.1",
    "tee": _AMD + "3.2",
    "snp": _AMD + "3.3",
    "microcode": _AMD + "3.8",
    "fmc": _AMD + "3.9",
}
# hwID lengths seen: 64 bytes (Milan, Genoa: all of CHIP_ID), 8 bytes (Turin: CHIP_ID's first 8).
HW_ID_LENGTHS = (64, 8)

# Certificate files are a few kilobytes; anything far larger is not one.
_MAX_FILE_BYTES = 1 << 20


def _fail(detail: str, hint: str | None = None) -> VerificationError:
    return VerificationError(CERTS_CHECK, detail, hint=hint)


@dataclass(frozen=True)
class VekExtensions:
    """AMD's extensions of a VCEK or VLEK."""

    product_name: str
    struct_version: int | None
    # Named SPLs present in the certificate (bootloader, tee, snp, microcode, fmc).
    spls: Mapping[str, int]
    # VCEK only: the chip's ID (64 bytes, or 8 on Turin).
    hw_id: bytes | None
    # VLEK only: the cloud provider the key was leased to.
    csp_id: str | None


@dataclass(frozen=True, eq=False)
class AmdCertificate:
    """One certificate of the chain, parsed.

    ``product`` is the product line (``Milan``, ``Genoa``, ``Turin``) the certificate names: from the CN
    of ARKs/ASKs/ASVKs, from the ``productName`` extension (stepping dropped) of leaves.
    """

    der: bytes = field(repr=False)
    role: Role
    subject_cn: str
    issuer_cn: str
    not_before: datetime
    not_after: datetime
    product: str
    vek: VekExtensions | None
    parsed_with: ParsedWith
    fingerprint: str
    tbs: bytes = field(repr=False)
    signature: bytes = field(repr=False)
    subject_name: bytes = field(repr=False)
    issuer_name: bytes = field(repr=False)
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey = field(repr=False)
    # The encoded signature AlgorithmIdentifiers, outside and inside the TBS; kept by the fallback only
    # (cryptography checks its own).
    signature_algorithm: bytes | None = field(repr=False)
    tbs_signature_algorithm: bytes | None = field(repr=False)
    x509_certificate: x509.Certificate | None = field(repr=False)

    @property
    def label(self) -> str:
        return f"{self.role.upper()} {self.subject_cn}"


@dataclass(frozen=True)
class _Fields:
    subject_cn: str | None
    issuer_cn: str | None
    subject_name: bytes
    issuer_name: bytes
    not_before: datetime
    not_after: datetime
    public_key: object
    tbs: bytes
    signature: bytes
    signature_algorithm: bytes | None
    tbs_signature_algorithm: bytes | None
    amd_extensions: dict[str, bytes]
    x509_certificate: x509.Certificate | None


def _x509_cn(name: x509.Name) -> str | None:
    attributes = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attributes:
        return None
    value = attributes[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _fields_from_cryptography(data: bytes) -> _Fields:
    # Only the serial number triggers the warning (on load and on .serial_number, which is never read).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        cert = x509.load_der_x509_certificate(data)
    extensions = {
        ext.oid.dotted_string: ext.value.value
        for ext in cert.extensions
        if ext.oid.dotted_string.startswith(_AMD) and isinstance(ext.value, x509.UnrecognizedExtension)
    }
    return _Fields(
        subject_cn=_x509_cn(cert.subject),
        issuer_cn=_x509_cn(cert.issuer),
        subject_name=cert.subject.public_bytes(),
        issuer_name=cert.issuer.public_bytes(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        public_key=cert.public_key(),
        tbs=cert.tbs_certificate_bytes,
        signature=cert.signature,
        signature_algorithm=None,
        tbs_signature_algorithm=None,
        amd_extensions=extensions,
        x509_certificate=cert,
    )


def _fields_from_der(raw: fallback.RawCertificate) -> _Fields:
    try:
        public_key = serialization.load_der_public_key(raw.spki)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise _fail(f"leaf certificate read without cryptography's X.509 loader: {exc}") from None
    return _Fields(
        subject_cn=raw.subject_cn,
        issuer_cn=raw.issuer_cn,
        subject_name=raw.subject,
        issuer_name=raw.issuer,
        not_before=raw.not_before,
        not_after=raw.not_after,
        public_key=public_key,
        tbs=raw.tbs,
        signature=raw.signature,
        signature_algorithm=raw.signature_algorithm,
        tbs_signature_algorithm=raw.tbs_signature_algorithm,
        amd_extensions={oid: value for oid, value in raw.extensions.items() if oid.startswith(_AMD)},
        x509_certificate=None,
    )


def _decode_hw_id(value: bytes) -> bytes:
    # Real KDS certificates carry the raw bytes; some test certificates wrap them in an OCTET STRING.
    if len(value) - 2 in HW_ID_LENGTHS and value[0] == asn1.OCTET_STRING and value[1] == len(value) - 2:
        value = value[2:]
    if len(value) not in HW_ID_LENGTHS:
        raise asn1.DerError(f"hwID of {len(value)} bytes (expected 64, or 8 on Turin)")
    return value


def _text(value: bytes, what: str) -> str:
    item = asn1.read(value)
    if item.end != len(value):
        raise asn1.DerError(f"{what}: {len(value) - item.end} bytes after the string")
    return asn1.decode_text(item, what)


def _decode_vek(extensions: Mapping[str, bytes]) -> VekExtensions:
    if OID_PRODUCT_NAME not in extensions:
        raise asn1.DerError("no productName extension (1.3.6.1.4.1.3704.1.2)")
    product_name = _text(extensions[OID_PRODUCT_NAME], "productName")
    spls = {
        name: asn1.decode_unsigned(asn1.read_single(extensions[oid], asn1.INTEGER, name).value, name)
        for name, oid in SPL_OIDS.items()
        if oid in extensions
    }
    version = None
    if OID_STRUCT_VERSION in extensions:
        raw_version = asn1.read_single(extensions[OID_STRUCT_VERSION], asn1.INTEGER, "structVersion").value
        version = asn1.decode_unsigned(raw_version, "structVersion")
    hw_id = _decode_hw_id(extensions[OID_HW_ID]) if OID_HW_ID in extensions else None
    csp_id = None
    if OID_CSP_ID in extensions:
        csp_id = _text(extensions[OID_CSP_ID], "cspId")
    return VekExtensions(product_name, version, MappingProxyType(spls), hw_id, csp_id)


def _product_from_cn(cn: str, prefix: str) -> str | None:
    product = cn[len(prefix) :] if cn.startswith(prefix) else ""
    return product if product.isalnum() else None


def _leaf_kind(cn: str, vek: VekExtensions) -> LeafKind:
    by_name: LeafKind | None = "vcek" if cn == "SEV-VCEK" else "vlek" if cn == "SEV-VLEK" else None
    if vek.hw_id is not None and vek.csp_id is not None:
        raise _fail(f"{cn}: carries both a hwID (VCEK) and a cspId (VLEK)")
    by_extension: LeafKind | None = "vcek" if vek.hw_id is not None else "vlek" if vek.csp_id else None
    if by_name and by_extension and by_name != by_extension:
        raise _fail(
            f"{cn}: named like a {by_name.upper()} but has the extensions of a {by_extension.upper()}"
        )
    kind = by_name or by_extension
    if kind is None:
        raise _fail(f"{cn!r}: an EC key certificate that is neither a VCEK nor a VLEK")
    return kind


def _build(data: bytes, fields: _Fields, parsed_with: ParsedWith) -> AmdCertificate:
    subject, issuer = fields.subject_cn or "", fields.issuer_cn or ""
    key = fields.public_key
    vek: VekExtensions | None = None
    role: Role
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP384R1):
            raise _fail(f"{subject}: a VCEK/VLEK key is P-384, this one is {key.curve.name}")
        try:
            vek = _decode_vek(fields.amd_extensions)
        except asn1.DerError as exc:
            raise _fail(f"{subject}: malformed AMD extension: {exc}") from None
        role = _leaf_kind(subject, vek)
        product = vek.product_name.split("-")[0]
    elif isinstance(key, rsa.RSAPublicKey):
        if fields.subject_name == fields.issuer_name:
            role, found = "ark", _product_from_cn(subject, "ARK-")
        elif subject.startswith("SEV-VLEK-"):
            role, found = "asvk", _product_from_cn(subject, "SEV-VLEK-")
        else:
            role, found = "ask", _product_from_cn(subject, "SEV-")
        if found is None:
            raise _fail(
                f"{subject!r} is not an AMD ARK, ASK or ASVK (names are ARK-<product>, SEV-<product>)"
            )
        product = found
    else:
        raise _fail(
            f"{subject!r}: a {type(key).__name__} is neither an AMD CA key (RSA) nor a VCEK/VLEK (P-384)"
        )
    if not product:
        raise _fail(f"{subject}: empty productName")
    return AmdCertificate(
        der=data,
        role=role,
        subject_cn=subject,
        issuer_cn=issuer,
        not_before=fields.not_before,
        not_after=fields.not_after,
        product=product,
        vek=vek,
        parsed_with=parsed_with,
        fingerprint=hashlib.sha256(data).hexdigest(),
        tbs=fields.tbs,
        signature=fields.signature,
        subject_name=fields.subject_name,
        issuer_name=fields.issuer_name,
        public_key=key,
        signature_algorithm=fields.signature_algorithm,
        tbs_signature_algorithm=fields.tbs_signature_algorithm,
        x509_certificate=fields.x509_certificate,
    )


def parse_certificate_fallback(data: bytes) -> AmdCertificate:
    """Parse a VCEK/VLEK without ``x509.load_der_x509_certificate`` (what :func:`parse_certificate` falls
    back to). Only leaves: the CA certificates have ordinary serials and nothing to fall back from."""
    try:
        raw = fallback.parse_certificate(data)
    except asn1.DerError as exc:
        raise _fail(f"not a DER certificate: {exc}") from None
    if raw.spki_algorithm != fallback.OID_EC_PUBLIC_KEY:
        raise _fail(f"{raw.subject_cn!r}: only a VCEK/VLEK (EC key) is read without cryptography's loader")
    return _build(data, _fields_from_der(raw), "der-fallback")


@functools.lru_cache(maxsize=256)
def parse_certificate(data: bytes) -> AmdCertificate:
    """Parse one DER certificate of an AMD chain (cached); raises VerificationError("snp_certificates")."""
    try:
        fields = _fields_from_cryptography(data)
    except Exception as exc:  # whatever cryptography refuses, the fallback gets a chance at
        try:
            return parse_certificate_fallback(data)
        except VerificationError as fallback_error:
            raise _fail(f"cryptography refused the certificate ({exc}); {fallback_error.detail}") from None
    return _build(data, fields, "cryptography")


def _split_pem(blob: bytes) -> list[bytes]:
    # Text beside the blocks is tolerated (tools print certificates with a description); damage is not.
    try:
        blocks = pem.pem_blocks(blob, what="the certificate text", strict_layout=False)
    except pem.PemError as error:
        raise _fail(error.message) from None
    for block in blocks:
        if block.label != "CERTIFICATE":
            raise _fail(f"PEM block {block.label!r} is not a certificate")
    return [block.der for block in blocks]


def _split_der(blob: bytes) -> list[bytes]:
    found: list[bytes] = []
    pos = 0
    # Buffers handed over by firmware or hosts are often zero-padded after the last certificate.
    while pos < len(blob) and blob[pos:].strip(b"\x00"):
        element = asn1.read(blob, pos)
        element.expect(asn1.SEQUENCE, "certificate")
        found.append(element.encoded)
        pos = element.end
    return found


def split_certificates(blob: bytes) -> list[bytes]:
    """The DER certificates in ``blob``, PEM text or DER (one or several, concatenated).

    Raises VerificationError; so does a GHCB certificate table, which :func:`certificates_in` reads.
    """
    if b"-----BEGIN " in blob:
        found = _split_pem(blob)
    else:
        try:
            found = _split_der(blob) if blob[:1] == bytes([asn1.SEQUENCE]) else []
        except asn1.DerError:
            found = []
    if not found:
        raise _fail("neither a PEM nor a DER certificate")
    return found


def _from_table(entries: list[CertTableEntry]) -> list[AmdCertificate]:
    certs: list[AmdCertificate] = []
    for entry in entries:
        if entry.role is None:
            continue
        for data in split_certificates(entry.data):
            cert = parse_certificate(data)
            claimed = ("ask", "asvk") if entry.role == "ask" else (entry.role,)
            if cert.role not in claimed:
                raise _fail(f"the table's {entry.role.upper()} entry holds the {cert.label}")
            certs.append(cert)
    return certs


def certificates_in(blob: bytes) -> list[AmdCertificate]:
    """The certificates in ``blob``: PEM, DER, or a GHCB certificate table. Raises VerificationError."""
    try:
        ders = split_certificates(blob)
    except VerificationError as not_pem_or_der:
        try:
            entries = parse_cert_table(blob)
        except VerificationError as exc:
            raise _fail(f"{not_pem_or_der.detail}, nor a GHCB certificate table ({exc.detail})") from None
        return _from_table(entries)
    return [parse_certificate(data) for data in ders]


def _certificates_and_crls(blob: bytes) -> tuple[list[AmdCertificate], list[AmdCrl]]:
    """The certificates of ``blob`` (see :func:`certificates_in`) and the PEM CRL blocks beside them."""
    if b"-----BEGIN X509 CRL-----" not in blob:
        return certificates_in(blob), []
    crls = crls_in_pem(blob)
    rest = without_crls(blob)
    return (certificates_in(rest) if rest.strip() else []), crls


def _read_file(path: Path) -> bytes:
    try:
        with path.open("rb") as file:
            # Bounded: a device or a pipe has no size to check beforehand.
            data = file.read(_MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise _fail(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > _MAX_FILE_BYTES:
        raise _fail(f"{path} is over {_MAX_FILE_BYTES} bytes; certificate files are a few kilobytes")
    return data


def _choose(candidates: Iterable[AmdCertificate], issuer_name: bytes) -> AmdCertificate | None:
    found = list(candidates)
    for cert in found:
        if cert.subject_name == issuer_name:
            return cert
    return found[0] if found else None


# Documentation beside the certificates; any other file must hold certificates (a stray report is named).
_DOCUMENTS = frozenset({".md", ".txt", ".rst", ".json", ".toml", ".yaml", ".yml"})


def certificate_files(folder: Path) -> list[Path]:
    """The files of ``folder`` that should hold certificates: all but hidden files and documentation."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and not p.name.startswith(".")
        and not p.name.upper().startswith("README")
        and p.suffix.lower() not in _DOCUMENTS
    )


@dataclass(frozen=True)
class SnpCertificates:
    """A VCEK or VLEK and whatever of its chain was supplied (ASK/ASVK, ARK; several are allowed)."""

    leaf: AmdCertificate
    intermediates: tuple[AmdCertificate, ...] = ()
    arks: tuple[AmdCertificate, ...] = ()
    # AMD's CRLs supplied beside the certificates (PEM ``X509 CRL`` blocks, ``*.crl`` files, the table's entry).
    crls: tuple[AmdCrl, ...] = ()

    @property
    def kind(self) -> LeafKind:
        return "vlek" if self.leaf.role == "vlek" else "vcek"

    @property
    def certificates(self) -> tuple[AmdCertificate, ...]:
        return (self.leaf, *self.intermediates, *self.arks)

    def intermediate(self) -> AmdCertificate | None:
        """The ASK (for a VCEK) or ASVK (for a VLEK) that names the leaf's issuer; else any intermediate."""
        wanted = "asvk" if self.kind == "vlek" else "ask"
        matching = [cert for cert in self.intermediates if cert.role == wanted]
        return _choose(matching or self.intermediates, self.leaf.issuer_name)

    def ark(self, intermediate: AmdCertificate | None) -> AmdCertificate | None:
        return _choose(self.arks, intermediate.issuer_name if intermediate else b"")

    @classmethod
    def from_certificates(
        cls, certs: Iterable[AmdCertificate], crls: Iterable[AmdCrl] = ()
    ) -> SnpCertificates:
        unique = list({cert.der: cert for cert in certs}.values())
        leaves = [cert for cert in unique if cert.role in ("vcek", "vlek")]
        if not leaves:
            raise _fail(
                "no VCEK or VLEK among the certificates",
                hint="fetch the VCEK for the report's CHIP_ID and REPORTED_TCB from AMD KDS",
            )
        if len(leaves) > 1:
            names = ", ".join(cert.label for cert in leaves)
            raise _fail(
                f"{len(leaves)} VCEK/VLEK certificates ({names}); give the one that signed the report"
            )
        return cls(
            leaf=leaves[0],
            intermediates=tuple(cert for cert in unique if cert.role in ("ask", "asvk")),
            arks=tuple(cert for cert in unique if cert.role == "ark"),
            crls=tuple({crl.der: crl for crl in crls}.values()),
        )

    @classmethod
    def from_bytes(cls, *blobs: bytes) -> SnpCertificates:
        """From one or more blobs, each PEM, DER or a GHCB certificate table."""
        certs: list[AmdCertificate] = []
        crls: list[AmdCrl] = []
        for blob in blobs:
            if not isinstance(blob, bytes | bytearray | memoryview):
                raise _fail(f"certificates are bytes, got {type(blob).__name__}")
            found, revocations = _certificates_and_crls(bytes(blob))
            certs.extend(found)
            crls.extend(revocations)
        return cls.from_certificates(certs, crls)

    @classmethod
    def from_cert_table(cls, table: bytes) -> SnpCertificates:
        """From the certificate table of an extended report; each entry must hold what its GUID says."""
        if not isinstance(table, bytes | bytearray | memoryview):
            raise _fail(f"a certificate table is bytes, got {type(table).__name__}")
        entries = parse_cert_table(bytes(table))
        crls = [parse_crl(entry.data) for entry in entries if entry.guid == CRL_GUID and entry.data]
        return cls.from_certificates(_from_table(entries), crls)

    @classmethod
    def load(cls, source: str | os.PathLike[str] | bytes | bytearray | memoryview) -> SnpCertificates:
        """From a file, a folder of files, or bytes.

        In a folder every visible file must hold certificates, except documentation beside them (README, *.md,
        *.txt, *.json …), which is skipped.
        """
        if isinstance(source, bytes | bytearray | memoryview):
            return cls.from_bytes(bytes(source))
        if not isinstance(source, str | os.PathLike):
            raise _fail(f"certificates come from a path or bytes, not {type(source).__name__}")
        path = Path(source)
        if path.is_dir():
            files = certificate_files(path)
            if not files:
                raise _fail(f"the folder {path} holds no certificate files")
            certs: list[AmdCertificate] = []
            crls: list[AmdCrl] = []
            for file in files:
                try:
                    data = _read_file(file)
                    if file.suffix.lower() == ".crl":  # as AMD KDS serves it: DER (or PEM)
                        crls.extend(crls_in_pem(data) if b"-----BEGIN" in data else [parse_crl(data)])
                        continue
                    found, revocations = _certificates_and_crls(data)
                except VerificationError as exc:
                    raise _fail(f"{file.name}: {exc.detail}", exc.hint) from None
                certs.extend(found)
                crls.extend(revocations)
            return cls.from_certificates(certs, crls)
        return cls.from_bytes(_read_file(path))

    def with_builtin_chain(self) -> SnpCertificates:
        """This set plus AMD's public ASK/ASVK and ARK for the leaf's product, where they are missing.

        The added certificates get no more trust than supplied ones: the ARK must still match a pin.
        """
        product = self.leaf.product
        wanted: CaRole = "asvk" if self.kind == "vlek" else "ask"
        extra: list[AmdCertificate] = []
        roles: tuple[CaRole, CaRole] = (wanted, "ark")
        for role in roles:
            have = self.arks if role == "ark" else self.intermediates
            bundled = AMD_CA_PEM.get((product, role))
            if bundled is not None and not any(cert.role == role for cert in have):
                extra.extend(parse_certificate(data) for data in split_certificates(bundled.encode()))
        return SnpCertificates.from_certificates([*self.certificates, *extra], self.crls) if extra else self


def clear_caches() -> None:
    """Forget parsed certificates (tests use this to watch ``cryptography`` load a certificate afresh)."""
    parse_certificate.cache_clear()
