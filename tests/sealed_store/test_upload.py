"""Uploads: atomic publication, resuming an interrupted upload, the progress bar, and ``kill -9``."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest

from teelab.sealed_store.errors import PartTamperedError
from teelab.sealed_store.reader import read_sealed
from teelab.sealed_store.storage import DatasetStore, DatasetVersion
from teelab.sealed_store.upload import PROGRESS_NAME, upload_id


class Interrupted(Exception):
    """Stands in for a network failure or Ctrl-C in the middle of an upload."""


def _interrupt_after(limit: int):
    def callback(done: int, total: int) -> None:
        if done >= limit:
            raise Interrupted

    return callback


def _read(store: DatasetStore, sealed) -> pd.DataFrame:
    return read_sealed(
        store,
        sealed.dataset.name,
        version=sealed.dataset.version,
        manifest_sha256=sealed.dataset.manifest_sha256,
        dek=sealed.dek,
    )


def test_interrupted_upload_is_invisible_and_resumes_where_it_stopped(
    dataset_store, sealer, frame_factory
) -> None:
    frame = frame_factory(3000)
    sealed = sealer(frame)
    parts = sealed.dataset.manifest.parts
    limit = parts[0].size + parts[1].size + parts[2].size // 2  # dies in the middle of part 3
    with pytest.raises(Interrupted):
        dataset_store.upload(sealed.dataset, progress=_interrupt_after(limit), chunk_size=4096)
    assert dataset_store.list() == []
    staging = dataset_store.staging_path("sales", upload_id(sealed.dataset))
    record = json.loads(dataset_store.fs.cat_file(f"{staging}/{PROGRESS_NAME}"))
    assert sorted(record["done"]) == ["part-00001.parquet", "part-00002.parquet"]

    result = dataset_store.upload(sealed.dataset.folder, progress=False)
    assert (result.parts_skipped, result.parts_uploaded, result.bytes_uploaded) == (2, 1, parts[2].size)
    assert dataset_store.list() == [DatasetVersion("sales", 1)]
    assert not dataset_store.fs.exists(staging)
    pd.testing.assert_frame_equal(_read(dataset_store, sealed), frame)


def test_resume_false_starts_over(dataset_store, sealer, frame_factory) -> None:
    sealed = sealer(frame_factory(3000))
    with pytest.raises(Interrupted):
        dataset_store.upload(
            sealed.dataset, progress=_interrupt_after(sealed.dataset.manifest.parts[0].size + 1)
        )
    result = dataset_store.upload(sealed.dataset, resume=False, progress=False)
    assert (result.parts_skipped, result.parts_uploaded) == (0, 3)


def test_a_publish_interrupted_before_the_manifest_is_finished_by_the_next_upload(
    dataset_store, sealer, frame_factory, monkeypatch
) -> None:
    sealed = sealer(frame_factory(3000))
    original = DatasetStore.put_atomic

    def no_manifest(self: DatasetStore, path: str, data: bytes) -> None:
        if path.endswith("/manifest.json"):
            raise Interrupted
        original(self, path, data)

    monkeypatch.setattr(DatasetStore, "put_atomic", no_manifest)
    with pytest.raises(Interrupted):
        dataset_store.upload(sealed.dataset, progress=False)
    assert dataset_store.list() == []  # every part is in v1/, but without a manifest nothing is visible
    assert set(dataset_store.part_sizes("sales", 1)) == {p.name for p in sealed.dataset.manifest.parts}
    monkeypatch.setattr(DatasetStore, "put_atomic", original)
    result = dataset_store.upload(sealed.dataset, progress=False)
    assert result.parts_skipped == 3 and result.bytes_uploaded == 0
    assert dataset_store.list() == [DatasetVersion("sales", 1)]


def test_a_resumed_upload_recopies_a_staged_part_that_changed(dataset_store, sealer, frame_factory) -> None:
    sealed = sealer(frame_factory(3000))
    with pytest.raises(Interrupted):
        dataset_store.upload(
            sealed.dataset, progress=_interrupt_after(sealed.dataset.manifest.parts[0].size + 1)
        )
    staged = f"{dataset_store.staging_path('sales', upload_id(sealed.dataset))}/part-00001.parquet"
    dataset_store.fs.pipe_file(staged, b"truncated")
    result = dataset_store.upload(sealed.dataset, progress=False)
    assert result.parts_skipped == 0 and result.parts_uploaded == 3
    _read(dataset_store, sealed)


def test_a_damaged_local_part_is_not_uploaded(dataset_store, sealer, frame_factory) -> None:
    sealed = sealer(frame_factory(3000))
    path = sealed.dataset.folder / "part-00002.parquet"
    raw = bytearray(path.read_bytes())
    raw[100] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(PartTamperedError, match=r"part-00002\.parquet: in the sealed folder"):
        dataset_store.upload(sealed.dataset.folder, progress=False)
    assert dataset_store.list() == []


def test_progress_bar_only_on_a_terminal(dataset_store, sealer, frame_factory, capsys) -> None:
    sealed = sealer(frame_factory(3000))
    dataset_store.upload(sealed.dataset)  # stderr is captured, not a TTY: no bar
    assert capsys.readouterr().err == ""
    dataset_store.delete("sales", 1)
    dataset_store.upload(sealed.dataset, progress=True)
    err = capsys.readouterr().err
    assert "uploading sales v1" in err and "B/s" in err
    seen: list[tuple[int, int]] = []
    dataset_store.delete("sales", 1)
    dataset_store.upload(
        sealed.dataset, progress=lambda done, total: seen.append((done, total)), chunk_size=1024
    )
    total = sealed.dataset.manifest.total_size
    assert seen[-1] == (total, total) and len(seen) > 3 * 10, "per-chunk (byte) progress"


# ---------------------------------------------------------------------------------------------- kill -9

UPLOADER = textwrap.dedent(
    """
    import sys, time
    from teelab.sealed_store.storage import DatasetStore

    def slow_network(done, total):
        time.sleep(0.002)

    store = DatasetStore(sys.argv[1])
    print("ready", flush=True)
    store.upload(sys.argv[2], progress=slow_network, chunk_size=32 * 1024)
    print("done", flush=True)
    """
)


def _uploader(store_url: str, folder: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", UPLOADER, store_url, folder],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.mark.slow
def test_kill_9_mid_upload_never_leaves_a_visible_partial_version(tmp_path, sealer) -> None:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"x": rng.random(120_000), "y": rng.integers(0, 10**9, 120_000)})
    sealed = sealer(frame, part_rows=15_000, row_group_rows=5_000)  # 8 parts
    store_url = (tmp_path / "store").as_uri()
    folder = str(sealed.dataset.folder)

    timing = _uploader(store_url, folder)
    assert timing.stdout is not None and timing.stdout.readline().strip() == "ready"
    started = time.monotonic()
    assert timing.wait(timeout=120) == 0
    duration = time.monotonic() - started
    DatasetStore(store_url).delete("sales")

    choices = random.Random(11)
    outcomes = []
    for _ in range(8):
        process = _uploader(store_url, folder)
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        time.sleep(choices.uniform(0, duration))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        store = DatasetStore(store_url)
        visible = store.list()
        assert visible in ([], [DatasetVersion("sales", 1)])
        if visible:
            pd.testing.assert_frame_equal(_read(store, sealed), frame)  # visible means complete
        outcomes.append(bool(visible))
        if visible:
            store.delete("sales")
    assert not all(outcomes), "no kill landed before publication; the test proved nothing"

    # After any number of kills, one more (uninterrupted) run completes the upload.
    finisher = _uploader(store_url, folder)
    assert finisher.wait(timeout=120) == 0
    pd.testing.assert_frame_equal(_read(DatasetStore(store_url), sealed), frame)


@pytest.mark.slow
def test_kill_9_then_resume_skips_finished_parts(tmp_path, sealer) -> None:
    rng = np.random.default_rng(4)
    frame = pd.DataFrame({"x": rng.random(120_000)})
    sealed = sealer(frame, part_rows=15_000, row_group_rows=5_000)
    store_url = (tmp_path / "store").as_uri()
    process = _uploader(store_url, str(sealed.dataset.folder))
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    store = DatasetStore(store_url)
    staging = store.staging_path("sales", upload_id(sealed.dataset))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until at least two parts are recorded as done
        try:
            record = json.loads(store.fs.cat_file(f"{staging}/{PROGRESS_NAME}"))
        except (FileNotFoundError, ValueError):
            record = {"done": {}}
        if len(record["done"]) >= 2:
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert store.list() == []
    result = store.upload(sealed.dataset, progress=False)
    assert result.parts_skipped >= 2 and result.parts_skipped + result.parts_uploaded == 8
    pd.testing.assert_frame_equal(_read(store, sealed), frame)
