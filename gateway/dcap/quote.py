"""Intel DCAP ECDSA quotes v3, v4 and v5 (SGX enclave reports and TDX TD reports 1.0/1.5).

Parsing only: every length is checked against the bytes really there; nothing is verified. Bytes after the
signature data are tolerated (real quotes carry padding or test text there) and counted in ``trailing``.
Layouts: shared/vectors/NOTES.md §3; Intel's "ECDSA Quote Library API", appendix A.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal

from teelab.errors import VerificationError
from teelab.gateway.dcap.guard import verification_errors_only

CHECK = "quote_parse"

HEADER_SIZE = 48
SGX_REPORT_SIZE = 384
TD10_REPORT_SIZE = 584
TD15_REPORT_SIZE = 648

TEE_SGX = 0x00000000
TEE_TDX = 0x00000081
ATT_KEY_ECDSA_P256 = 2
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")

BODY_SGX = 1
BODY_TD10 = 2
BODY_TD15 = 3
_BODY_SIZES = {BODY_SGX: SGX_REPORT_SIZE, BODY_TD10: TD10_REPORT_SIZE, BODY_TD15: TD15_REPORT_SIZE}
_BODY_NAMES = {BODY_SGX: "SGX enclave report", BODY_TD10: "TD report 1.0", BODY_TD15: "TD report 1.5"}

CERT_PPID_CLEARTEXT = 1
CERT_PPID_RSA2048 = 2
CERT_PPID_RSA3072 = 3
CERT_PCK_LEAF = 4
CERT_PCK_CHAIN = 5
CERT_QE_REPORT = 6
CERT_PLATFORM_MANIFEST = 7
CERT_TYPE_NAMES = {
    CERT_PPID_CLEARTEXT: "PPID in clear text",
    CERT_PPID_RSA2048: "PPID encrypted with RSA-2048-OAEP",
    CERT_PPID_RSA3072: "PPID encrypted with RSA-3072-OAEP",
    CERT_PCK_LEAF: "PCK leaf certificate",
    CERT_PCK_CHAIN: "PEM PCK certificate chain",
    CERT_QE_REPORT: "QE report certification data",
    CERT_PLATFORM_MANIFEST: "platform manifest",
}

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_HEADER = struct.Struct("<HHIHH16s20s")
_SGX_REPORT = struct.Struct("<16s4s12x16s16s32s32x32s32x64sHHH42x16s64s")
_TD10_REPORT = struct.Struct("<16s48s48s8s8s8s48s48s48s48s48s48s48s48s64s")


@dataclass(frozen=True, slots=True)
class QuoteHeader:
    version: int
    att_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes


@dataclass(frozen=True, slots=True)
class EnclaveReport:
    """An SGX REPORT body: the ISV enclave's report in SGX quotes, and the QE report in every quote."""

    raw: bytes
    cpusvn: bytes
    miscselect: bytes  # 4 bytes in report order (little-endian u32)
    isv_ext_prod_id: bytes
    attributes: bytes
    mrenclave: bytes
    mrsigner: bytes
    config_id: bytes
    isv_prod_id: int
    isv_svn: int
    config_svn: int
    isv_family_id: bytes
    report_data: bytes

    @property
    def debug(self) -> bool:
        return bool(self.attributes[0] & 0x02)


@dataclass(frozen=True, slots=True)
class TdReport:
    raw: bytes
    tee_tcb_svn: bytes
    mrseam: bytes
    mrsignerseam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mrtd: bytes
    mrconfigid: bytes
    mrowner: bytes
    mrownerconfig: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn2: bytes | None = None  # TD report 1.5 only
    mrservicetd: bytes | None = None  # TD report 1.5 only

    @property
    def debug(self) -> bool:
        return bool(self.td_attributes[0] & 0x01)


@dataclass(frozen=True, slots=True)
class CertificationData:
    cert_type: int
    data: bytes

    @property
    def type_name(self) -> str:
        return CERT_TYPE_NAMES.get(self.cert_type, f"unknown type {self.cert_type}")


@dataclass(frozen=True, slots=True)
class QuoteSignature:
    signature: bytes  # raw r || s over Quote.signed
    attestation_key: bytes  # raw X || Y of the P-256 attestation key
    qe_report: EnclaveReport
    qe_report_signature: bytes  # raw r || s by the PCK key over qe_report.raw
    qe_auth_data: bytes
    certification: CertificationData


@dataclass(frozen=True, slots=True)
class Quote:
    header: QuoteHeader
    body_type: int
    body: EnclaveReport | TdReport
    signature: QuoteSignature
    signed: bytes
    trailing: int

    @property
    def tee(self) -> Literal["sgx", "tdx"]:
        return "tdx" if self.header.tee_type == TEE_TDX else "sgx"

    @property
    def body_name(self) -> str:
        return _BODY_NAMES[self.body_type]


def _fail(detail: str) -> VerificationError:
    return VerificationError(CHECK, detail, hint="the evidence is not a well-formed Intel DCAP quote")


def parse_enclave_report(raw: bytes) -> EnclaveReport:
    if len(raw) != SGX_REPORT_SIZE:
        raise _fail(f"an SGX report is {SGX_REPORT_SIZE} bytes, got {len(raw)}")
    (cpusvn, misc, ext_prod, attrs, mrenclave, mrsigner, config_id, prod, svn, config_svn, family, rdata) = (
        _SGX_REPORT.unpack(raw)
    )
    return EnclaveReport(
        raw,
        cpusvn,
        misc,
        ext_prod,
        attrs,
        mrenclave,
        mrsigner,
        config_id,
        prod,
        svn,
        config_svn,
        family,
        rdata,
    )


def parse_td_report(raw: bytes) -> TdReport:
    if len(raw) not in (TD10_REPORT_SIZE, TD15_REPORT_SIZE):
        raise _fail(f"a TD report is {TD10_REPORT_SIZE} or {TD15_REPORT_SIZE} bytes, got {len(raw)}")
    f = _TD10_REPORT.unpack_from(raw)
    extra: tuple[bytes | None, bytes | None] = (None, None)
    if len(raw) == TD15_REPORT_SIZE:
        extra = (raw[584:600], raw[600:648])
    return TdReport(
        raw, f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], (f[10], f[11], f[12], f[13]), f[14],
        *extra,
    )  # fmt: skip


class _Reader:
    """Reads fields in order from a bounded region; every read is checked against the region's end."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data, self.pos, self.end = data, pos, end

    def take(self, size: int, what: str) -> bytes:
        if size > self.end - self.pos:
            raise _fail(
                f"{what} needs {size} bytes at offset {self.pos} but only {self.end - self.pos} remain"
            )
        out = self.data[self.pos : self.pos + size]
        self.pos += size
        return out

    def u16(self, what: str) -> int:
        value: int = _U16.unpack(self.take(2, what))[0]
        return value

    def u32(self, what: str) -> int:
        value: int = _U32.unpack(self.take(4, what))[0]
        return value

    def finish(self, what: str) -> None:
        if self.pos != self.end:
            raise _fail(f"{what} declares {self.end - self.pos} more bytes than its fields use")


def _qe_report_section(r: _Reader, where: str) -> tuple[EnclaveReport, bytes, bytes, CertificationData]:
    qe_report = parse_enclave_report(r.take(SGX_REPORT_SIZE, f"QE report in {where}"))
    qe_sig = r.take(64, f"QE report signature in {where}")
    auth = r.take(r.u16("QE authentication data size"), "QE authentication data")
    cert_type = r.u16("certification data type")
    cert = r.take(r.u32("certification data size"), "certification data")
    return qe_report, qe_sig, auth, CertificationData(cert_type, cert)


def _parse_body(data: bytes, header: QuoteHeader) -> tuple[int, int, int]:
    """(body type, body offset, body size) for this version and TEE type."""
    if header.version == 5:
        if len(data) < HEADER_SIZE + 6:
            raise _fail(f"a v5 quote needs a body descriptor at offset 48; the quote is {len(data)} bytes")
        body_type = _U16.unpack_from(data, 48)[0]
        body_size = _U32.unpack_from(data, 50)[0]
        if body_type not in _BODY_SIZES:
            raise _fail(f"v5 body type {body_type} is not supported (1 = SGX, 2 = TD 1.0, 3 = TD 1.5)")
        if body_size != _BODY_SIZES[body_type]:
            raise _fail(
                f"v5 body type {body_type} ({_BODY_NAMES[body_type]}) must be "
                f"{_BODY_SIZES[body_type]} bytes, the quote says {body_size}"
            )
        expected_tee = TEE_SGX if body_type == BODY_SGX else TEE_TDX
        if header.tee_type != expected_tee:
            raise _fail(f"v5 body type {body_type} does not fit TEE type 0x{header.tee_type:x}")
        return body_type, HEADER_SIZE + 6, body_size
    if header.tee_type == TEE_SGX:
        return BODY_SGX, HEADER_SIZE, SGX_REPORT_SIZE
    if header.version == 3:
        raise _fail(f"quote v3 is SGX only; its TEE type field is 0x{header.tee_type:x}")
    return BODY_TD10, HEADER_SIZE, TD10_REPORT_SIZE


@verification_errors_only("parsing a quote")
def parse_quote(data: bytes) -> Quote:
    """Parse a quote; any malformation raises VerificationError(check="quote_parse")."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _fail(f"a quote is bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < HEADER_SIZE:
        raise _fail(f"the quote is {len(data)} bytes; it must start with a {HEADER_SIZE}-byte header")
    header = QuoteHeader(*_HEADER.unpack_from(data))
    if header.version not in (3, 4, 5):
        raise _fail(f"quote version {header.version} is not supported (3, 4 and 5 are)")
    if header.att_key_type != ATT_KEY_ECDSA_P256:
        raise _fail(
            f"attestation key type {header.att_key_type} is not supported (only 2 = ECDSA-256 with P-256)"
        )
    if header.tee_type not in (TEE_SGX, TEE_TDX):
        raise _fail(f"TEE type 0x{header.tee_type:x} is neither SGX (0x0) nor TDX (0x81)")

    body_type, body_at, body_size = _parse_body(data, header)
    body_end = body_at + body_size
    if len(data) < body_end + 4:
        raise _fail(f"the quote is {len(data)} bytes; its body and signature length need {body_end + 4}")
    raw_body = data[body_at:body_end]
    body: EnclaveReport | TdReport = (
        parse_enclave_report(raw_body) if body_type == BODY_SGX else parse_td_report(raw_body)
    )
    sig_len = _U32.unpack_from(data, body_end)[0]
    sig_at = body_end + 4
    if sig_len > len(data) - sig_at:
        raise _fail(f"signature data claims {sig_len} bytes but only {len(data) - sig_at} follow the body")
    r = _Reader(data, sig_at, sig_at + sig_len)
    signature = r.take(64, "quote signature")
    attestation_key = r.take(64, "attestation key")
    if header.version == 3:
        qe_report, qe_sig, auth, cert = _qe_report_section(r, "signature data")
    else:
        outer_type = r.u16("certification data type")
        if outer_type != CERT_QE_REPORT:
            raise _fail(
                f"v{header.version} signature data must hold certification data type 6 "
                f"(QE report certification data), found type {outer_type}"
            )
        outer = _Reader(data, 0, 0)
        outer_size = r.u32("QE report certification data size")
        outer.pos = r.pos
        outer.end = r.pos + outer_size
        r.take(outer_size, "QE report certification data")
        qe_report, qe_sig, auth, cert = _qe_report_section(outer, "QE report certification data")
        outer.finish("QE report certification data")
        if cert.cert_type == CERT_QE_REPORT:
            raise _fail("QE report certification data nests another type 6 block")
    r.finish("signature data")
    return Quote(
        header=header,
        body_type=body_type,
        body=body,
        signature=QuoteSignature(signature, attestation_key, qe_report, qe_sig, auth, cert),
        signed=data[:body_end],
        trailing=len(data) - r.end,
    )
