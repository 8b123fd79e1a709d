"""The dataset store on file:// and memory:// URLs: layout, visibility, listing, deletion."""

from __future__ import annotations

import pyarrow.parquet as pq
import pyarrow.parquet.encryption as pe
import pytest

from teelab.sealed_store.errors import (
    DatasetNotFoundError,
    InvalidNameError,
    StorageError,
    VersionExistsError,
)
from teelab.sealed_store.format import aad_prefix, part_key
from teelab.sealed_store.storage import DatasetStore, DatasetVersion, default_store_url


def test_layout(published) -> None:
    store = published.store
    root = store.root
    files = sorted(p[len(root) + 1 :] for p in store.fs.find(root))
    assert files == [
        "sales/v1/manifest.json",
        "sales/v1/part-00001.parquet",
        "sales/v1/part-00002.parquet",
        "sales/v1/part-00003.parquet",
    ], "the staging area is gone after a successful upload"
    assert store.manifest_bytes("sales", 1) == published.sealed.dataset.manifest_path.read_bytes()
    assert store.manifest("sales", 1) == published.sealed.dataset.manifest


def test_list_versions_latest(publisher, frame_factory) -> None:
    publisher(frame_factory(50), name="b-set", version=1)
    publisher(frame_factory(50), name="a-set", version=2)
    published = publisher(frame_factory(50), name="a-set", version=10)
    store = published.store
    assert store.list() == [
        DatasetVersion("a-set", 2),
        DatasetVersion("a-set", 10),
        DatasetVersion("b-set", 1),
    ]
    assert store.list("a-set") == [DatasetVersion("a-set", 2), DatasetVersion("a-set", 10)]
    assert store.versions("a-set") == [2, 10] and store.latest_version("a-set") == 10
    assert store.latest_version("c-set") is None and store.list("c-set") == []
    assert store.exists("a-set", 2) and not store.exists("a-set", 3)


def test_only_versions_with_a_manifest_are_visible(published) -> None:
    store = published.store
    fs = store.fs

    def put(relative: str, data: bytes) -> None:
        path = f"{store.root}/{relative}"
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        fs.pipe_file(path, data)

    # Leftovers an interrupted upload or a stray process could leave: none of them is a version.
    put("sales/v2/part-00001.parquet", b"partial")
    put("sales/.staging/v3-abc/part-00001.parquet", b"staged")
    put("sales/.staging/v3-abc/manifest.json", b"{}")
    put("sales/v03/manifest.json", b"{}")
    put("sales/vx/manifest.json", b"{}")
    put(".hidden/v1/manifest.json", b"{}")
    fs.invalidate_cache()
    assert store.list() == [DatasetVersion("sales", 1)]
    with pytest.raises(DatasetNotFoundError, match="'sales' v2: not in the store"):
        store.manifest("sales", 2)


def test_open_part_is_seekable_and_readable_by_pyarrow(published) -> None:
    n = len(published.sealed.dataset.manifest.parts)
    prefix = aad_prefix("sales", 1, 2, n)
    props = pe.create_decryption_properties(
        part_key(published.sealed.dek, prefix), aad_prefix=prefix.encode()
    )
    with published.store.open_part("sales", 1, 2) as handle:
        handle.seek(-4, 2)
        assert handle.read() == b"PARE"
        handle.seek(0)
        assert pq.ParquetFile(handle, decryption_properties=props).metadata.num_rows == 1000


def test_delete_version_and_dataset(publisher, frame_factory) -> None:
    publisher(frame_factory(50), version=1)
    published = publisher(frame_factory(50), version=2)
    store = published.store
    store.delete("sales", 2)
    assert store.versions("sales") == [1]
    assert not store.fs.exists(store.version_path("sales", 2))
    with pytest.raises(DatasetNotFoundError):
        store.delete("sales", 2)
    store.delete("sales")
    assert store.list() == [] and not store.fs.exists(store.dataset_path("sales"))


def test_upload_is_idempotent_and_versions_are_immutable(published, sealer, frame_factory) -> None:
    again = published.store.upload(published.sealed.dataset, progress=False)
    assert again.already_present and again.bytes_uploaded == 0
    other = sealer(frame_factory(10), version=1)
    with pytest.raises(VersionExistsError, match="'sales' v1: is already in the store"):
        published.store.upload(other.dataset.folder, progress=False)


def test_names_are_checked_before_touching_storage(dataset_store) -> None:
    for bad in ("..", "../x", "a/b", ".staging"):
        with pytest.raises(InvalidNameError):
            dataset_store.manifest(bad, 1)
    with pytest.raises(StorageError, match="not a part name"):
        dataset_store.part_path("sales", 1, "../manifest.json")


def test_store_urls(tmp_path, monkeypatch) -> None:
    assert DatasetStore(tmp_path).is_local and DatasetStore(f"file://{tmp_path}").root == str(tmp_path)
    monkeypatch.setenv("TEELAB_DATA_DIR", str(tmp_path / "data"))
    assert default_store_url() == (tmp_path / "data" / "datasets").as_uri()
    assert DatasetStore().root == str(tmp_path / "data" / "datasets")
    with pytest.raises(StorageError, match="no-such-protocol"):
        DatasetStore("no-such-protocol://x")
