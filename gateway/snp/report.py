"""The SEV-SNP ATTESTATION_REPORT (AMD SEV-SNP ABI spec, "ATTESTATION_REPORT Structure"), versions 2-5.

Parsing only: nothing here is verified. The layout is in ``vectors/NOTES.md`` §3; all integers are little
endian. The report is always 0x4A0 bytes; later versions reuse bytes that were reserved before (v3 the CPUID
family/model/stepping, v5 the mitigation vectors), so a field a version does not define is ``None`` rather
than whatever the reserved bytes hold.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal

from teelab.errors import VerificationError

REPORT_SIZE = 0x4A0
# The signature covers every byte before it.
SIGNED_SIZE = 0x2A0
MIN_VERSION = 2
MAX_VERSION = 5
SIG_ALGO_ECDSA_P384_SHA384 = 1
# r and s are each a 72-byte little-endian field, zero-padded past the 48 bytes P-384 needs.
SIG_COMPONENT_SIZE = 72

SIGNING_KEY_VCEK = 0
SIGNING_KEY_VLEK = 1
SIGNING_KEY_NONE = 7
SIGNING_KEY_NAMES = {SIGNING_KEY_VCEK: "vcek", SIGNING_KEY_VLEK: "vlek", SIGNING_KEY_NONE: "none"}

POLICY_SMT = 1 << 16
POLICY_MIGRATE_MA = 1 << 18
POLICY_DEBUG = 1 << 19
POLICY_SINGLE_SOCKET = 1 << 20

REPORT_CHECK = "snp_report_format"

# Milan and Genoa share one TCB_VERSION byte layout; Turin moved the fields and added FMC.
TcbLayout = Literal["milan", "turin"]


def tcb_layout(product: str) -> TcbLayout:
    return "turin" if product == "Turin" else "milan"


@dataclass(frozen=True)
class TcbVersion:
    """A TCB_VERSION decoded for one product's layout; component names match the appraisal policy's."""

    raw: int
    layout: TcbLayout
    bootloader: int
    tee: int
    snp: int
    microcode: int
    # Turin and later only.
    fmc: int | None

    @classmethod
    def decode(cls, raw: int, layout: TcbLayout) -> TcbVersion:
        b = raw.to_bytes(8, "little")
        if layout == "turin":
            # [FMC, BL, TEE, SNP, reserved x3, UCODE] (go-sev-guest kds.TCBVersionTurin)
            return cls(raw, layout, bootloader=b[1], tee=b[2], snp=b[3], microcode=b[7], fmc=b[0])
        # [BL, TEE, reserved x4, SNP, UCODE]
        return cls(raw, layout, bootloader=b[0], tee=b[1], snp=b[6], microcode=b[7], fmc=None)

    def components(self) -> dict[str, int]:
        parts = {"bootloader": self.bootloader, "tee": self.tee, "snp": self.snp, "microcode": self.microcode}
        if self.fmc is not None:
            parts["fmc"] = self.fmc
        return parts


@dataclass(frozen=True)
class Cpuid:
    """CPUID family/model/stepping the firmware wrote into the report (v3+)."""

    family: int
    model: int
    stepping: int

    @property
    def product(self) -> str | None:
        """The product line these CPUID values belong to, or None when this table does not know them."""
        if self.family == 0x19:
            if self.model <= 0x0F:
                return "Milan"
            # Genoa, and Bergamo/Siena (0xA0-0xAF), which AMD certifies under the Genoa ARK.
            if 0x10 <= self.model <= 0x1F or 0xA0 <= self.model <= 0xAF:
                return "Genoa"
        elif self.family == 0x1A and self.model <= 0x1F:
            return "Turin"
        return None


@dataclass(frozen=True)
class FirmwareVersion:
    major: int
    minor: int
    build: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor} build {self.build}"


@dataclass(frozen=True)
class SnpReport:
    raw: bytes
    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: int
    platform_info: int
    signer_info: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: int
    cpuid: Cpuid | None
    chip_id: bytes
    committed_tcb: int
    current_version: FirmwareVersion
    committed_version: FirmwareVersion
    launch_tcb: int
    launch_mit_vector: int | None
    current_mit_vector: int | None
    signature_r: int
    signature_s: int

    @property
    def signed_bytes(self) -> bytes:
        return self.raw[:SIGNED_SIZE]

    @property
    def author_key_en(self) -> bool:
        return bool(self.signer_info & 0b1)

    @property
    def mask_chip_key(self) -> bool:
        return bool(self.signer_info & 0b10)

    @property
    def signing_key(self) -> int:
        return (self.signer_info >> 2) & 0b111

    @property
    def signing_key_name(self) -> str:
        return SIGNING_KEY_NAMES.get(self.signing_key, f"reserved ({self.signing_key})")

    @property
    def debug(self) -> bool:
        return bool(self.policy & POLICY_DEBUG)

    def tcbs(self, layout: TcbLayout) -> dict[str, TcbVersion]:
        return {
            name: TcbVersion.decode(raw, layout)
            for name, raw in (
                ("reported", self.reported_tcb),
                ("current", self.current_tcb),
                ("committed", self.committed_tcb),
                ("launch", self.launch_tcb),
            )
        }


def _fail(detail: str, hint: str | None = None) -> VerificationError:
    return VerificationError(REPORT_CHECK, detail, hint=hint)


def parse_report(data: bytes) -> SnpReport:
    """Parse an ATTESTATION_REPORT; any malformation raises VerificationError(check="snp_report_format")."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _fail(f"an SNP report is bytes, got {type(data).__name__}")
    raw = bytes(data)
    if len(raw) != REPORT_SIZE:
        raise _fail(
            f"an SNP attestation report is {REPORT_SIZE} bytes, got {len(raw)}",
            hint="pass the bare report: a MSG_REPORT_RSP carries it at offset 32, after a 32-byte header",
        )
    version, guest_svn, policy = struct.unpack_from("<IIQ", raw, 0x00)
    if version < MIN_VERSION:
        raise _fail(
            f"report version {version} predates the production ABI (versions {MIN_VERSION}-{MAX_VERSION})"
        )
    if version > MAX_VERSION:
        raise _fail(
            f"report version {version} is newer than this verifier knows ({MIN_VERSION}-{MAX_VERSION})",
            hint="newer firmware reuses reserved bytes; teelab must learn the new layout before trusting it",
        )
    vmpl, signature_algo, current_tcb, platform_info, signer_info = struct.unpack_from("<IIQQI", raw, 0x30)
    cpuid = Cpuid(raw[0x188], raw[0x189], raw[0x18A]) if version >= 3 else None
    launch_mit = current_mit = None
    if version >= 5:
        launch_mit, current_mit = struct.unpack_from("<QQ", raw, 0x1F8)
    r_at, s_at = SIGNED_SIZE, SIGNED_SIZE + SIG_COMPONENT_SIZE
    if any(raw[s_at + SIG_COMPONENT_SIZE :]):
        # Reserved and outside the signed bytes: were they allowed to vary, one report would have many
        # encodings that all verify, and report bytes (or their hash) could not identify a report.
        raise _fail("the reserved bytes after the signature (0x330-0x49F) are not zero")
    return SnpReport(
        raw=raw,
        version=version,
        guest_svn=guest_svn,
        policy=policy,
        family_id=raw[0x10:0x20],
        image_id=raw[0x20:0x30],
        vmpl=vmpl,
        signature_algo=signature_algo,
        current_tcb=current_tcb,
        platform_info=platform_info,
        signer_info=signer_info,
        report_data=raw[0x50:0x90],
        measurement=raw[0x90:0xC0],
        host_data=raw[0xC0:0xE0],
        id_key_digest=raw[0xE0:0x110],
        author_key_digest=raw[0x110:0x140],
        report_id=raw[0x140:0x160],
        report_id_ma=raw[0x160:0x180],
        reported_tcb=struct.unpack_from("<Q", raw, 0x180)[0],
        cpuid=cpuid,
        chip_id=raw[0x1A0:0x1E0],
        committed_tcb=struct.unpack_from("<Q", raw, 0x1E0)[0],
        current_version=FirmwareVersion(major=raw[0x1EA], minor=raw[0x1E9], build=raw[0x1E8]),
        committed_version=FirmwareVersion(major=raw[0x1EE], minor=raw[0x1ED], build=raw[0x1EC]),
        launch_tcb=struct.unpack_from("<Q", raw, 0x1F0)[0],
        launch_mit_vector=launch_mit,
        current_mit_vector=current_mit,
        signature_r=int.from_bytes(raw[r_at : r_at + SIG_COMPONENT_SIZE], "little"),
        signature_s=int.from_bytes(raw[s_at : s_at + SIG_COMPONENT_SIZE], "little"),
    )
