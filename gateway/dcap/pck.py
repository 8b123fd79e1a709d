"""The Intel SGX extension (OID 1.2.840.113741.1.13.1) of a PCK certificate.

It carries the platform's TCB as Intel certified it: the 16 component SVNs and PCESVN used for TCB-level
matching (never the report's CPUSVN, which can differ), plus FMSPC and PCEID that select the TCB info.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from teelab.errors import VerificationError
from teelab.gateway import asn1
from teelab.gateway.dcap.guard import verification_errors_only
from teelab.gateway.dcap.pem import PARSE_ERRORS

SGX_EXTENSION_OID = "1.2.840.113741.1.13.1"
_SGX_EXTENSION = x509.ObjectIdentifier(SGX_EXTENSION_OID)
_PPID = SGX_EXTENSION_OID + ".1"
_TCB = SGX_EXTENSION_OID + ".2"
_PCEID = SGX_EXTENSION_OID + ".3"
_FMSPC = SGX_EXTENSION_OID + ".4"
_SGX_TYPE = SGX_EXTENSION_OID + ".5"
_PLATFORM_INSTANCE_ID = SGX_EXTENSION_OID + ".6"
_CONFIGURATION = SGX_EXTENSION_OID + ".7"
_CONFIGURATION_FLAGS = {
    _CONFIGURATION + ".1": "dynamic_platform",
    _CONFIGURATION + ".2": "cached_keys",
    _CONFIGURATION + ".3": "smt_enabled",
}

SGX_TYPES = {0: "Standard", 1: "Scalable", 2: "ScalableWithIntegrity"}

CHECK = "pck_extension"


@dataclass(frozen=True, slots=True)
class PckExtension:
    ppid: bytes
    tcb_comp_svns: tuple[int, ...]  # components 1..16, index 0 = component 1
    pcesvn: int
    cpusvn: bytes
    pceid: bytes
    fmspc: bytes
    sgx_type: int
    platform_instance_id: bytes | None = None
    # Platform-CA certificates only: dynamic_platform / cached_keys / smt_enabled.
    configuration: tuple[tuple[str, bool], ...] = ()

    @property
    def sgx_type_name(self) -> str:
        return SGX_TYPES.get(self.sgx_type, f"unknown ({self.sgx_type})")


def _pairs(value: bytes, what: str) -> dict[str, asn1.Element]:
    """A SEQUENCE OF SEQUENCE {OID, value} as a map; duplicates would make the meaning ambiguous."""
    out: dict[str, asn1.Element] = {}
    for entry in asn1.read_all(value):
        parts = entry.expect(asn1.SEQUENCE, what).children()
        if len(parts) != 2:
            raise asn1.DerError(f"{what}: entry has {len(parts)} elements, expected OID and value")
        oid = asn1.decode_oid(parts[0].expect(asn1.OID, what).value)
        if oid in out:
            raise asn1.DerError(f"{what}: {oid} appears twice")
        out[oid] = parts[1]
    return out


def _octets(item: asn1.Element, size: int, what: str) -> bytes:
    item.expect(asn1.OCTET_STRING, what)
    if len(item.value) != size:
        raise asn1.DerError(f"{what} is {len(item.value)} bytes, expected {size}")
    return item.value


def _bounded_int(item: asn1.Element, tag: int, upper: int, what: str) -> int:
    value = asn1.decode_integer(item.expect(tag, what).value, what)
    if not 0 <= value <= upper:
        raise asn1.DerError(f"{what} = {value} is outside 0..{upper}")
    return value


def _required(fields: dict[str, asn1.Element], oid: str, what: str) -> asn1.Element:
    if oid not in fields:
        raise asn1.DerError(f"{what} ({oid}) is missing")
    return fields[oid]


def _parse(value: bytes) -> PckExtension:
    top = asn1.read_single(value, asn1.SEQUENCE, "SGX extension")
    fields = _pairs(top.value, "SGX extension")
    tcb = _pairs(_required(fields, _TCB, "TCB").expect(asn1.SEQUENCE, "TCB").value, "TCB")
    svns = tuple(
        _bounded_int(_required(tcb, f"{_TCB}.{i}", f"TCB component {i}"), asn1.INTEGER, 255, f"component {i}")
        for i in range(1, 17)
    )
    pcesvn = _bounded_int(_required(tcb, f"{_TCB}.17", "PCESVN"), asn1.INTEGER, 0xFFFF, "PCESVN")
    cpusvn = _octets(_required(tcb, f"{_TCB}.18", "CPUSVN"), 16, "CPUSVN")

    configuration: list[tuple[str, bool]] = []
    if _CONFIGURATION in fields:
        item = fields[_CONFIGURATION].expect(asn1.SEQUENCE, "Configuration")
        for oid, flag in _pairs(item.value, "Configuration").items():
            if oid in _CONFIGURATION_FLAGS:
                name = _CONFIGURATION_FLAGS[oid]
                configuration.append((name, asn1.decode_boolean(flag.expect(asn1.BOOLEAN, name).value, name)))
    instance = fields.get(_PLATFORM_INSTANCE_ID)
    return PckExtension(
        ppid=_octets(_required(fields, _PPID, "PPID"), 16, "PPID"),
        tcb_comp_svns=svns,
        pcesvn=pcesvn,
        cpusvn=cpusvn,
        pceid=_octets(_required(fields, _PCEID, "PCEID"), 2, "PCEID"),
        fmspc=_octets(_required(fields, _FMSPC, "FMSPC"), 6, "FMSPC"),
        sgx_type=_bounded_int(_required(fields, _SGX_TYPE, "SGX type"), asn1.ENUMERATED, 255, "SGX type"),
        platform_instance_id=None if instance is None else _octets(instance, 16, "platform instance id"),
        configuration=tuple(configuration),
    )


@verification_errors_only("parsing a PCK certificate extension")
def parse_pck_extension(value: bytes) -> PckExtension:
    """Parse the DER value of the SGX extension; malformed input raises VerificationError."""
    try:
        return _parse(value)
    except asn1.DerError as exc:
        raise VerificationError(
            CHECK,
            f"the PCK certificate's SGX extension is malformed: {exc}",
            hint="the PCK certificate is damaged or not an Intel PCK certificate",
        ) from None


def extension_bytes(cert: x509.Certificate) -> bytes | None:
    """The raw SGX extension of ``cert``, or None when it has none."""
    try:
        ext = cert.extensions.get_extension_for_oid(_SGX_EXTENSION)
    except x509.ExtensionNotFound:
        return None
    except PARSE_ERRORS as exc:  # cryptography refuses duplicate or malformed standard extensions
        raise VerificationError(CHECK, f"the certificate's extensions cannot be read: {exc}") from None
    value = ext.value
    if not isinstance(
        value, x509.UnrecognizedExtension
    ):  # pragma: no cover - cryptography knows no such type
        raise VerificationError(CHECK, "the SGX extension was decoded as an unexpected type")
    return value.value


def pck_extension(cert: x509.Certificate) -> PckExtension:
    raw = extension_bytes(cert)
    if raw is None:
        raise VerificationError(
            CHECK,
            "the PCK leaf certificate has no Intel SGX extension (1.2.840.113741.1.13.1)",
            hint="the first certificate of a PCK chain must be the platform's PCK certificate",
        )
    return parse_pck_extension(raw)
