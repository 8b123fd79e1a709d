"""Fuzzing ``read_sealed`` with mutated bytes: only SealedDataError escapes, and nothing changed is accepted.

The store here is fsspec's memory filesystem, built once per module (hypothesis re-runs the test body
many times; function-scoped fixtures would not be reset between examples).
"""

from __future__ import annotations

import hashlib
import tempfile
import uuid
from functools import cache
from pathlib import Path

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teelab.errors import SealedDataError
from teelab.sealed_store.reader import read_sealed
from teelab.sealed_store.seal import SealResult, seal_dataset
from teelab.sealed_store.storage import DatasetStore

FRAME = pd.DataFrame(
    {
        "id": range(600),
        "label": [f"row-{i % 17}" for i in range(600)],
        "value": [i / 7 for i in range(600)],
        "cat": pd.Categorical([("a", "b", "c")[i % 3] for i in range(600)]),
    }
)


@cache
def _dataset() -> tuple[DatasetStore, SealResult, dict[str, bytes]]:
    with tempfile.TemporaryDirectory() as tmp:
        sealed = seal_dataset(
            FRAME,
            name="fuzz",
            version=1,
            out=Path(tmp) / "s",
            part_rows=300,
            row_group_rows=100,
            progress=False,
        )
        store = DatasetStore(f"memory://teelab-fuzz-{uuid.uuid4().hex}")
        store.upload(sealed.dataset, progress=False)
    originals = {path: bytes(store.fs.cat_file(path)) for path in store.fs.find(store.root)}
    return store, sealed, originals


def _mutate(data: st.DataObject, raw: bytes) -> bytes:
    out = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        action = data.draw(st.sampled_from(["flip", "set", "zero-range", "truncate", "insert", "delete"]))
        if not out:
            action = "insert"
        at = data.draw(st.integers(0, max(0, len(out) - 1)), label="offset")
        if action == "flip":
            out[at] ^= 1 << data.draw(st.integers(0, 7))
        elif action == "set":
            out[at] = data.draw(st.integers(0, 255))
        elif action == "zero-range":
            out[at : at + data.draw(st.integers(1, 64))] = b"\x00" * len(out[at : at + 64])
        elif action == "truncate":
            del out[at:]
        elif action == "insert":
            out[at:at] = data.draw(st.binary(min_size=1, max_size=16))
        else:
            del out[at : at + data.draw(st.integers(1, 16))]
    return bytes(out)


def _read(store: DatasetStore, sealed: SealResult, **kwargs: object) -> pd.DataFrame:
    options: dict[str, object] = {
        "version": 1,
        "manifest_sha256": sealed.dataset.manifest_sha256,
        "dek": sealed.dek,
    }
    options.update(kwargs)
    return read_sealed(store, "fuzz", **options)  # type: ignore[arg-type]


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_part_bytes(data: st.DataObject) -> None:
    store, sealed, originals = _dataset()
    path = data.draw(st.sampled_from(sorted(p for p in originals if p.endswith(".parquet"))), label="part")
    mutated = _mutate(data, originals[path])
    store.fs.pipe_file(path, mutated)
    try:
        frame = _read(store, sealed)
    except SealedDataError:
        return
    finally:
        store.fs.pipe_file(path, originals[path])
    assert mutated == originals[path], "a modified part was read without error"
    pd.testing.assert_frame_equal(frame, FRAME)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_manifest_bytes_even_if_registered(data: st.DataObject) -> None:
    """Mutated manifests, read both with the broker's real digest and with the mutated bytes' own digest (as
    if the broker had registered them): only SealedDataError, and never accepted."""
    store, sealed, originals = _dataset()
    path = next(p for p in originals if p.endswith("manifest.json"))
    mutated = _mutate(data, originals[path])
    store.fs.pipe_file(path, mutated)
    try:
        for digest in (sealed.dataset.manifest_sha256, hashlib.sha256(mutated).hexdigest()):
            try:
                _read(store, sealed, manifest_sha256=digest)
            except SealedDataError:
                continue
            assert mutated == originals[path], "a modified manifest was accepted"
    finally:
        store.fs.pipe_file(path, originals[path])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_projections_on_mutated_parts(data: st.DataObject) -> None:
    """With projections and filters some bytes are legitimately never read; whatever is returned must
    still be exactly the requested slice of the original data."""
    store, sealed, originals = _dataset()
    path = data.draw(st.sampled_from(sorted(p for p in originals if p.endswith(".parquet"))), label="part")
    columns = data.draw(st.lists(st.sampled_from(list(FRAME.columns)), min_size=1, max_size=3, unique=True))
    bound = data.draw(st.integers(0, 600))
    store.fs.pipe_file(path, _mutate(data, originals[path]))
    try:
        frame = _read(store, sealed, columns=columns, filters=[("id", "<", bound)])
    except SealedDataError:
        return
    finally:
        store.fs.pipe_file(path, originals[path])
    expected = FRAME.loc[FRAME["id"] < bound, columns]
    if expected.empty:
        # No row group matched, so nothing was decrypted; like pd.read_parquet, an empty categorical column
        # then carries no categories.
        assert frame.empty and list(frame.columns) == columns
        return
    pd.testing.assert_frame_equal(frame.reset_index(drop=True), expected.reset_index(drop=True))
