"""The manifest: canonical bytes, a strict parser, and authentication under the data key (plus fuzzing)."""

from __future__ import annotations

import base64
import json

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teelab.errors import SealedDataError
from teelab.sealed_store.errors import KeyMismatchError, ManifestError, ManifestTamperedError
from teelab.sealed_store.format import manifest_mac, schema_aad, schema_key
from teelab.sealed_store.manifest import (
    MAX_MANIFEST_BYTES,
    Manifest,
    PartEntry,
    build_manifest,
    canonical_json,
    parse_manifest,
)
from teelab.sealed_store.sealed_schema import MAX_SCHEMA_TEXT

DEK = bytes(range(32))
SCHEMA = pa.schema(
    [("patient_id", pa.int64()), ("diagnosis", pa.string())], metadata={b"pandas": b'{"index_columns":[]}'}
)


def _manifest(
    parts: int = 3, *, dataset: str = "sales", version: int = 2, schema: pa.Schema | None = SCHEMA
) -> Manifest:
    return build_manifest(
        dek=DEK,
        dataset=dataset,
        version=version,
        created_at="2025-07-01T12:00:00Z",
        parts=[PartEntry(f"part-{k:05d}.parquet", 1000 + k, f"{k:064x}") for k in range(1, parts + 1)],
        key_ref=f"kbs:{dataset}/{version}",
        schema=schema,
    )


def _remac(manifest: Manifest, **changes: object) -> Manifest:
    """``manifest`` with ``changes``, MACed again under DEK: what only a holder of the data key can make."""
    changed = Manifest(**{**manifest.__dict__, **changes, "mac": ""})
    return Manifest(
        **{**changed.__dict__, "mac": manifest_mac(DEK, canonical_json(changed.unsigned_document()))}
    )


VALID = _manifest().to_bytes()


def test_round_trip_and_digest() -> None:
    manifest = parse_manifest(VALID)
    assert manifest.to_bytes() == VALID == canonical_json(json.loads(VALID))
    manifest.verify(DEK)
    assert len(manifest.sha256) == 64 and manifest.total_size == 1001 + 1002 + 1003


def test_the_schema_is_in_the_manifest_only_encrypted() -> None:
    manifest = parse_manifest(VALID)
    schema = manifest.arrow_schema(DEK)
    assert schema is not None and schema.equals(SCHEMA, check_metadata=True)
    for needle in (b"patient_id", b"diagnosis", b"index_columns", b"utf8", b"int64"):
        assert needle not in VALID
    raw = base64.b64decode(json.loads(VALID)["schema"])
    for needle in (b"patient_id", b"diagnosis"):
        assert needle not in raw
    # Sealed under the key derived for the purpose, bound to the dataset and version (format.py).
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    assert AESGCM(schema_key(DEK)).decrypt(raw[:12], raw[12:], schema_aad("sales", 2)) == (
        SCHEMA.serialize().to_pybytes()
    )
    # A fresh nonce each time: sealing the same schema twice gives different ciphertexts.
    assert _manifest().encrypted_schema != manifest.encrypted_schema


def test_a_manifest_without_a_schema_still_parses_and_verifies() -> None:
    """Manifests sealed before the field existed: same bytes as before (no "schema" key), same MAC."""
    old = _manifest(schema=None)
    assert b'"schema"' not in old.to_bytes()
    assert parse_manifest(old.to_bytes()) == old
    old.verify(DEK)
    assert old.arrow_schema(DEK) is None


def test_a_schema_is_decrypted_only_after_the_mac_verifies() -> None:
    manifest = parse_manifest(VALID)
    unauthenticated = Manifest(**{**manifest.__dict__, "mac": "0" * 64})
    with pytest.raises(ManifestTamperedError, match="MAC"):
        unauthenticated.arrow_schema(DEK)
    with pytest.raises(KeyMismatchError):
        manifest.arrow_schema(bytes(32))


def test_a_schema_blob_sealed_for_another_dataset_or_version_does_not_open() -> None:
    """Even re-MACed by a holder of the same data key, a blob moved from another dataset or version fails
    AES-GCM (its AAD binds dataset and version); so does a flipped bit."""
    manifest = parse_manifest(VALID)
    raw = bytearray(base64.b64decode(manifest.encrypted_schema or ""))
    raw[len(raw) // 2] ^= 0x01
    flipped = base64.b64encode(bytes(raw)).decode()
    for foreign in (
        _manifest(version=3).encrypted_schema,
        _manifest(dataset="other").encrypted_schema,
        flipped,
    ):
        moved = _remac(manifest, encrypted_schema=foreign)
        moved.verify(DEK)  # the MAC is fine: only the schema's own authentication catches it
        with pytest.raises(ManifestTamperedError, match=r"'sales' v2: .*encrypted schema does not decrypt"):
            moved.arrow_schema(DEK)


def test_a_sealed_blob_that_is_not_a_schema_is_refused() -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = bytes(12)
    junk = AESGCM(schema_key(DEK)).encrypt(nonce, b"not an arrow ipc message", schema_aad("sales", 2))
    forged = _remac(parse_manifest(VALID), encrypted_schema=base64.b64encode(nonce + junk).decode())
    with pytest.raises(ManifestTamperedError, match="not an Arrow schema"):
        forged.arrow_schema(DEK)


def test_verify_needs_the_right_key_and_untouched_fields() -> None:
    manifest = _manifest()
    with pytest.raises(KeyMismatchError):
        manifest.verify(bytes(32))
    for changed in (
        Manifest(**{**manifest.__dict__, "created_at": "2025-07-01T12:00:01Z"}),
        Manifest(**{**manifest.__dict__, "parts": manifest.parts[:2]}),
        Manifest(**{**manifest.__dict__, "key_ref": "kbs:other/2"}),
        Manifest(**{**manifest.__dict__, "encrypted_schema": None}),  # the schema dropped
        Manifest(**{**manifest.__dict__, "encrypted_schema": _manifest(version=3).encrypted_schema}),
    ):
        with pytest.raises(ManifestTamperedError):
            changed.verify(DEK)
    with pytest.raises(KeyMismatchError):  # the commitment binds dataset and version
        Manifest(**{**manifest.__dict__, "version": 3}).verify(DEK)


def _document() -> dict[str, object]:
    return json.loads(VALID)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.update(extra=1), "exactly the fields"),
        (lambda d: d.pop("mac"), "exactly the fields"),
        (lambda d: d.update(format="other"), "unknown format"),
        (lambda d: d.update(version=True), "version"),
        (lambda d: d.update(version=0), "version"),
        (lambda d: d.update(dataset="../x"), "name"),
        (lambda d: d.update(created_at="2025-13-01T00:00:00Z"), "created_at"),
        (lambda d: d.update(created_at="2025-07-01 12:00:00"), "created_at"),
        (lambda d: d.update(key={"kbs": ""}), "key.kbs"),
        (lambda d: d.update(key={"kbs": "x", "wrapped": "y"}), "key must be"),
        (lambda d: d.update(mac="A" * 64), "mac"),
        (lambda d: d.update(commitment="0" * 63), "commitment"),
        (lambda d: d.update(parts=[]), "parts must list"),
        (lambda d: d["parts"].reverse(), "must be named"),
        (lambda d: d["parts"][0].update(size=-1), "size"),
        (lambda d: d["parts"][0].update(size=False), "size"),
        (lambda d: d["parts"][0].update(rows="3"), "rows"),
        (lambda d: d["parts"][0].update(extra=1), "fields name, size, sha256"),
        (lambda d: d["parts"][0].update(sha256="g" * 64), "sha256"),
        (lambda d: d.update(schema=None), "schema is not a string"),
        (lambda d: d.update(schema=5), "schema is not a string"),
        (lambda d: d.update(schema=""), "too short"),
        (lambda d: d.update(schema="QUJD" * 7), "too short"),  # 21 bytes: less than nonce and tag
        (lambda d: d.update(schema=d["schema"][:-1]), "base64"),  # not a multiple of 4
        (lambda d: d.update(schema=d["schema"].replace("=", "A")[:-4] + "QR=="), "canonical base64"),
        (lambda d: d.update(schema=d["schema"][:8] + "\n" + d["schema"][9:]), "base64"),
        (lambda d: d.update(schema="-_" + d["schema"][2:]), "base64"),  # the URL-safe alphabet
        (lambda d: d.update(schema="=" + d["schema"][1:]), "base64"),
        (lambda d: d.update(schema="A" * (MAX_SCHEMA_TEXT + 4)), "longer than"),
    ],
)
def test_parser_rejects(mutate, match) -> None:
    document = _document()
    mutate(document)
    with pytest.raises(ManifestError, match=match):
        parse_manifest(canonical_json(document))


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"[]",
        b"null",
        VALID + b"\n",
        VALID.replace(b":", b": ", 1),
        VALID.replace(b'"version":2', b'"version":2.0'),
        VALID.replace(b'"version":2', b'"version":NaN'),
        VALID[:-1] + b',"format":"teelab/sealed-parquet/v1"}',  # duplicate key
        "é".encode() + VALID,
        b"[" * 100_000,
        b"1" * 5000,
        b" " * (MAX_MANIFEST_BYTES + 1),
    ],
)
def test_parser_rejects_non_canonical_bytes(raw) -> None:
    with pytest.raises(ManifestError, match="malformed manifest"):
        parse_manifest(raw)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes(raw: bytes) -> None:
    try:
        manifest = parse_manifest(raw)
    except ManifestError:
        return
    assert manifest.to_bytes() == raw


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_fuzz_mutated_manifest_never_authenticates(data: st.DataObject) -> None:
    raw = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["flip", "set", "insert", "delete"]))
        at = data.draw(st.integers(0, max(0, len(raw) - 1)))
        if action == "flip":
            raw[at] ^= 1 << data.draw(st.integers(0, 7))
        elif action == "set":
            raw[at] = data.draw(st.integers(0, 255))
        elif action == "insert":
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        elif len(raw) > 1:
            del raw[at]
    try:
        manifest = parse_manifest(bytes(raw))
        manifest.verify(DEK)
    except SealedDataError as error:
        assert isinstance(error, ManifestError | KeyMismatchError)
        return
    assert bytes(raw) == VALID, "a changed manifest authenticated"


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


BASE64ISH = st.text(alphabet="ABCDQRSTabcz0189+/=-_ \n\x00é", max_size=200)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_fuzz_schema_field(data: st.DataObject) -> None:
    """Any value of the schema field: a ManifestError from the parser, or a typed refusal once authenticated
    (the MAC, then AES-GCM) — never another exception, never a schema that is not the sealed one."""
    document = _document()
    original = document["schema"]
    assert isinstance(original, str)
    how = data.draw(st.sampled_from(["text", "json", "splice", "remac"]))
    if how == "text":
        value: object = data.draw(BASE64ISH)
    elif how == "json":
        value = data.draw(JSON_VALUES)
    else:
        at = data.draw(st.integers(0, len(original)))
        value = original[:at] + data.draw(BASE64ISH) + original[at + data.draw(st.integers(0, 8)) :]
    document["schema"] = value
    try:
        raw = canonical_json(document)
    except (TypeError, ValueError):
        return
    try:
        manifest = parse_manifest(raw)
    except ManifestError:
        return
    if how == "remac":  # a holder of the data key wrote it: the schema's own authentication must hold
        manifest = _remac(manifest)
    try:
        schema = manifest.arrow_schema(DEK)
    except (ManifestError, KeyMismatchError):
        return
    assert schema is not None and schema.equals(SCHEMA, check_metadata=True)
    assert value == original


def test_the_largest_schema_fields() -> None:
    """The field's size is bounded before it is decoded (then one regex pass and one decode: linear)."""
    document = _document()
    document["schema"] = "A" * (MAX_SCHEMA_TEXT + 4)
    with pytest.raises(ManifestError, match="longer than"):
        parse_manifest(canonical_json(document))
    document["schema"] = "A" * (MAX_SCHEMA_TEXT - 4) + "A=A="
    with pytest.raises(ManifestError, match="not padded standard base64"):
        parse_manifest(canonical_json(document))
    document["schema"] = "+" * MAX_SCHEMA_TEXT  # well-formed and maximal: parses, then fails the MAC
    manifest = parse_manifest(canonical_json(document))
    with pytest.raises(ManifestTamperedError, match="MAC"):
        manifest.arrow_schema(DEK)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzz_structured_field_edits(data: st.DataObject) -> None:
    document = _document()
    parts = document["parts"]
    assert isinstance(parts, list)
    target = data.draw(st.sampled_from(["top", "part"]))
    container = document if target == "top" else parts[data.draw(st.integers(0, len(parts) - 1))]
    key = data.draw(st.sampled_from([*sorted(container), "rows", "schema", "x"]))
    container[key] = data.draw(JSON_VALUES)
    try:
        raw = canonical_json(document)
    except (TypeError, ValueError):
        return
    try:
        parse_manifest(raw).verify(DEK)
    except (ManifestError, KeyMismatchError):
        return
    assert raw == VALID
