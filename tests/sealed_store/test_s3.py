"""Sealed datasets on S3: upload, list, read, resume, delete and the atomic-upload guarantee, against a real S3
API server (moto's, on loopback) through s3fs — the same client code a deployment on AWS or MinIO runs.

S3 has no rename: publishing copies each part out of the staging prefix, and ``manifest.json`` is written last
in one PUT. These tests show a version is visible (listed, readable) only once its manifest is, and that a
reader never takes parts without one.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import boto3
import numpy as np
import pandas as pd
import pytest
from moto.server import ThreadedMotoServer

from teelab.sealed_store.errors import DatasetNotFoundError, PartSwappedError, StorageError
from teelab.sealed_store.reader import read_sealed
from teelab.sealed_store.storage import DatasetStore, DatasetVersion, split_store_url
from teelab.sealed_store.upload import PROGRESS_NAME, upload_id

# Test credentials: moto accepts any. The secret has the characters real AWS secrets have ("+", "/").
KEY = "AKIATEELABTEST"
SECRET = "te+st/Secret+Key=="


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A real S3 API server (HTTP, loopback, an ephemeral port) for this module's tests."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def s3_store_url(endpoint: str, bucket: str, prefix: str = "datasets") -> str:
    return (
        f"s3://{bucket}/{prefix}?endpoint_url={endpoint}&region=us-east-1"
        f"&key={KEY}&secret={quote(SECRET, safe='+/')}"
    )


def new_bucket(endpoint: str) -> str:
    bucket = f"teelab-{uuid.uuid4().hex[:12]}"
    s3_client(endpoint).create_bucket(Bucket=bucket)
    return bucket


def s3_client(endpoint: str):  # type: ignore[no-untyped-def]
    """An independent S3 client: what another machine (or the storage provider) sees in the bucket."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
    )


def bucket_keys(endpoint: str, bucket: str) -> list[str]:
    pages = s3_client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


@pytest.fixture
def s3_url(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    # No credentials from the environment or ~/.aws: the URL must carry everything the store needs.
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    return s3_store_url(s3_endpoint, new_bucket(s3_endpoint))


@pytest.fixture
def s3_store(s3_url: str) -> DatasetStore:
    return DatasetStore(s3_url)


def _read(store: DatasetStore, sealed, **kwargs) -> pd.DataFrame:
    return read_sealed(
        store,
        sealed.dataset.name,
        version=sealed.dataset.version,
        manifest_sha256=sealed.dataset.manifest_sha256,
        dek=sealed.dek,
        **kwargs,
    )


class Interrupted(Exception):
    """Stands in for a network failure or Ctrl-C in the middle of an upload."""


# ------------------------------------------------------------------------------------------ end to end


def test_upload_list_and_read_on_s3(s3_store, s3_endpoint, sealer, frame_factory) -> None:
    frame = frame_factory(3000)
    sealed = sealer(frame)
    result = s3_store.upload(sealed.dataset, progress=False)
    assert (result.parts_uploaded, result.bytes_uploaded) == (3, sealed.dataset.manifest.total_size)

    # Another client (a fresh store object: no shared cache) lists and reads it.
    other = DatasetStore(s3_store.url.replace("secret=***", f"secret={quote(SECRET, safe='+/')}"))
    assert other.list() == [DatasetVersion("sales", 1)]
    assert other.latest_version("sales") == 1
    pd.testing.assert_frame_equal(_read(other, sealed), frame)
    subset = _read(other, sealed, columns=["id", "city"], filters=[("id", ">=", 2500)])
    pd.testing.assert_frame_equal(subset, frame.loc[frame.id >= 2500, ["id", "city"]].reset_index(drop=True))

    # In the bucket: the manifest and the parts, under the prefix; the staging area is gone.
    bucket = s3_store.root.split("/", 1)[0]
    names = ["manifest.json", *(p.name for p in sealed.dataset.manifest.parts)]
    assert bucket_keys(s3_endpoint, bucket) == sorted(f"datasets/sales/v1/{n}" for n in names)

    # The same upload again finds the version in place and copies nothing.
    assert s3_store.upload(sealed.dataset.folder, progress=False).already_present


def test_a_second_version_and_deletes(s3_store, s3_endpoint, sealer, frame_factory) -> None:
    first, second = sealer(frame_factory(1500)), sealer(frame_factory(2500, seed=9), version=2)
    s3_store.upload(first.dataset, progress=False)
    s3_store.upload(second.dataset, progress=False)
    assert s3_store.list() == [DatasetVersion("sales", 1), DatasetVersion("sales", 2)]
    s3_store.delete("sales", 1)
    assert s3_store.versions("sales") == [2]
    with pytest.raises(DatasetNotFoundError):
        _read(s3_store, first)
    pd.testing.assert_frame_equal(_read(s3_store, second), frame_factory(2500, seed=9))
    s3_store.delete("sales")
    assert s3_store.list() == []
    assert bucket_keys(s3_endpoint, s3_store.root.split("/", 1)[0]) == []


def test_a_replaced_part_on_s3_fails_authentication(s3_store, s3_endpoint, sealer, frame_factory) -> None:
    """Whoever can write to the bucket (the provider, a leaked credential) cannot change what is read."""
    sealed = sealer(frame_factory(3000))
    s3_store.upload(sealed.dataset, progress=False)
    bucket = s3_store.root.split("/", 1)[0]
    client = s3_client(s3_endpoint)
    part2 = client.get_object(Bucket=bucket, Key="datasets/sales/v1/part-00002.parquet")["Body"].read()
    client.put_object(Bucket=bucket, Key="datasets/sales/v1/part-00003.parquet", Body=part2)
    with pytest.raises(PartSwappedError, match=r"part-00003\.parquet: holds the bytes of part-00002"):
        _read(DatasetStore(s3_store_url(s3_endpoint, bucket)), sealed)


# ------------------------------------------------------------------------------------------ atomicity


def test_an_interrupted_upload_is_invisible_on_s3_and_resumes(s3_store, s3_endpoint, sealer, frame_factory):
    frame = frame_factory(3000)
    sealed = sealer(frame)
    parts = sealed.dataset.manifest.parts
    limit = parts[0].size + parts[1].size + parts[2].size // 2  # dies in the middle of part 3

    def interrupt(done: int, total: int) -> None:
        if done >= limit:
            raise Interrupted

    with pytest.raises(Interrupted):
        s3_store.upload(sealed.dataset, progress=interrupt, chunk_size=4096)
    assert s3_store.list() == []
    with pytest.raises(DatasetNotFoundError):
        _read(s3_store, sealed)
    bucket = s3_store.root.split("/", 1)[0]
    staging = f"datasets/sales/.staging/{upload_id(sealed.dataset)}"
    # Part 3's multipart upload was never completed, so S3 holds no object for it.
    assert bucket_keys(s3_endpoint, bucket) == [
        f"{staging}/part-00001.parquet",
        f"{staging}/part-00002.parquet",
        f"{staging}/{PROGRESS_NAME}",
    ]

    result = DatasetStore(s3_store_url(s3_endpoint, bucket)).upload(sealed.dataset.folder, progress=False)
    assert (result.parts_skipped, result.parts_uploaded, result.bytes_uploaded) == (2, 1, parts[2].size)
    assert s3_store.list() == [DatasetVersion("sales", 1)]
    assert not [key for key in bucket_keys(s3_endpoint, bucket) if "/.staging/" in key]
    pd.testing.assert_frame_equal(_read(s3_store, sealed), frame)


def test_parts_without_a_manifest_are_never_read(s3_store, s3_endpoint, sealer, frame_factory, monkeypatch):
    """A publish that stopped after copying every part but before the manifest PUT: nothing is visible, the
    reader refuses (it never guesses a version from the parts), and the next upload finishes the publish."""
    frame = frame_factory(3000)
    sealed = sealer(frame)
    original = DatasetStore.put_atomic

    def no_manifest(self: DatasetStore, path: str, data: bytes) -> None:
        if path.endswith("/manifest.json"):
            raise Interrupted
        original(self, path, data)

    monkeypatch.setattr(DatasetStore, "put_atomic", no_manifest)
    with pytest.raises(Interrupted):
        s3_store.upload(sealed.dataset, progress=False)
    monkeypatch.setattr(DatasetStore, "put_atomic", original)

    bucket = s3_store.root.split("/", 1)[0]
    in_version = [k for k in bucket_keys(s3_endpoint, bucket) if k.startswith("datasets/sales/v1/")]
    assert len(in_version) == 3 and not any(k.endswith("manifest.json") for k in in_version)
    assert s3_store.list() == [] and not s3_store.exists("sales", 1)
    with pytest.raises(DatasetNotFoundError, match="no manifest"):
        _read(s3_store, sealed)

    result = s3_store.upload(sealed.dataset, progress=False)
    assert result.parts_skipped == 3 and result.bytes_uploaded == 0
    pd.testing.assert_frame_equal(_read(s3_store, sealed), frame)


UPLOADER = textwrap.dedent(
    """
    import sys, time
    from teelab.sealed_store.storage import DatasetStore

    def slow_network(done, total):
        time.sleep(0.002)

    store = DatasetStore(sys.stdin.readline().strip())  # the URL holds the (test) secret: not on argv
    print("ready", flush=True)
    store.upload(sys.argv[1], progress=slow_network, chunk_size=32 * 1024)
    print("done", flush=True)
    """
)


def _uploader(store_url: str, folder: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", UPLOADER, folder],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(store_url + "\n")
    process.stdin.close()
    assert process.stdout.readline().strip() == "ready"
    return process


@pytest.mark.slow
def test_kill_9_mid_upload_to_s3_never_leaves_a_visible_partial_version(s3_url, sealer) -> None:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"x": rng.random(120_000), "y": rng.integers(0, 10**9, 120_000)})
    sealed = sealer(frame, part_rows=15_000, row_group_rows=5_000)  # 8 parts
    folder = str(sealed.dataset.folder)

    timing = _uploader(s3_url, folder)
    started = time.monotonic()
    assert timing.wait(timeout=120) == 0
    duration = time.monotonic() - started
    DatasetStore(s3_url).delete("sales")

    choices = random.Random(11)
    outcomes = []
    for _ in range(6):
        process = _uploader(s3_url, folder)
        time.sleep(choices.uniform(0, duration))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        store = DatasetStore(s3_url)
        visible = store.list()
        assert visible in ([], [DatasetVersion("sales", 1)])
        if visible:
            pd.testing.assert_frame_equal(_read(store, sealed), frame)  # visible means complete
            store.delete("sales")
        else:
            with pytest.raises(DatasetNotFoundError):
                _read(store, sealed)
        outcomes.append(bool(visible))
    assert not all(outcomes), "no kill landed before publication; the test proved nothing"

    finisher = _uploader(s3_url, folder)
    assert finisher.wait(timeout=120) == 0
    pd.testing.assert_frame_equal(_read(DatasetStore(s3_url), sealed), frame)


# ------------------------------------------------------------------------------------------ the URL


def test_the_url_carries_the_connection_and_hides_the_secret(s3_url) -> None:
    store = DatasetStore(s3_url)
    assert SECRET not in store.url and quote(SECRET, safe="+/") not in store.url
    assert SECRET not in repr(store) and "secret=***" in store.url
    assert f"key={KEY}" in store.url and "endpoint_url=http://127.0.0.1:" in store.url
    location, options, _ = split_store_url(s3_url)
    assert location == f"s3://{store.root}"
    assert options["secret"] == SECRET  # "+" is not a space, "%3D" is "="
    assert options["client_kwargs"] == {"region_name": "us-east-1"}


def test_a_missing_bucket_is_a_storage_error_that_does_not_show_the_secret(
    s3_endpoint, sealer, frame_factory
) -> None:
    bucket = new_bucket(s3_endpoint)
    missing = DatasetStore(s3_store_url(s3_endpoint, f"{bucket}-missing"))
    with pytest.raises(StorageError, match=rf"the bucket '{bucket}-missing' .* does not exist") as caught:
        missing.list()
    assert SECRET not in str(caught.value)
    with pytest.raises(StorageError, match="The specified bucket does not exist") as caught:
        missing.upload(sealer(frame_factory(100)).dataset, progress=False)
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    "query, problem",
    [
        ("endpoint=http://x", "'endpoint' is not one of"),
        ("key=a&key=b", "'key' is not one of"),
        ("anon=yes", "anon must be true or false"),
        ("secret", "'secret' is not one of"),
    ],
)
def test_unknown_or_repeated_url_settings_are_refused(query: str, problem: str) -> None:
    with pytest.raises(StorageError, match=problem):
        DatasetStore(f"s3://bucket/prefix?{query}")


def test_local_paths_with_a_question_mark_are_not_parsed(tmp_path) -> None:
    folder = tmp_path / "odd?name=1"
    store = DatasetStore(folder.as_uri())
    assert store.is_local and store.url == folder.as_uri()
