"""The manifest: canonical bytes, a strict parser, and authentication under the data key (plus fuzzing)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teelab.errors import SealedDataError
from teelab.sealed_store.errors import KeyMismatchError, ManifestError, ManifestTamperedError
from teelab.sealed_store.manifest import (
    MAX_MANIFEST_BYTES,
    Manifest,
    PartEntry,
    build_manifest,
    canonical_json,
    parse_manifest,
)

DEK = bytes(range(32))


def _manifest(parts: int = 3) -> Manifest:
    return build_manifest(
        dek=DEK,
        dataset="sales",
        version=2,
        created_at="2025-07-01T12:00:00Z",
        parts=[PartEntry(f"part-{k:05d}.parquet", 1000 + k, f"{k:064x}") for k in range(1, parts + 1)],
        key_ref="kbs:sales/2",
    )


VALID = _manifest().to_bytes()


def test_round_trip_and_digest() -> None:
    manifest = _manifest()
    assert parse_manifest(VALID) == manifest
    assert manifest.to_bytes() == canonical_json(json.loads(VALID))
    manifest.verify(DEK)
    assert len(manifest.sha256) == 64 and manifest.total_size == 1001 + 1002 + 1003


def test_verify_needs_the_right_key_and_untouched_fields() -> None:
    manifest = _manifest()
    with pytest.raises(KeyMismatchError):
        manifest.verify(bytes(32))
    for changed in (
        Manifest(**{**manifest.__dict__, "created_at": "2025-07-01T12:00:01Z"}),
        Manifest(**{**manifest.__dict__, "parts": manifest.parts[:2]}),
        Manifest(**{**manifest.__dict__, "key_ref": "kbs:other/2"}),
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


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzz_structured_field_edits(data: st.DataObject) -> None:
    document = _document()
    parts = document["parts"]
    assert isinstance(parts, list)
    target = data.draw(st.sampled_from(["top", "part"]))
    container = document if target == "top" else parts[data.draw(st.integers(0, len(parts) - 1))]
    key = data.draw(st.sampled_from([*sorted(container), "rows", "x"]))
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
