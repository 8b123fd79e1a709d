"""Binary SGX structures the simulated platform writes: the 384-byte report body and the ECDSA quote v3.

Offsets follow Intel's ``sgx_report_body_t`` and the DCAP quote v3 format byte for byte (the same offsets
real quotes use; see shared/vectors/NOTES.md §3), so every consumer of quotes is exercised on real layouts.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

REPORT_BODY_SIZE = 384
QUOTE_HEADER_SIZE = 48
QUOTE_VERSION = 3
ATT_KEY_TYPE_ECDSA_P256 = 2
CERT_TYPE_PCK_CHAIN_PEM = 5
# Intel's QE vendor id; a quote's consumers use it to tell an Intel-format QE.
QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")

ATTRIBUTE_INIT = 0x01
ATTRIBUTE_DEBUG = 0x02
ATTRIBUTE_MODE64BIT = 0x04
ATTRIBUTE_PROVISIONKEY = 0x10
DEFAULT_XFRM = 0xE7  # x87, SSE, AVX, AVX-512 state: what real enclaves on current Xeons report


@dataclass(frozen=True)
class ReportBody:
    cpusvn: bytes  # 16
    mrenclave: bytes  # 32
    mrsigner: bytes  # 32
    isv_prod_id: int
    isv_svn: int
    report_data: bytes  # 64
    attributes_flags: int = ATTRIBUTE_INIT | ATTRIBUTE_MODE64BIT
    attributes_xfrm: int = DEFAULT_XFRM
    miscselect: int = 0
    isv_ext_prod_id: bytes = bytes(16)
    config_id: bytes = bytes(64)
    config_svn: int = 0
    isv_family_id: bytes = bytes(16)

    def pack(self) -> bytes:
        if len(self.report_data) != 64:
            raise ValueError("report_data must be exactly 64 bytes")
        body = bytearray(REPORT_BODY_SIZE)
        body[0:16] = self.cpusvn
        struct.pack_into("<I", body, 16, self.miscselect)
        body[32:48] = self.isv_ext_prod_id
        struct.pack_into("<QQ", body, 48, self.attributes_flags, self.attributes_xfrm)
        body[64:96] = self.mrenclave
        body[128:160] = self.mrsigner
        body[192:256] = self.config_id
        struct.pack_into("<HHH", body, 256, self.isv_prod_id, self.isv_svn, self.config_svn)
        body[304:320] = self.isv_family_id
        body[320:384] = self.report_data
        return bytes(body)


def raw_signature(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    """ECDSA P-256/SHA-256 as the 64-byte r‖s that SGX structures and Intel collateral carry."""
    r, s = decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def raw_public_key(key: ec.EllipticCurvePublicKey) -> bytes:
    """The 64-byte X‖Y form of a P-256 key used in quotes."""
    numbers = key.public_numbers()
    return numbers.x.to_bytes(32, "big") + numbers.y.to_bytes(32, "big")


def qe_report_data(attestation_public_key: bytes, qe_auth_data: bytes) -> bytes:
    """The QE certifies the attestation key: SHA-256(key ‖ auth data) ‖ 32 zero bytes."""
    return hashlib.sha256(attestation_public_key + qe_auth_data).digest() + bytes(32)


@dataclass(frozen=True)
class QuotingEnclave:
    """The simulated QE: its attestation key and its PCK-signed report certifying that key."""

    attestation_key: ec.EllipticCurvePrivateKey
    qe_report: bytes  # 384, report_data = qe_report_data(attestation key, auth data)
    qe_report_signature: bytes  # 64, by the PCK key
    qe_auth_data: bytes
    pck_chain_pem: bytes  # leaf, PCK CA, root
    qe_svn: int
    pce_svn: int

    def quote(self, body: ReportBody) -> bytes:
        """An SGX ECDSA quote v3 over ``body``."""
        attestation_public = raw_public_key(self.attestation_key.public_key())
        header = struct.pack(
            "<HHIHH16s20s",
            QUOTE_VERSION,
            ATT_KEY_TYPE_ECDSA_P256,
            0,  # TEE type: reserved (0 = SGX) in v3
            self.qe_svn,
            self.pce_svn,
            QE_VENDOR_ID,
            hashlib.sha256(attestation_public).digest()[:16] + bytes(4),
        )
        signed = header + body.pack()
        # The certification data ends with a NUL, as the PEM chains in real quotes do.
        chain = self.pck_chain_pem + b"\x00"
        signature_data = b"".join(
            [
                raw_signature(self.attestation_key, signed),
                attestation_public,
                self.qe_report,
                self.qe_report_signature,
                struct.pack("<H", len(self.qe_auth_data)),
                self.qe_auth_data,
                struct.pack("<HI", CERT_TYPE_PCK_CHAIN_PEM, len(chain)),
                chain,
            ]
        )
        return signed + struct.pack("<I", len(signature_data)) + signature_data
