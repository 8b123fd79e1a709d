"""Fixtures for the sealed dataset tests: a DataFrame with every dtype we promise, sealed folders, stores.

``dataset_store`` runs each test that uses it twice: on a local folder (``file://``) and on fsspec's
``memory://`` filesystem, which stands in for an object store (no rename, no fsync, one PUT per object).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from teelab.sealed_store.reader import read_sealed
from teelab.sealed_store.seal import SealResult, seal_dataset
from teelab.sealed_store.storage import DatasetStore


def mixed_frame(rows: int = 3000, *, seed: int = 7) -> pd.DataFrame:
    """Strings, ints, floats, bools, timestamps (naive and tz-aware), nulls of each kind, categoricals."""
    rng = np.random.default_rng(seed)
    ints = rng.integers(-(2**40), 2**40, rows)
    frame = pd.DataFrame(
        {
            "id": np.arange(rows, dtype=np.int64),
            "amount": rng.normal(100, 30, rows),
            "amount_nan": np.where(rng.random(rows) < 0.1, np.nan, rng.random(rows)),
            "small": rng.integers(0, 100, rows).astype(np.int32),
            "maybe_int": pd.array([None if v % 7 == 0 else int(v) for v in ints], dtype="Int64"),
            "flag": rng.random(rows) < 0.5,
            "city": pd.Categorical(rng.choice(["Zürich", "Lyon", "Oslo", "Kyiv"], rows)),
            "name": pd.array([None if i % 11 == 0 else f"user-{i:06d}-ü" for i in range(rows)], dtype="str"),
            "seen": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 10**8, rows), unit="s"),
            "seen_tz": pd.date_range("2024-03-30", periods=rows, freq="min", tz="Europe/Zurich"),
        }
    )
    frame.loc[frame.index % 13 == 0, "seen"] = pd.NaT
    return frame


@dataclass(frozen=True)
class Published:
    """A sealed dataset uploaded to a store, and what the key broker would hand the reader."""

    store: DatasetStore
    sealed: SealResult
    frame: pd.DataFrame

    @property
    def name(self) -> str:
        return self.sealed.dataset.name

    @property
    def version(self) -> int:
        return self.sealed.dataset.version

    @property
    def manifest_sha256(self) -> str:
        return self.sealed.dataset.manifest_sha256

    def read(self, **kwargs: Any) -> pd.DataFrame:
        options: dict[str, Any] = {
            "version": self.version,
            "manifest_sha256": self.manifest_sha256,
            "dek": self.sealed.dek,
        }
        options.update(kwargs)
        return read_sealed(self.store, self.name, **options)

    def part_path(self, k: int) -> str:
        return self.store.part_path(self.name, self.version, k)

    def part_bytes(self, k: int) -> bytes:
        return bytes(self.store.fs.cat_file(self.part_path(k)))

    def replace_part(self, k: int, data: bytes) -> None:
        self.store.fs.pipe_file(self.part_path(k), data)
        self.store.fs.invalidate_cache()


@pytest.fixture(params=["file", "memory"])
def dataset_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DatasetStore]:
    if request.param == "file":
        yield DatasetStore((tmp_path / "store").as_uri())
        return
    store = DatasetStore(f"memory://teelab-tests-{uuid.uuid4().hex}")
    try:
        yield store
    finally:
        with contextlib.suppress(FileNotFoundError):
            store.fs.rm(store.root, recursive=True)


Sealer = Callable[..., SealResult]
Publisher = Callable[..., Published]


@pytest.fixture
def frame_factory() -> Callable[..., pd.DataFrame]:
    return mixed_frame


@pytest.fixture
def sealer(tmp_path: Path) -> Sealer:
    """``sealer(frame, name="sales", version=1, **seal_options)``: seal into a fresh folder (small layout:
    1000 rows per part, 250 per row group, unless overridden)."""

    def seal(frame: Any, *, name: str = "sales", version: int = 1, **kwargs: Any) -> SealResult:
        options: dict[str, Any] = {"part_rows": 1000, "row_group_rows": 250, "progress": False}
        options.update(kwargs)
        out = tmp_path / f"sealed-{name}-v{version}-{uuid.uuid4().hex[:8]}"
        return seal_dataset(frame, name=name, version=version, out=out, **options)

    return seal


@pytest.fixture
def publisher(dataset_store: DatasetStore, sealer: Sealer) -> Publisher:
    """``publisher(frame, name=..., version=..., **seal_options)``: seal, then upload to ``dataset_store``."""

    def publish(frame: pd.DataFrame, *, name: str = "sales", version: int = 1, **kwargs: Any) -> Published:
        sealed = sealer(frame, name=name, version=version, **kwargs)
        dataset_store.upload(sealed.dataset, progress=False)
        return Published(store=dataset_store, sealed=sealed, frame=frame)

    return publish


@pytest.fixture
def published(publisher: Publisher) -> Published:
    """``mixed_frame()`` (3000 rows) sealed as 'sales' v1 in 3 parts of 4 row groups, uploaded."""
    return publisher(mixed_frame())
