"""The schema in the manifest (encrypted): a reader learns it without opening a part, every part is still
checked against it, and manifests sealed before the field existed read as before (part 1's footer)."""

from __future__ import annotations

import hashlib

import pandas as pd
import pyarrow as pa
import pytest

from teelab.sealed_store.errors import PartTamperedError
from teelab.sealed_store.format import MANIFEST_NAME
from teelab.sealed_store.manifest import Manifest, build_manifest
from teelab.sealed_store.reader import SealedReader, open_sealed


def _open(published, manifest_sha256: str | None = None) -> SealedReader:
    return open_sealed(
        published.store,
        published.name,
        version=published.version,
        manifest_sha256=manifest_sha256 or published.manifest_sha256,
        dek=published.sealed.dek,
    )


def _zero_parts(published) -> dict[int, bytes]:
    """Overwrite every part with zeros of the same size (the listing still matches the manifest): any attempt
    to open a part now fails its envelope check. Returns the originals."""
    originals = {}
    for k in range(1, len(published.sealed.dataset.manifest.parts) + 1):
        originals[k] = published.part_bytes(k)
        published.replace_part(k, bytes(len(originals[k])))
    return originals


def _republish(published, manifest: Manifest) -> str:
    """Write ``manifest`` as the version's manifest (what the owner's seal would have written); its digest."""
    data = manifest.to_bytes()
    published.store.fs.pipe_file(published.store.manifest_path(published.name, published.version), data)
    published.store.fs.invalidate_cache()
    return hashlib.sha256(data).hexdigest()


def _resealed_manifest(published, schema: pa.Schema | None) -> Manifest:
    """The version's manifest rebuilt by the data key's holder with ``schema`` (None: the pre-field form)."""
    old = published.sealed.dataset.manifest
    return build_manifest(
        dek=published.sealed.dek,
        dataset=old.dataset,
        version=old.version,
        created_at=old.created_at,
        parts=old.parts,
        key_ref=old.key_ref,
        schema=schema,
    )


def test_the_schema_and_an_empty_frame_need_no_part(published) -> None:
    originals = _zero_parts(published)
    reader = _open(published)
    assert reader.schema().names == list(published.frame.columns)
    meta = reader.empty_pandas(["city", "amount"], [("small", "<", 10)])
    assert list(meta.columns) == ["city", "amount"] and len(meta) == 0
    assert meta.amount.dtype == published.frame.amount.dtype and isinstance(
        meta.city.dtype, pd.CategoricalDtype
    )
    with pytest.raises(PartTamperedError, match="part-00001"):  # the parts really are unreadable now
        reader.read_table(["id"])
    for k, data in originals.items():
        published.replace_part(k, data)
    assert reader.read_pandas().equals(published.frame)


def test_a_manifest_without_the_schema_still_reads_from_part_1(published) -> None:
    old = _resealed_manifest(published, None)
    assert old.encrypted_schema is None and b'"schema"' not in old.to_bytes()
    digest = _republish(published, old)
    assert published.read(manifest_sha256=digest).equals(published.frame)
    reader = _open(published, digest)
    assert reader.schema().equals(published.sealed.dataset.manifest.arrow_schema(published.sealed.dek))
    # The fallback really decrypts part 1's footer: with part 1 unreadable, so is the schema.
    _zero_parts(published)
    with pytest.raises(PartTamperedError, match="part-00001"):
        reader.schema()


def test_a_part_whose_schema_differs_from_the_manifests_is_refused(published) -> None:
    """A seal whose manifest's schema does not describe its parts (a broken or malicious sealer holding the
    key) is refused part by part, as a part differing from part 1 was."""
    real = published.sealed.dataset.manifest.arrow_schema(published.sealed.dek)
    assert real is not None
    other = real.set(real.get_field_index("amount"), pa.field("amount", pa.float32()))
    digest = _republish(published, _resealed_manifest(published, other))
    reader = _open(published, digest)
    assert reader.schema().equals(other)
    for k in (1, 2, 3):
        with pytest.raises(
            PartTamperedError, match=rf"part-0000{k}.parquet: its schema differs from the manifest's"
        ):
            reader.read_part_pandas(k, ["id"], schema=reader.schema())
    with pytest.raises(PartTamperedError, match="differs from the manifest's"):
        reader.read_table()
    with pytest.raises(PartTamperedError, match="differs from the manifest's"):
        next(iter(reader.iter_batches()))


def test_the_sealed_folder_and_the_store_hold_the_same_manifest(published) -> None:
    folder_bytes = (published.sealed.dataset.folder / MANIFEST_NAME).read_bytes()
    assert b'"schema":"' in folder_bytes
    assert hashlib.sha256(folder_bytes).hexdigest() == published.manifest_sha256
