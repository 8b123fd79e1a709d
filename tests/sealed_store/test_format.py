"""The byte-level format constants, checked against an independent implementation of the spec
(docs/sealed-format.md): HKDF-SHA256 written out from RFC 5869, names, AAD prefixes."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from teelab.sealed_store.errors import InvalidNameError, KeyMismatchError
from teelab.sealed_store.format import (
    aad_prefix,
    check_dek,
    check_name,
    check_version,
    commitment,
    manifest_mac,
    part_key,
    part_name,
    schema_aad,
    schema_key,
)

DEK = bytes.fromhex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")


def rfc5869_hkdf_sha256(ikm: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 with salt=None (a zero-filled salt) and L=32: one expansion block."""
    prk = hmac.new(b"\x00" * 32, ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def test_part_key_derivation() -> None:
    prefix = aad_prefix("sales", 3, 2, 5)
    assert prefix == "sales/3/part-2-of-5"
    expected = rfc5869_hkdf_sha256(DEK, b"teelab/sealed-parquet/v1/part\x00sales/3/part-2-of-5")
    assert part_key(DEK, prefix) == expected
    assert part_key(DEK, aad_prefix("sales", 3, 1, 5)) != expected


def test_commitment_and_manifest_mac() -> None:
    commit_key = rfc5869_hkdf_sha256(DEK, b"teelab/sealed-parquet/v1/commit")
    message = b"teelab/sealed-parquet/v1/commit\x00sales\x003"
    assert commitment(DEK, "sales", 3) == hmac.new(commit_key, message, hashlib.sha256).hexdigest()
    assert commitment(DEK, "sales", 4) != commitment(DEK, "sales", 3)
    mac_key = rfc5869_hkdf_sha256(DEK, b"teelab/sealed-parquet/v1/manifest")
    assert manifest_mac(DEK, b"{}") == hmac.new(mac_key, b"{}", hashlib.sha256).hexdigest()


def test_schema_key_and_aad() -> None:
    assert schema_key(DEK) == rfc5869_hkdf_sha256(DEK, b"teelab/sealed-parquet/v1/schema")
    assert schema_aad("sales", 3) == b"teelab/sealed-parquet/v1/schema\x00sales\x003"
    purposes = {schema_key(DEK), rfc5869_hkdf_sha256(DEK, b"teelab/sealed-parquet/v1/manifest")}
    assert len(purposes) == 2  # its own key, not the MAC's


def test_names() -> None:
    for good in ("a", "A9", "sales.2024_q1-eu", "x" * 128, "9lives"):
        assert check_name(good) == good
    for bad in ("", ".a", "_a", "-a", "a/b", "a b", "x" * 129, "é", "a\n", None, 5):
        with pytest.raises(InvalidNameError):
            check_name(bad)
    assert check_version(1) == 1
    for bad_version in (0, -3, True, 1.5, "1", 2**53):
        with pytest.raises(InvalidNameError):
            check_version(bad_version)
    assert part_name(1) == "part-00001.parquet" and part_name(99999) == "part-99999.parquet"
    with pytest.raises(KeyMismatchError):
        check_dek(DEK[:31])
    with pytest.raises(KeyMismatchError):
        check_dek(bytearray(DEK))
