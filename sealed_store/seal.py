"""Seal a table: split it into parts, encrypt each with Parquet Modular Encryption, write the manifest last.

The data owner runs this on their own machine. A fresh 256-bit data key (DEK) per dataset version is drawn
here and handed back exactly once, in :class:`SealResult`, for the caller to register with the key broker;
it is never written to disk. Each part gets its own key and identity (``format.part_key``/``aad_prefix``),
and the AAD prefix is withheld from the file (``store_aad_prefix=False``): a reader must supply the identity
it expects, which is what makes a part served under another name fail authentication.

Layout choices (docs/sealed-format.md §Layout):
- A *part* holds about ``part_size`` bytes of uncompressed Arrow data (default 128 MiB), so reading one
  part never needs much more enclave memory than that, whatever the file's compression ratio.
- A *row group* holds about ``row_group_size`` bytes (default 16 MiB, clamped to 1 Ki-1 Mi rows). Row
  groups are the unit that ``filters`` can skip (their min/max statistics sit in the encrypted footer) and
  that is decrypted and decoded in parallel; 16 MiB keeps skipping fine-grained and per-group overhead
  negligible, and stays far below PME's limit of 32767 row groups per file.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pyarrow.parquet.encryption as pe

from teelab.files import replace_atomically
from teelab.sealed_store.errors import SealInputError, SealOutputError
from teelab.sealed_store.folder import SealedDataset
from teelab.sealed_store.format import (
    CRYPTO_METADATA_BYTES,
    MANIFEST_NAME,
    MAX_PARTS,
    aad_prefix,
    check_dek,
    check_name,
    check_version,
    crypto_metadata_offset,
    envelope_problem,
    part_key,
    part_name,
)
from teelab.sealed_store.manifest import PartEntry, build_manifest, default_key_ref
from teelab.sealed_store.progress import Progress, progress_bar
from teelab.sealed_store.sources import InputFormat, Source, open_input
from teelab.timeutil import isoformat, utcnow

MiB = 1024 * 1024
DEFAULT_PART_SIZE = 128 * MiB
DEFAULT_ROW_GROUP_SIZE = 16 * MiB
MIN_ROW_GROUP_ROWS = 1024
MAX_ROW_GROUP_ROWS = 1024 * 1024
MAX_ROW_GROUPS_PER_PART = 32_767  # PME's AAD carries row-group ordinals as int16
HASH_CHUNK = 8 * MiB
COMPRESSIONS = ("snappy", "zstd", "lz4", "gzip", "brotli", "none")


class SealResult(NamedTuple):
    """What :func:`seal_dataset` returns: the sealed folder, and the data key (shown to no log or repr)."""

    dataset: SealedDataset
    dek: bytes
    rows: int = 0  # how many rows went in (not in the manifest: row counts would be visible to the store)

    def __repr__(self) -> str:
        return f"SealResult(dataset={self.dataset!r}, dek=<{len(self.dek)} bytes, hidden>, rows={self.rows})"


@dataclass(frozen=True)
class Layout:
    num_rows: int
    parts: int
    part_rows: int
    row_group_rows: int

    def rows_in_part(self, k: int) -> int:
        return min(self.part_rows, self.num_rows - (k - 1) * self.part_rows)


def plan_layout(
    *,
    num_rows: int,
    bytes_per_row: float,
    part_size: int = DEFAULT_PART_SIZE,
    part_rows: int | None = None,
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
    row_group_rows: int | None = None,
) -> Layout:
    """Turn byte targets into row counts (row counts given explicitly win)."""
    for label, value in (("part_size", part_size), ("row_group_size", row_group_size)):
        if value < 1:
            raise SealInputError(f"{label} must be positive")
    if part_rows is not None and part_rows < 1:
        raise SealInputError("part_rows must be positive")
    if row_group_rows is not None and row_group_rows < 1:
        raise SealInputError("row_group_rows must be positive")
    per_row = max(bytes_per_row, 1.0)
    group = row_group_rows or min(MAX_ROW_GROUP_ROWS, max(MIN_ROW_GROUP_ROWS, int(row_group_size / per_row)))
    if part_rows is None:
        # A whole number of row groups per part, so no part ends in a runt row group.
        groups = min(MAX_ROW_GROUPS_PER_PART, max(1, round(part_size / per_row / group)))
        part_rows = groups * group
    group = min(group, part_rows)
    if math.ceil(part_rows / group) > MAX_ROW_GROUPS_PER_PART:
        raise SealInputError(
            f"{part_rows} rows per part in row groups of {group} rows exceeds the "
            f"{MAX_ROW_GROUPS_PER_PART} row groups an encrypted Parquet file can hold"
        )
    parts = max(1, math.ceil(num_rows / part_rows))
    if parts > MAX_PARTS:
        raise SealInputError(f"{parts} parts exceed the format's {MAX_PARTS}; raise the part size")
    return Layout(num_rows=num_rows, parts=parts, part_rows=part_rows, row_group_rows=group)


def seal_dataset(
    source: Source,
    *,
    name: str,
    version: int,
    out: str | Path,
    dek: bytes | None = None,
    part_size: int = DEFAULT_PART_SIZE,
    part_rows: int | None = None,
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
    row_group_rows: int | None = None,
    compression: str = "snappy",
    input_format: InputFormat = "auto",
    csv_convert_options: pacsv.ConvertOptions | None = None,
    key_ref: str | None = None,
    record_rows: bool = False,
    created_at: datetime | None = None,
    progress: Progress = None,
) -> SealResult:
    """Seal ``source`` (a CSV or Parquet path, a DataFrame or an Arrow table) into the empty folder ``out``.

    Returns the sealed dataset and its data key. ``dek`` may be given (32 bytes) to seal under a key the
    caller drew; otherwise a fresh one is generated. ``record_rows`` discloses per-part row counts in the
    manifest (off by default: row counts are visible to anyone who can read the store).
    """
    name = check_name(name)
    version = check_version(version)
    dek = check_dek(dek) if dek is not None else secrets.token_bytes(32)
    if compression not in COMPRESSIONS:
        raise SealInputError(f"unknown compression {compression!r}; use one of {', '.join(COMPRESSIONS)}")
    table_input = open_input(source, input_format=input_format, csv_convert_options=csv_convert_options)
    layout = plan_layout(
        num_rows=table_input.num_rows,
        bytes_per_row=table_input.bytes_per_row,
        part_size=part_size,
        part_rows=part_rows,
        row_group_size=row_group_size,
        row_group_rows=row_group_rows,
    )
    folder = _prepare_folder(Path(out).absolute())
    writer = _PartWriter(
        folder=folder,
        dek=dek,
        name=name,
        version=version,
        layout=layout,
        schema=table_input.schema,
        compression=compression,
    )
    try:
        with progress_bar(progress, total=layout.num_rows, label=f"sealing {name}", unit=" rows") as advance:
            for batch in _guarded(table_input.batches(), table_input.description):
                writer.write(batch)
                advance(batch.num_rows)
        entries = writer.finish(record_rows=record_rows, description=table_input.description)
        manifest = build_manifest(
            dek=dek,
            dataset=name,
            version=version,
            created_at=isoformat(created_at or utcnow()),
            parts=entries,
            key_ref=key_ref if key_ref is not None else default_key_ref(name, version),
            schema=writer.part_schema,  # stored encrypted: a reader's meta needs no part (sealed_schema.py)
        )
        # Written last and atomically: a folder without manifest.json is visibly unfinished.
        replace_atomically(folder / MANIFEST_NAME, manifest.to_bytes(), mode=0o644)
    except BaseException:
        writer.abort()
        raise
    return SealResult(SealedDataset(folder=folder, manifest=manifest), dek, layout.num_rows)


def _prepare_folder(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if any(folder.iterdir()):
            raise SealOutputError(
                f"{str(folder)!r} is not empty",
                hint="seal into a new folder; sealed folders are never overwritten",
            )
    except OSError as error:
        raise SealOutputError(f"cannot use {str(folder)!r} as the output folder: {error}") from None
    return folder


class _PartWriter:
    """Cuts the batch stream into row groups and parts, each part encrypted under its own key."""

    def __init__(
        self,
        *,
        folder: Path,
        dek: bytes,
        name: str,
        version: int,
        layout: Layout,
        schema: pa.Schema,
        compression: str,
    ) -> None:
        self._folder = folder
        self._dek = dek
        self._name = name
        self._version = version
        self._layout = layout
        self._schema = schema
        self._compression = compression
        self._writer: pq.ParquetWriter | None = None
        self._k = 0  # current part number (1-based); 0 before the first
        self._rows_in_part = 0
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._created: list[Path] = []
        self._entries: list[PartEntry] = []
        self._part_rows: list[int] = []
        self.part_schema: pa.Schema | None = None  # as a reader decodes it from part 1's footer

    def write(self, batch: pa.RecordBatch) -> None:
        if not batch.schema.equals(self._schema, check_metadata=False):
            raise SealInputError(f"a batch does not match the input's schema:\n{batch.schema}")
        try:
            self._write(batch)
        except OSError as error:
            raise SealOutputError(f"writing {part_name(self._k)} failed: {error}") from None
        except pa.ArrowException as error:
            raise SealInputError(f"cannot be stored as Parquet: {_first_line(error)}") from None

    def _write(self, batch: pa.RecordBatch) -> None:
        offset = 0
        while offset < batch.num_rows:
            if self._writer is None:
                self._open_next()
            part_target = self._layout.rows_in_part(self._k)
            group_target = min(self._layout.row_group_rows, part_target - self._rows_in_part)
            take = min(batch.num_rows - offset, group_target - self._pending_rows)
            self._pending.append(batch.slice(offset, take))
            self._pending_rows += take
            offset += take
            if self._pending_rows == group_target:
                self._flush_group()
            if self._rows_in_part == part_target:
                self._close_part()

    def finish(self, *, record_rows: bool, description: str) -> list[PartEntry]:
        if self._layout.num_rows == 0 and self._k == 0:
            self._open_next()  # an empty table still gets one part: its schema
        if self._writer is not None or self._k != self._layout.parts:
            raise SealInputError(
                f"{description} yielded fewer rows than the {self._layout.num_rows} counted before sealing "
                "(was it modified while being sealed?)"
            )
        return [
            PartEntry(name=e.name, size=e.size, sha256=e.sha256, rows=rows if record_rows else None)
            for e, rows in zip(self._entries, self._part_rows, strict=True)
        ]

    def abort(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None
        for path in self._created:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _open_next(self) -> None:
        if self._k >= self._layout.parts:
            raise SealInputError(
                f"the input yielded more than the {self._layout.num_rows} rows counted before sealing "
                "(was it modified while being sealed?)"
            )
        self._k += 1
        self._rows_in_part = 0
        prefix = aad_prefix(self._name, self._version, self._k, self._layout.parts)
        properties = pe.create_encryption_properties(
            part_key(self._dek, prefix),
            aad_prefix=prefix.encode(),
            store_aad_prefix=False,  # readers must supply the identity they expect (swap detection)
            encryption_algorithm="AES_GCM_V1",  # never AES_GCM_CTR_V1: its pages have no integrity
            plaintext_footer=False,  # the footer holds the schema and statistics
        )
        path = self._folder / part_name(self._k)
        self._created.append(path)
        self._writer = pq.ParquetWriter(
            str(path),
            self._schema,
            compression=self._compression,
            encryption_properties=properties,
            use_dictionary=True,
            write_statistics=True,  # lets filters skip row groups; encrypted with the footer
        )
        if self._layout.num_rows == 0:
            self._close_part()

    def _flush_group(self) -> None:
        assert self._writer is not None
        table = pa.Table.from_batches(self._pending, schema=self._schema)
        self._writer.write_table(table, row_group_size=self._pending_rows)
        self._rows_in_part += self._pending_rows
        self._pending = []
        self._pending_rows = 0

    def _close_part(self) -> None:
        assert self._writer is not None
        self._writer.close()
        self._writer = None
        path = self._folder / part_name(self._k)
        size, digest = _hash_file(path)
        _check_written(path, size)
        if self._k == 1:
            self.part_schema = self._read_back_schema(path)
        self._entries.append(PartEntry(name=path.name, size=size, sha256=digest))
        self._part_rows.append(self._rows_in_part)

    def _read_back_schema(self, path: Path) -> pa.Schema:
        """Part 1's schema as the reader will see it, for the manifest's encrypted ``schema`` field.

        Read back from the encrypted footer rather than taken from the input: Parquet does not round-trip
        every Arrow type and metadata unchanged, and the reader checks every part against the manifest's.
        """
        prefix = aad_prefix(self._name, self._version, 1, self._layout.parts)
        properties = pe.create_decryption_properties(part_key(self._dek, prefix), aad_prefix=prefix.encode())
        file_format = ds.ParquetFileFormat(
            default_fragment_scan_options=ds.ParquetFragmentScanOptions(decryption_properties=properties)
        )
        try:
            return file_format.make_fragment(str(path), filesystem=pafs.LocalFileSystem()).physical_schema
        except (pa.ArrowException, OSError, ValueError) as error:
            raise SealOutputError(f"cannot read back {path.name}: {_first_line(error)}") from None


def _guarded(batches: Iterator[pa.RecordBatch], description: str) -> Iterator[pa.RecordBatch]:
    """Turn pyarrow's errors while *reading* the input into a SealInputError naming the input."""
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError, ValueError) as error:
            raise SealInputError(
                f"reading {description} failed: {_first_line(error)}",
                hint="for CSV, pass explicit column types if they were inferred wrongly from the first rows",
            ) from None
        yield batch


def _hash_file(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb", buffering=0) as raw:
        while chunk := raw.read(HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _check_written(path: Path, size: int) -> None:
    """Refuse to seal if pyarrow wrote a file our reader would reject (e.g. a changed metadata encoding)."""
    with path.open("rb") as handle:
        head = handle.read(4)
        handle.seek(size - 8)
        offset = crypto_metadata_offset(size, handle.read(8))
        crypto = b""
        if isinstance(offset, int):
            handle.seek(offset)
            crypto = handle.read(CRYPTO_METADATA_BYTES)
    problem = offset if isinstance(offset, str) else envelope_problem(head, crypto)
    if problem is not None:
        raise SealOutputError(
            f"pyarrow {pa.__version__} wrote {path.name} in a form this reader does not accept: {problem}"
        )


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:300] if lines else type(error).__name__
