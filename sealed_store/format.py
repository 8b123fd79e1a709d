"""The fixed parts of the sealed-Parquet v1 format: names, part identities, key derivations.

Everything here is shared by the writer (``seal``), the reader and the key broker's expectations, and is
specified byte for byte in docs/sealed-format.md. Changing any constant makes a new format version.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from teelab.sealed_store.errors import InvalidNameError, KeyMismatchError

FORMAT = "teelab/sealed-parquet/v1"
MANIFEST_NAME = "manifest.json"
DEK_BYTES = 32
MAX_PARTS = 99_999  # part names carry five digits
MAX_VERSION = 2**53 - 1  # stays exact in every JSON implementation

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_PART_INFO = FORMAT.encode() + b"/part\x00"
_COMMIT_INFO = FORMAT.encode() + b"/commit"
_MANIFEST_INFO = FORMAT.encode() + b"/manifest"
_SCHEMA_INFO = FORMAT.encode() + b"/schema"

# Parquet Modular Encryption, encrypted-footer mode (parquet-format Encryption.md §5).
PARQUET_ENCRYPTED_MAGIC = b"PARE"


def check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidNameError(
            f"invalid dataset name {name!r}",
            hint="use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return name


def check_version(version: object) -> int:
    # bool is an int subclass; True is not version 1.
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_VERSION:
        raise InvalidNameError(f"invalid dataset version {version!r}", hint="versions are integers >= 1")
    return version


def part_name(k: int) -> str:
    """The file name of part ``k`` (1-based)."""
    return f"part-{k:05d}.parquet"


def aad_prefix(dataset: str, version: int, k: int, n: int) -> str:
    """The identity every encrypted module of part ``k`` of ``n`` is bound to (never stored in the file)."""
    return f"{dataset}/{version}/part-{k}-of-{n}"


def _hkdf(dek: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(dek)


def check_dek(dek: object) -> bytes:
    if not isinstance(dek, bytes) or len(dek) != DEK_BYTES:
        raise KeyMismatchError(f"a data key is exactly {DEK_BYTES} bytes")
    return dek


def part_key(dek: bytes, prefix: str) -> bytes:
    """One AES-256 key per part file: pyarrow silently lets a key be reused across files (research §0)."""
    return _hkdf(dek, _PART_INFO + prefix.encode())


def commitment(dek: bytes, dataset: str, version: int) -> str:
    """Key commitment: AES-GCM alone would let one ciphertext open under two keys ("invisible salamanders")."""
    message = _COMMIT_INFO + b"\x00" + dataset.encode() + b"\x00" + str(version).encode()
    return hmac.new(_hkdf(dek, _COMMIT_INFO), message, hashlib.sha256).hexdigest()


def manifest_mac(dek: bytes, unsigned_manifest: bytes) -> str:
    return hmac.new(_hkdf(dek, _MANIFEST_INFO), unsigned_manifest, hashlib.sha256).hexdigest()


def schema_key(dek: bytes) -> bytes:
    """The AES-256-GCM key of the manifest's encrypted schema (its own label: no key serves two purposes)."""
    return _hkdf(dek, _SCHEMA_INFO)


def schema_aad(dataset: str, version: int) -> bytes:
    """What the manifest's encrypted schema is bound to: a blob copied from another version does not open."""
    return _SCHEMA_INFO + b"\x00" + dataset.encode() + b"\x00" + str(version).encode()


_CRYPTO_HEAD = bytes.fromhex("1c1c2808")
_CRYPTO_TAIL = bytes.fromhex("11000000")
CRYPTO_METADATA_BYTES = len(_CRYPTO_HEAD) + 8 + len(_CRYPTO_TAIL)


def crypto_metadata_offset(size: int, last8: bytes) -> int | str:
    """Where ``FileCryptoMetaData`` starts, from the file's last 8 bytes; or what is wrong with them."""
    if len(last8) != 8 or last8[4:] != PARQUET_ENCRYPTED_MAGIC:
        return "not an encrypted-footer Parquet file (trailing magic altered)"
    footer_len = int.from_bytes(last8[:4], "little")
    offset = size - 8 - footer_len
    if offset < 4 or footer_len < CRYPTO_METADATA_BYTES:
        return "its footer length is out of range"
    return offset


def envelope_problem(head: bytes, crypto_metadata: bytes) -> str | None:
    """Check the bytes of a part that AES-GCM does not cover; ``None`` when they are exactly ours.

    In encrypted-footer mode every page, page header, index and the footer is its own GCM module, but a few
    bytes are plaintext: the leading magic, the trailing ``footer length ‖ magic`` (checked by
    :func:`crypto_metadata_offset`) and the Thrift-encoded ``FileCryptoMetaData`` in front of the encrypted
    footer. pyarrow never reads the leading magic, and decodes a stop byte with its high bit flipped as the
    same stop byte, so a reader relying on pyarrow alone accepts such files (measured). We require exactly
    what our writer produces: ``1c 1c 28 08 <8-byte file id> 11 00 00 00``, i.e. AES_GCM_V1 {
    aad_file_unique (8 bytes), supply_aad_prefix = true } and no key metadata. The file id is bound into
    every module's AAD, so it needs no check here.
    """
    if head[:4] != PARQUET_ENCRYPTED_MAGIC:
        return "not an encrypted-footer Parquet file (leading magic altered)"
    if (
        len(crypto_metadata) != CRYPTO_METADATA_BYTES
        or crypto_metadata[: len(_CRYPTO_HEAD)] != _CRYPTO_HEAD
        or crypto_metadata[len(_CRYPTO_HEAD) + 8 :] != _CRYPTO_TAIL
    ):
        return "its plaintext encryption metadata was altered"
    return None
