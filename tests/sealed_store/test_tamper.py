"""The tamper matrix: every way the (untrusted) store can alter a sealed dataset is detected, by the right error.

The reader is given what the key broker would give it: the current version, that version's manifest
digest and the data key. Each test alters the store and checks that reading fails with the error that names
what happened, and never returns data.
"""

from __future__ import annotations

import base64
import json
import random

import pandas as pd
import pytest

from teelab.errors import SealedDataError
from teelab.sealed_store.errors import (
    DatasetNotFoundError,
    KeyMismatchError,
    ManifestError,
    ManifestMismatchError,
    ManifestTamperedError,
    PartMissingError,
    PartSizeError,
    PartSwappedError,
    PartTamperedError,
    RollbackError,
)
from teelab.sealed_store.manifest import canonical_json

# ------------------------------------------------------------------------------------------- bit flips


def _flip(data: bytes, offset: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[offset] ^= 1 << bit
    return bytes(out)


def _regions(size: int, footer_start: int) -> dict[str, list[int]]:
    """Offsets to flip: the whole file header, a sample of the pages, and the footer's every plaintext byte
    (crypto metadata, module length, nonce), a sample of its ciphertext, its tag, length and magic."""
    rng = random.Random(size)
    return {
        "header": list(range(0, 8)),
        "middle": sorted(rng.sample(range(8, footer_start), 40)),
        "footer": [
            *range(footer_start, footer_start + 36),
            *sorted(rng.sample(range(footer_start + 36, size - 24), 30)),
            *range(size - 24, size),
        ],
    }


def _footer_start(raw: bytes) -> int:
    return len(raw) - 8 - int.from_bytes(raw[-8:-4], "little")


@pytest.mark.parametrize("region", ["header", "middle", "footer"])
def test_a_flipped_bit_in_a_part_is_detected(published, region) -> None:
    raw = published.part_bytes(2)
    offsets = _regions(len(raw), _footer_start(raw))[region]
    for offset in offsets:
        for bit in (0, 7):
            published.replace_part(2, _flip(raw, offset, bit))
            with pytest.raises(PartTamperedError, match=r"'sales' v1, part-00002\.parquet") as caught:
                published.read()
            assert caught.value.part == "part-00002.parquet"
    published.replace_part(2, raw)
    pd.testing.assert_frame_equal(published.read(), published.frame)


@pytest.mark.slow
@pytest.mark.parametrize("dataset_store", ["memory"], indirect=True)
def test_every_bit_position_of_a_small_part_is_covered(publisher) -> None:
    """Exhaustive: bit 0 and bit 7 of every byte. This is what found the two plaintext spots (the leading
    magic and the Thrift stop bytes of FileCryptoMetaData) that pyarrow alone lets through."""
    frame = pd.DataFrame({"a": range(300), "s": [f"x{i % 7}" for i in range(300)]})
    published = publisher(frame, part_rows=300, row_group_rows=100)
    raw = published.part_bytes(1)
    accepted = []
    for offset in range(len(raw)):
        for bit in (0, 7):
            published.replace_part(1, _flip(raw, offset, bit))
            try:
                published.read()
            except SealedDataError:
                continue
            accepted.append((offset, bit))
    assert accepted == []


def test_the_plaintext_bytes_pyarrow_ignores_are_checked(published) -> None:
    """pyarrow never reads the leading magic, and decodes a Thrift stop byte with its high bit set (0x80) as
    a stop byte: both are caught by the envelope check, before pyarrow sees the file."""
    raw = published.part_bytes(1)
    start = _footer_start(raw)
    stop_bytes = [start + 13, start + 14, start + 15]  # the three stop bytes ending FileCryptoMetaData
    assert all(raw[i] == 0 for i in stop_bytes)
    for offset, bit in [(0, 0), (3, 7), *((i, 7) for i in stop_bytes)]:
        published.replace_part(1, _flip(raw, offset, bit))
        with pytest.raises(PartTamperedError, match=r"magic|encryption metadata"):
            published.read()


def test_a_flipped_bit_in_the_manifest_is_detected(published) -> None:
    path = published.store.manifest_path("sales", 1)
    raw = bytes(published.store.fs.cat_file(path))
    for offset in random.Random(5).sample(range(len(raw)), 60):
        published.store.fs.pipe_file(path, _flip(raw, offset, 1))
        with pytest.raises((ManifestError, ManifestMismatchError)):
            published.read()


# ------------------------------------------------------------------------------------ size changes


@pytest.mark.parametrize("cut", [1, 8, 1000, "half", "all-but-4"])
def test_truncated_part(published, cut) -> None:
    raw = published.part_bytes(3)
    keep = {"half": len(raw) // 2, "all-but-4": 4}.get(
        str(cut), len(raw) - int(cut) if isinstance(cut, int) else 0
    )
    published.replace_part(3, raw[:keep])
    with pytest.raises(PartSizeError, match=r"part-00003\.parquet.*truncated"):
        published.read()


def test_extended_part(published) -> None:
    published.replace_part(1, published.part_bytes(1) + b"\x00" * 16)
    with pytest.raises(PartSizeError, match="extended"):
        published.read()


def test_truncated_part_that_keeps_its_size_is_caught_by_gcm(published) -> None:
    """Cut the last row group's pages but pad back to the manifest's size: the footer still lists them."""
    raw = published.part_bytes(1)
    start = _footer_start(raw)
    hole = start - 2000
    forged = raw[:hole] + b"\x00" * 2000 + raw[start:]
    assert len(forged) == len(raw)
    published.replace_part(1, forged)
    with pytest.raises(PartTamperedError):
        published.read()


# ----------------------------------------------------------------------------------------- swaps


def test_parts_swapped_within_a_dataset(publisher) -> None:
    # Identical rows in every part give identical part sizes, so only cryptography can tell them apart.
    frame = pd.DataFrame({"v": [1.5] * 3000, "s": ["same"] * 3000})
    published = publisher(frame)
    sizes = [p.size for p in published.sealed.dataset.manifest.parts]
    assert len(set(sizes)) == 1
    one, two = published.part_bytes(1), published.part_bytes(2)
    published.replace_part(1, two)
    published.replace_part(2, one)
    with pytest.raises(
        PartSwappedError, match=r"part-00001\.parquet: holds the bytes of part-00002\.parquet"
    ):
        published.read()


def test_parts_swapped_with_different_sizes_are_named(published) -> None:
    one, three = published.part_bytes(1), published.part_bytes(3)
    published.replace_part(1, three)
    published.replace_part(3, one)
    with pytest.raises(PartSwappedError, match="holds the bytes of part-00003"):
        published.read()


def test_part_from_another_dataset_with_the_same_key_and_size(publisher) -> None:
    """Even sealed under the *same* data key, a part of another dataset fails: its key and AAD prefix are
    derived from its own identity."""
    frame = pd.DataFrame({"v": range(3000)})
    dek = bytes(range(32))
    target = publisher(frame, name="alpha", dek=dek)
    other = publisher(frame, name="bravo", dek=dek)
    assert other.part_bytes(1) != target.part_bytes(1) and len(other.part_bytes(1)) == len(
        target.part_bytes(1)
    )
    target.replace_part(1, other.part_bytes(1))
    with pytest.raises(PartTamperedError, match=r"'alpha' v1, part-00001\.parquet: failed authentication"):
        target.read()


def test_part_from_another_version(publisher) -> None:
    frame = pd.DataFrame({"v": range(3000)})
    old = publisher(frame, version=1)
    new = publisher(frame, version=2)
    new.replace_part(2, old.part_bytes(2))
    with pytest.raises(PartTamperedError, match=r"v2, part-00002"):
        new.read()


def test_part_dropped(published) -> None:
    published.store.fs.rm_file(published.part_path(2))
    with pytest.raises(PartMissingError, match=r"part-00002\.parquet: is missing"):
        published.read()


# ------------------------------------------------------------------------------------ manifest edits


def _edit_manifest(published, edit) -> bytes:
    path = published.store.manifest_path(published.name, published.version)
    document = json.loads(published.store.fs.cat_file(path))
    edit(document)
    data = canonical_json(document)
    published.store.fs.pipe_file(path, data)
    return data


def _flip_base64(text: str) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[len(raw) // 2] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


EDITS = {
    "format": lambda d: d.update(format="teelab/sealed-parquet/v2"),
    "created_at": lambda d: d.update(created_at="2020-01-01T00:00:00Z"),
    "part size": lambda d: d["parts"][0].update(size=d["parts"][0]["size"] + 1),
    "part hash": lambda d: d["parts"][1].update(sha256="0" * 64),
    "part name": lambda d: d["parts"][1].update(name="part-00003.parquet"),
    "part dropped": lambda d: d["parts"].pop(),
    "part rows added": lambda d: d["parts"][0].update(rows=1),
    "key reference": lambda d: d.update(key={"kbs": "kbs:other/1"}),
    "commitment": lambda d: d.update(commitment="1" * 64),
    "mac": lambda d: d.update(mac="2" * 64),
    "whitespace": None,
    "extra field": lambda d: d.update(note="hello"),
    "schema dropped": lambda d: d.pop("schema"),
    "schema bit flipped": lambda d: d.update(schema=_flip_base64(d["schema"])),
}


@pytest.mark.parametrize("field", sorted(EDITS))
def test_manifest_edited(published, field) -> None:
    if field == "whitespace":
        path = published.store.manifest_path("sales", 1)
        published.store.fs.pipe_file(path, published.store.fs.cat_file(path).replace(b",", b", ", 1))
    else:
        _edit_manifest(published, EDITS[field])
    with pytest.raises(ManifestTamperedError, match=r"'sales' v1: .*edited"):
        published.read()


@pytest.mark.parametrize(
    "field",
    [
        "part size",
        "part hash",
        "part dropped",
        "key reference",
        "created_at",
        "schema dropped",
        "schema bit flipped",
    ],
)
def test_manifest_edited_and_registered_still_fails_its_mac(published, field) -> None:
    """Even if the broker had recorded the edited manifest's digest, the MAC under the data key fails."""
    data = _edit_manifest(published, EDITS[field])
    import hashlib

    with pytest.raises(ManifestTamperedError, match="MAC"):
        published.read(manifest_sha256=hashlib.sha256(data).hexdigest())


def test_manifest_schema_copied_from_another_version(publisher, frame_factory) -> None:
    """The store moves the encrypted schema of v2 (another column set) into v1's manifest: the MAC fails."""
    first = publisher(frame_factory(1500), version=1)
    second = publisher(frame_factory(1500)[["id", "amount"]], version=2)
    other = json.loads(second.store.fs.cat_file(second.store.manifest_path("sales", 2)))["schema"]
    data = _edit_manifest(first, lambda d: d.update(schema=other))
    import hashlib

    for digest in (first.manifest_sha256, hashlib.sha256(data).hexdigest()):
        with pytest.raises(ManifestTamperedError, match=r"'sales' v1: .*(edited|MAC)"):
            first.read(manifest_sha256=digest)


def test_manifest_naming_another_dataset(published) -> None:
    _edit_manifest(published, lambda d: d.update(dataset="other"))
    with pytest.raises(ManifestMismatchError, match="manifest of 'other' v1") as caught:
        published.read()
    assert not isinstance(caught.value, RollbackError)


def test_manifest_missing(published) -> None:
    published.store.fs.rm_file(published.store.manifest_path("sales", 1))
    with pytest.raises(DatasetNotFoundError, match="no manifest"):
        published.read()


# -------------------------------------------------------------------------------- versions and keys


def _copy_version(store, name: str, source: int, target: int) -> None:
    """What an attacker controlling the store does: serve one version's files in another's place."""
    fs = store.fs
    target_dir = store.version_path(name, target)
    fs.rm(target_dir, recursive=True)
    fs.makedirs(target_dir, exist_ok=True)
    for path in fs.ls(store.version_path(name, source), detail=False):
        fs.pipe_file(f"{target_dir}/{path.rsplit('/', 1)[1]}", fs.cat_file(path))
    fs.invalidate_cache()


def test_rollback_to_an_older_version_is_detected(publisher, frame_factory) -> None:
    old = publisher(frame_factory(1500), version=1)
    new = publisher(frame_factory(2500), version=2)
    pd.testing.assert_frame_equal(new.read(), new.frame)
    _copy_version(new.store, "sales", 1, 2)
    with pytest.raises(RollbackError, match=r"'sales' v2: the store serves the manifest of v1"):
        new.read()
    # The old version itself is still readable with its own (old) broker record and key.
    pd.testing.assert_frame_equal(old.read(), old.frame)


def test_rollback_by_deleting_the_current_version(publisher, frame_factory) -> None:
    publisher(frame_factory(100), version=1)
    new = publisher(frame_factory(100), version=2)
    new.store.delete("sales", 2)
    assert new.store.latest_version("sales") == 1
    with pytest.raises(DatasetNotFoundError, match="'sales' v2"):
        new.read()


def test_old_manifest_with_new_parts(publisher, frame_factory) -> None:
    old = publisher(frame_factory(1500), version=1)
    new = publisher(frame_factory(1500), version=2)
    path = new.store.manifest_path("sales", 2)
    new.store.fs.pipe_file(path, old.store.fs.cat_file(old.store.manifest_path("sales", 1)))
    with pytest.raises(RollbackError):
        new.read()


def test_newer_manifest_served_for_an_older_version(publisher, frame_factory) -> None:
    old = publisher(frame_factory(1500), version=1)
    publisher(frame_factory(1500), version=2)
    _copy_version(old.store, "sales", 2, 1)
    with pytest.raises(ManifestMismatchError, match="manifest of v2"):
        old.read()


def test_wrong_data_key(publisher, frame_factory) -> None:
    one = publisher(frame_factory(100), version=1)
    two = publisher(frame_factory(100), version=2)
    with pytest.raises(KeyMismatchError, match="key commitment"):
        two.read(dek=one.sealed.dek)
    with pytest.raises(KeyMismatchError):
        two.read(dek=bytes(32))


def test_same_version_resealed_under_another_key(publisher, sealer, frame_factory) -> None:
    """The store serves a re-seal of v1 (its own new key) while the broker holds the first seal's record."""
    first = publisher(frame_factory(100), version=1)
    other = sealer(frame_factory(100), version=1)
    store = first.store
    for path in other.dataset.folder.iterdir():
        store.fs.pipe_file(f"{store.version_path('sales', 1)}/{path.name}", path.read_bytes())
    with pytest.raises(ManifestTamperedError, match="another seal"):
        first.read()
