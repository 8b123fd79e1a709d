"""A sealed dataset on S3 (a real S3 API server, moto's, on loopback) read as a Dask DataFrame.

The store's URL — with its endpoint and credentials — travels only in the key broker section of the session
(sealed bundles in a real deployment), never in the task graph.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import dask
import dask.dataframe as dd
import pandas as pd
import pytest

from teelab.sealed_store.dask import read_dataset
from teelab.sealed_store.storage import DatasetStore
from tests.dask.test_read import World, built_world
from tests.sealed_store.test_s3 import SECRET, new_bucket, s3_endpoint, s3_store_url  # noqa: F401 — fixture


@pytest.fixture
def s3_world(tmp_path: Path, s3_endpoint: str) -> Iterator[World]:  # noqa: F811 — the imported fixture
    store = DatasetStore(s3_store_url(s3_endpoint, new_bucket(s3_endpoint)))
    with built_world(tmp_path, store) as made:
        yield made


def test_a_sealed_dataset_on_s3_reads_as_dask(s3_world: World) -> None:
    assert s3_world.store.url.startswith("s3://") and [v.version for v in s3_world.store.list("sales")] == [1]
    df = read_dataset("sales", columns=["id", "amount", "city"], filters=[("small", ">=", 50)])
    assert df.npartitions == 3
    with dask.config.set(scheduler="threads", num_workers=2):
        got = df.compute().sort_values("id").reset_index(drop=True)
    frame = s3_world.frame
    expected = frame[frame.small >= 50][["id", "amount", "city"]].reset_index(drop=True)
    expected = dd.from_pandas(expected, npartitions=1).compute()
    pd.testing.assert_frame_equal(got, expected, check_categorical=False)
    # Neither the store's credentials nor its endpoint are in the graph: the session knows the store.
    blob = cloudpickle.dumps(dict(df.__dask_graph__()))
    assert SECRET.encode() not in blob and b"s3://" not in blob
