"""Reading an SGX SIGSTRUCT (Gramine's ``<name>.sig``): MRENCLAVE, MRSIGNER and the signed enclave identity.

The layout is Intel's (SDM vol. 3D, "Enclave Signature Structure"), 1808 bytes, little-endian. MRENCLAVE is the
ENCLAVEHASH field the signer computed over the enclave's pages — the value a quote from this enclave carries —
and MRSIGNER is the SHA-256 of the signer's RSA-3072 modulus in little-endian byte order. Parsing also checks
the RSA signature, so a damaged or swapped ``.sig`` is refused instead of pinning a value nobody signed.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from teelab.errors import EnclaveError, UsageError

SIGSTRUCT_SIZE = 1808
# Fixed header values every SIGSTRUCT carries (Intel SDM); a file without them is not a SIGSTRUCT.
HEADER = bytes.fromhex("06000000e10000000000010000000000")
HEADER2 = bytes.fromhex("01010000600000006000000001000000")

OFFSET_HEADER = 0
OFFSET_VENDOR = 16
OFFSET_DATE = 20
OFFSET_HEADER2 = 24
OFFSET_MODULUS = 128
OFFSET_EXPONENT = 512
OFFSET_SIGNATURE = 516
OFFSET_MISCSELECT = 900
OFFSET_MISCMASK = 904
OFFSET_ATTRIBUTES = 928
OFFSET_ATTRIBUTE_MASK = 944
OFFSET_ENCLAVE_HASH = 960
OFFSET_ISV_PROD_ID = 1024
OFFSET_ISV_SVN = 1026

ATTRIBUTE_DEBUG = 0x02


@dataclass(frozen=True)
class SgxSigstruct:
    mrenclave: bytes
    mrsigner: bytes
    isv_prod_id: int
    isv_svn: int
    attribute_flags: int
    attribute_xfrm: int
    attribute_flags_mask: int
    misc_select: int
    misc_mask: int
    date: str
    modulus: bytes  # little-endian, as stored

    @property
    def debug(self) -> bool:
        return bool(self.attribute_flags & ATTRIBUTE_DEBUG)

    def to_json(self) -> dict[str, object]:
        return {
            "mr_enclave": self.mrenclave.hex(),
            "mr_signer": self.mrsigner.hex(),
            "isv_prod_id": self.isv_prod_id,
            "isv_svn": self.isv_svn,
            "attribute_flags": f"{self.attribute_flags:#018x}",
            "attribute_xfrm": f"{self.attribute_xfrm:#018x}",
            "debug_enclave": self.debug,
            "date": self.date,
        }


def signed_bytes(data: bytes) -> bytes:
    """The 256 bytes the author's RSA key signs: the first 128 bytes and the 128 after the signature."""
    return data[:128] + data[OFFSET_MISCSELECT : OFFSET_MISCSELECT + 128]


def parse_sigstruct(data: bytes, *, source: str = "SIGSTRUCT") -> SgxSigstruct:
    """Parse and check a SIGSTRUCT; any inconsistency is an EnclaveError naming ``source``."""
    if len(data) != SIGSTRUCT_SIZE:
        raise EnclaveError(f"{source} is {len(data)} bytes; an SGX SIGSTRUCT is exactly {SIGSTRUCT_SIZE}")
    if (
        data[OFFSET_HEADER : OFFSET_HEADER + 16] != HEADER
        or data[OFFSET_HEADER2 : OFFSET_HEADER2 + 16] != HEADER2
    ):
        raise EnclaveError(
            f"{source} does not start with the SIGSTRUCT header: it is not an SGX signature file"
        )
    modulus = data[OFFSET_MODULUS : OFFSET_MODULUS + 384]
    (exponent,) = struct.unpack_from("<I", data, OFFSET_EXPONENT)
    if exponent != 3:
        raise EnclaveError(f"{source}: RSA exponent {exponent}; SGX requires 3")
    signature = data[OFFSET_SIGNATURE : OFFSET_SIGNATURE + 384]
    try:
        public = rsa.RSAPublicNumbers(3, int.from_bytes(modulus, "little")).public_key()
    except ValueError as error:  # e.g. a zero or even modulus
        raise EnclaveError(f"{source}: the author's RSA modulus is not a valid key ({error})") from None
    try:
        # SGX stores the signature little-endian; RSA libraries take it big-endian.
        public.verify(signature[::-1], signed_bytes(data), padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        raise EnclaveError(
            f"{source}: the author's signature does not verify — the file is damaged or was altered",
            hint="sign the enclave again with gramine-sgx-sign",
        ) from None
    flags, xfrm = struct.unpack_from("<QQ", data, OFFSET_ATTRIBUTES)
    (flags_mask,) = struct.unpack_from("<Q", data, OFFSET_ATTRIBUTE_MASK)
    misc_select, misc_mask = struct.unpack_from("<II", data, OFFSET_MISCSELECT)
    year, month, day = struct.unpack_from("<HBB", data, OFFSET_DATE)
    prod_id, svn = struct.unpack_from("<HH", data, OFFSET_ISV_PROD_ID)
    return SgxSigstruct(
        mrenclave=data[OFFSET_ENCLAVE_HASH : OFFSET_ENCLAVE_HASH + 32],
        mrsigner=hashlib.sha256(modulus).digest(),
        isv_prod_id=prod_id,
        isv_svn=svn,
        attribute_flags=flags,
        attribute_xfrm=xfrm,
        attribute_flags_mask=flags_mask,
        misc_select=misc_select,
        misc_mask=misc_mask,
        # The date is stored as binary-coded decimal (0x2025, 0x07, 0x01 is 2025-07-01).
        date=f"{year:04x}-{month:02x}-{day:02x}",
        modulus=modulus,
    )


def build_sigstruct(
    key: rsa.RSAPrivateKey,
    *,
    mrenclave: bytes,
    isv_prod_id: int = 0,
    isv_svn: int = 0,
    attribute_flags: int = 0x04,
    attribute_xfrm: int = 0x03,
) -> bytes:
    """A signed SIGSTRUCT with these values, laid out as ``gramine-sgx-sign`` writes it.

    teelab never signs Gramine enclaves itself (``gramine-sgx-sign`` does); this exists so the parser can be
    checked against a structure with a real signature, and for stand-in tools in tests.
    """
    data = bytearray(SIGSTRUCT_SIZE)
    data[OFFSET_HEADER : OFFSET_HEADER + 16] = HEADER
    data[OFFSET_HEADER2 : OFFSET_HEADER2 + 16] = HEADER2
    struct.pack_into("<QQ", data, OFFSET_ATTRIBUTES, attribute_flags, attribute_xfrm)
    struct.pack_into("<QQ", data, OFFSET_ATTRIBUTE_MASK, 0xFFFFFFFFFFFFFFFD, 0xFFFFFFFFFFF9FF1B)
    struct.pack_into("<II", data, OFFSET_MISCSELECT, 0, 0xFFFFFFFF)
    data[OFFSET_ENCLAVE_HASH : OFFSET_ENCLAVE_HASH + 32] = mrenclave
    struct.pack_into("<HH", data, OFFSET_ISV_PROD_ID, isv_prod_id, isv_svn)
    numbers = key.public_key().public_numbers()
    if numbers.e != 3 or key.key_size != 3072:
        raise EnclaveError("an SGX signing key must be RSA-3072 with public exponent 3")
    data[OFFSET_MODULUS : OFFSET_MODULUS + 384] = numbers.n.to_bytes(384, "little")
    struct.pack_into("<I", data, OFFSET_EXPONENT, 3)
    signature = key.sign(signed_bytes(bytes(data)), padding.PKCS1v15(), hashes.SHA256())
    data[OFFSET_SIGNATURE : OFFSET_SIGNATURE + 384] = signature[::-1]
    # Q1/Q2 (helper values for the CPU's verification) are not needed to parse; left zero.
    return bytes(data)


def load_author_key(path: Path | None, *, backend: str) -> rsa.RSAPrivateKey:
    """The enclave author's SGX signing key, which must be named explicitly.

    A hardware enclave's MRSIGNER is what a policy pins to say "enclaves of this author": signing silently
    with a default key (Gramine's per-user key, Occlum's public ``Enclave.pem``) would make it meaningless.
    """
    if path is None:
        tool = " or `gramine-sgx-gen-private-key author.pem`" if backend.startswith("gramine") else ""
        raise UsageError(
            f"the {backend} backend signs the enclave with its author's key, and none was given",
            hint="pass --signing-key PEM (an RSA-3072 key with exponent 3, e.g. from "
            f"`openssl genrsa -3 -out author.pem 3072`{tool})",
        )
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise UsageError(f"signing key {path} does not exist") from None
    except (ValueError, TypeError) as error:
        raise UsageError(f"signing key {path} is not an unencrypted PEM private key: {error}") from None
    if (
        not isinstance(loaded, rsa.RSAPrivateKey)
        or loaded.key_size != 3072
        or loaded.public_key().public_numbers().e != 3
    ):
        raise UsageError(
            f"signing key {path} must be an RSA-3072 key with public exponent 3, as SGX requires"
        )
    return loaded
