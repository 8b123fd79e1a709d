"""Reading: projections and filters decrypt only what they need; arguments and queries are checked."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pyarrow.parquet.encryption as pe
import pytest

from teelab.sealed_store.errors import (
    DatasetNotFoundError,
    InvalidNameError,
    KeyMismatchError,
    PartMissingError,
    PartTamperedError,
    QueryError,
)
from teelab.sealed_store.format import aad_prefix, part_key
from teelab.sealed_store.reader import open_sealed, read_sealed_table


def _metadata(published, k: int) -> pq.FileMetaData:
    n = len(published.sealed.dataset.manifest.parts)
    prefix = aad_prefix(published.name, published.version, k, n)
    props = pe.create_decryption_properties(
        part_key(published.sealed.dek, prefix), aad_prefix=prefix.encode()
    )
    return pq.ParquetFile(pa.BufferReader(published.part_bytes(k)), decryption_properties=props).metadata


def _chunk_span(metadata: pq.FileMetaData, row_group: int, column: str) -> tuple[int, int]:
    names = [metadata.schema.column(i).name for i in range(metadata.num_columns)]
    chunk = metadata.row_group(row_group).column(names.index(column))
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    return start, start + chunk.total_compressed_size


def _corrupt(published, k: int, spans: list[tuple[int, int]]) -> None:
    raw = bytearray(published.part_bytes(k))
    for start, end in spans:
        raw[(start + end) // 2] ^= 0xFF
    published.replace_part(k, bytes(raw))


@pytest.fixture
def plain(published, tmp_path) -> str:
    path = tmp_path / "plain.parquet"
    published.frame.to_parquet(path, row_group_size=250)
    return str(path)


@pytest.mark.parametrize(
    ("columns", "filters"),
    [
        (["amount", "city"], None),
        (None, [("id", ">=", 2500)]),
        (["name"], [("city", "==", "Oslo"), ("small", "<", 10)]),
        (["seen_tz", "maybe_int"], [[("id", "<", 5)], [("id", ">", 2995)]]),
    ],
)
def test_projection_and_filters_match_pandas(published, plain, columns, filters) -> None:
    expected = pd.read_parquet(plain, columns=columns, filters=filters)
    got = published.read(columns=columns, filters=filters)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected.reset_index(drop=True))


def test_arrow_expression_filter_and_table_variant(published) -> None:
    table = read_sealed_table(
        published.store,
        "sales",
        version=1,
        manifest_sha256=published.manifest_sha256,
        dek=published.sealed.dek,
        columns=["id"],
        filters=ds.field("id").isin([0, 1000, 2999]),
    )
    assert table.column("id").to_pylist() == [0, 1000, 2999]
    assert table.column_names == ["id"]  # the table variant adds no pandas index columns


def test_unrequested_columns_are_never_decrypted(published) -> None:
    """Corrupt every 'amount' chunk of part 2: a projection without it still reads, with it fails."""
    metadata = _metadata(published, 2)
    _corrupt(published, 2, [_chunk_span(metadata, rg, "amount") for rg in range(metadata.num_row_groups)])
    got = published.read(columns=["id", "name", "city"])
    pd.testing.assert_frame_equal(got, published.frame[["id", "name", "city"]])
    for columns in (None, ["amount"]):
        with pytest.raises(PartTamperedError, match="part-00002"):
            published.read(columns=columns)


def test_row_groups_outside_the_filter_are_never_decrypted(published) -> None:
    """Corrupt the third row group (ids 500-749) of part 1: filters that exclude it by its (encrypted)
    statistics still read; a filter that needs it fails."""
    metadata = _metadata(published, 1)
    assert metadata.num_row_groups == 4 and metadata.row_group(2).num_rows == 250
    spans = [_chunk_span(metadata, 2, metadata.schema.column(i).name) for i in range(metadata.num_columns)]
    _corrupt(published, 1, spans)
    got = published.read(filters=[("id", "<", 500)])
    pd.testing.assert_frame_equal(got, published.frame.iloc[:500])
    got = published.read(filters=[("id", ">=", 750)])
    pd.testing.assert_frame_equal(got, published.frame.iloc[750:].reset_index(drop=True))
    with pytest.raises(PartTamperedError, match="part-00001"):
        published.read(filters=[("id", "<", 600)])


def test_verify_hashes_checks_bytes_a_projection_would_skip(published) -> None:
    metadata = _metadata(published, 3)
    _corrupt(published, 3, [_chunk_span(metadata, 0, "amount")])
    published.read(columns=["id"])
    with pytest.raises(PartTamperedError, match="part-00003"):
        published.read(columns=["id"], verify_hashes=True)


def test_iter_batches_streams_part_by_part(published) -> None:
    reader = open_sealed(
        published.store,
        "sales",
        version=1,
        manifest_sha256=published.manifest_sha256,
        dek=published.sealed.dek,
    )
    batches = list(reader.iter_batches(columns=["id", "city"], batch_size=100))
    assert max(b.num_rows for b in batches) <= 100
    table = pa.Table.from_batches(batches)
    assert table.column("id").to_pylist() == list(range(3000))
    assert reader.schema().names == list(published.frame.columns)
    assert "dek" not in repr(reader).lower().replace("_dek", "") or published.sealed.dek.hex() not in repr(
        reader
    )


def test_iter_batches_reports_tampering(published) -> None:
    metadata = _metadata(published, 2)
    _corrupt(published, 2, [_chunk_span(metadata, 1, "id")])
    reader = open_sealed(
        published.store,
        "sales",
        version=1,
        manifest_sha256=published.manifest_sha256,
        dek=published.sealed.dek,
    )
    with pytest.raises(PartTamperedError, match="part-00002"):
        for _ in reader.iter_batches():
            pass


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"columns": ["nope"]}, "no such column"),
        ({"columns": "id"}, "list of column names"),
        ({"columns": [1]}, "list of column names"),
        ({"filters": [("nope", "==", 1)]}, "invalid filters"),
        ({"filters": [("id",)]}, "invalid filters"),
        ({"filters": [("id", "~", 1)]}, "invalid filters"),
        ({"filters": [("city", ">", 3.5)]}, "invalid filters"),
    ],
)
def test_query_mistakes_are_query_errors(published, kwargs, match) -> None:
    with pytest.raises(QueryError, match=match):
        published.read(**kwargs)


def test_arguments_are_checked(published) -> None:
    with pytest.raises(InvalidNameError, match="manifest_sha256"):
        published.read(manifest_sha256="ABC")
    with pytest.raises(KeyMismatchError, match="32 bytes"):
        published.read(dek=b"\x00" * 16)
    with pytest.raises(InvalidNameError):
        published.read(version=0)
    with pytest.raises(DatasetNotFoundError, match="'sales' v7"):
        published.read(version=7)
    with pytest.raises(InvalidNameError):
        read_sealed_table(published.store, "../etc", version=1, manifest_sha256="0" * 64, dek=bytes(32))


def test_a_part_deleted_after_opening_is_reported_as_missing(published) -> None:
    reader = open_sealed(
        published.store,
        "sales",
        version=1,
        manifest_sha256=published.manifest_sha256,
        dek=published.sealed.dek,
    )
    published.store.fs.rm_file(published.part_path(3))
    with pytest.raises(PartMissingError, match=r"part-00003\.parquet: is missing"):
        reader.read_table()
