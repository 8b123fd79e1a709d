"""Seal inputs (CSV, Parquet, a pandas DataFrame or an Arrow table) as a stream of Arrow record batches.

Sealing must know the total row count before it writes the first part, because every part's AAD prefix
says "part k of n". Parquet files and in-memory tables know it; for CSV we make one counting pass that
converts a single column (the tokenizer still reads every byte, but the expensive conversion is skipped)
and check at the end that the streaming pass produced the same count. Files are never loaded whole: CSV is
read by ``pyarrow.csv.open_csv`` block by block, Parquet by ``pyarrow.dataset`` batch by batch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeAlias

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds

from teelab.sealed_store.errors import SealInputError

InputFormat: TypeAlias = Literal["auto", "csv", "parquet"]
Source: TypeAlias = str | Path | pd.DataFrame | pa.Table

CSV_BLOCK_BYTES = 8 * 1024 * 1024  # types are inferred from the first block; larger blocks see more rows
PARQUET_BATCH_ROWS = 64 * 1024
_CSV_SUFFIXES = (".csv", ".tsv")
_COMPRESSED_SUFFIXES = (".gz", ".bz2", ".zst", ".lz4")
_PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")


@dataclass(frozen=True)
class TabularInput:
    """An input ready to stream: its schema, exact row count, and a way to iterate its batches once."""

    description: str
    schema: pa.Schema
    num_rows: int
    batches: Callable[[], Iterator[pa.RecordBatch]]
    bytes_per_row: float  # uncompressed Arrow bytes, estimated from the first batch


def open_input(
    source: Source,
    *,
    input_format: InputFormat = "auto",
    csv_convert_options: pacsv.ConvertOptions | None = None,
) -> TabularInput:
    if isinstance(source, pd.DataFrame):
        return _table_input(_from_pandas(source), "pandas DataFrame")
    if isinstance(source, pa.Table):
        return _table_input(source, "Arrow table")
    path = Path(source)
    if not path.exists():
        raise SealInputError(f"input {str(path)!r} does not exist")
    kind = input_format if input_format != "auto" else _guess_format(path)
    try:
        if kind == "csv":
            return _csv_input(path, csv_convert_options)
        return _parquet_input(path)
    except (pa.ArrowException, OSError, ValueError) as error:
        raise SealInputError(f"cannot read {str(path)!r} as {kind}: {_first_line(error)}") from None


def _guess_format(path: Path) -> str:
    if path.is_dir():
        return "parquet"
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED_SUFFIXES:
        suffixes.pop()
    last = suffixes[-1] if suffixes else ""
    if last in _CSV_SUFFIXES:
        return "csv"
    if last in _PARQUET_SUFFIXES:
        return "parquet"
    raise SealInputError(
        f"cannot tell the format of {str(path)!r} from its name",
        hint="name it .csv or .parquet, or pass the input format (csv or parquet) explicitly",
    )


def _from_pandas(frame: pd.DataFrame) -> pa.Table:
    try:
        table = pa.Table.from_pandas(frame, preserve_index=None)
        if frame.attrs:  # as DataFrame.to_parquet stores them; the reader restores them like read_parquet
            metadata = {**(table.schema.metadata or {}), b"PANDAS_ATTRS": json.dumps(frame.attrs).encode()}
            table = table.replace_schema_metadata(metadata)
        return table
    except (pa.ArrowException, ValueError, TypeError) as error:
        raise SealInputError(f"cannot convert the DataFrame to Arrow: {_first_line(error)}") from None


def _table_input(table: pa.Table, description: str) -> TabularInput:
    if table.num_columns == 0:
        raise SealInputError(f"the {description} has no columns")
    # Rechunk lazily: to_batches() is zero-copy, so the table is never duplicated in memory.
    return TabularInput(
        description=description,
        schema=table.schema,
        num_rows=table.num_rows,
        batches=lambda: iter(table.to_batches(max_chunksize=PARQUET_BATCH_ROWS)),
        bytes_per_row=table.nbytes / table.num_rows if table.num_rows else 1.0,
    )


def _parquet_input(path: Path) -> TabularInput:
    dataset = ds.dataset(str(path), format="parquet")
    if not dataset.files:  # type: ignore[attr-defined]
        raise SealInputError(f"no Parquet files under {str(path)!r}")
    schema = dataset.schema
    if len(schema) == 0:
        raise SealInputError(f"{str(path)!r} has no columns")
    num_rows = dataset.count_rows()  # from the footers; reads no data

    def batches() -> Iterator[pa.RecordBatch]:
        yield from dataset.to_batches(batch_size=PARQUET_BATCH_ROWS)

    return TabularInput(
        description=f"Parquet {str(path)!r}",
        schema=schema,
        num_rows=num_rows,
        batches=batches,
        bytes_per_row=_estimate_bytes_per_row(batches()),
    )


def _csv_input(path: Path, convert_options: pacsv.ConvertOptions | None) -> TabularInput:
    read_options = pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES)
    tab_separated = ".tsv" in [s.lower() for s in path.suffixes]
    parse_options = pacsv.ParseOptions(delimiter="\t" if tab_separated else ",")
    convert = convert_options or pacsv.ConvertOptions()

    def reader(options: pacsv.ConvertOptions) -> pacsv.CSVStreamingReader:
        # compression="detect" reads .csv.gz etc. by their suffix.
        stream = pa.input_stream(str(path), compression="detect")
        return pacsv.open_csv(
            stream, read_options=read_options, parse_options=parse_options, convert_options=options
        )

    with reader(convert) as first:
        schema = first.schema
    if len(schema) == 0:
        raise SealInputError(f"{str(path)!r} has no columns")
    counting = pacsv.ConvertOptions(
        include_columns=[schema.names[0]],
        column_types={schema.names[0]: pa.string()},  # no type inference: a count needs none
        null_values=convert.null_values,
        strings_can_be_null=convert.strings_can_be_null,
    )
    with reader(counting) as count_reader:
        num_rows = sum(batch.num_rows for batch in count_reader)

    def batches() -> Iterator[pa.RecordBatch]:
        with reader(convert) as stream:
            yield from stream

    return TabularInput(
        description=f"CSV {str(path)!r}",
        schema=schema,
        num_rows=num_rows,
        batches=batches,
        bytes_per_row=_estimate_bytes_per_row(batches()),
    )


def _estimate_bytes_per_row(batches: Iterator[pa.RecordBatch]) -> float:
    try:
        for batch in batches:
            if batch.num_rows:
                rows: int = batch.num_rows
                return max(1.0, float(batch.nbytes) / rows)
        return 1.0
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:300] if lines else type(error).__name__
