"""``read_dataset`` for Dask: one partition per sealed part, each decrypted by the worker that reads it.

In the notebook kernel (the Dask client), :func:`read_dataset` makes one key release of its own to learn,
from the key broker, which version is current and that version's ``manifest_sha256``; it authenticates the
manifest exactly as the single-kernel reader does (:func:`~teelab.sealed_store.reader.open_sealed`) and takes
the schema from the manifest's encrypted ``schema`` field (decrypted here, in the attested kernel, after the
manifest's MAC verified) to build Dask's ``meta`` — so building the graph opens no part, and no worker
decrypts anything while it is built. A manifest sealed before that field existed has none: the kernel then
decrypts part 1's footer for the schema, as it always did. The graph is ``dd.from_map(SealedPartReader, parts,
meta=...)``: each task carries the dataset, the version, the manifest digest, the part's index and name, and
the query (columns, filters) — never a key.

On a worker, :class:`SealedPartReader` obtains the data key itself: the worker's boot installed a key-release
session with its own enclave key ``E_w``, its own TEE's evidence and the grant the kernel delegated to it
(:mod:`teelab.sealed_store.dask_keys`). The first part of a version a worker reads costs one release and one
manifest authentication; the opened version stays in the worker's memory (inside its TEE) for every further
part, so a worker makes one release per version, not one per part. A key broker that answers with another
manifest digest than the graph's is refused: the worker never reads a version the kernel did not check.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa

from teelab.sealed_store.errors import ManifestMismatchError, PartMissingError
from teelab.sealed_store.notebook import ReaderSession, current_session, release_key
from teelab.sealed_store.reader import Filters, SealedReader, TypesMapper, open_sealed
from teelab.sealed_store.storage import DatasetStore


@dataclass(frozen=True)
class PartRef:
    """One partition of the graph: part ``index`` (1-based) of the version, named ``name`` in its manifest."""

    index: int
    name: str


@dataclass(frozen=True)
class SealedPartReader:
    """The task function of a sealed Dask read. It holds what a task may show the scheduler: no key."""

    dataset: str
    version: int
    manifest_sha256: str
    filters: Filters = None
    arrow_strings: bool = True  # the kernel's Dask setting, which its meta followed

    def __call__(self, part: PartRef, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Decrypt ``part`` (only ``columns``, only row groups that may match the filters) on this worker."""
        opened = open_version(self.dataset, self.version, self.manifest_sha256)
        entries = opened.reader.manifest.parts
        if not 1 <= part.index <= len(entries) or entries[part.index - 1].name != part.name:
            raise PartMissingError(
                f"the graph names part {part.index} {part.name!r}, which the authenticated manifest does not "
                "have (a graph built for another version, or edited)",
                dataset=self.dataset,
                version=self.version,
                part=part.name,
            )
        return opened.reader.read_part_pandas(
            part.index,
            None if columns is None else list(columns),
            self.filters,
            schema=opened.schema,
            types_mapper=dask_types_mapper(self.arrow_strings),
        )


@dataclass(frozen=True)
class OpenedVersion:
    """A version authenticated in this process with a key released to this process's session."""

    session: ReaderSession = field(repr=False)
    reader: SealedReader = field(repr=False)
    schema: pa.Schema = field(repr=False)


_opened: dict[tuple[str, int], OpenedVersion] = {}
_locks: dict[tuple[str, int], threading.Lock] = {}
_guard = threading.Lock()


def open_version(dataset: str, version: int, manifest_sha256: str) -> OpenedVersion:
    """This process's opened ``dataset`` v``version``: released and authenticated once per session.

    A worker's threads share it; the first of them asks the key broker while the others wait, so one worker
    makes one release per version.
    """
    session = current_session()
    with _guard:
        lock = _locks.setdefault((dataset, version), threading.Lock())
    with lock:
        opened = _opened.get((dataset, version))
        if opened is None or opened.session is not session:
            opened = _open(session, dataset, version)
            _opened[(dataset, version)] = opened
    if opened.reader.manifest.sha256 != manifest_sha256:
        raise ManifestMismatchError(
            f"the key broker's manifest for v{version} is {opened.reader.manifest.sha256[:16]}…, the graph was "
            f"built from {manifest_sha256[:16]}…: refused",
            dataset=dataset,
            version=version,
        )
    return opened


def _open(session: ReaderSession, dataset: str, version: int | None) -> OpenedVersion:
    key = release_key(session, dataset, version=version)
    assert session.key_broker is not None  # release_key checked it
    reader = open_sealed(
        DatasetStore(session.key_broker.store),
        dataset,
        version=key.version,
        manifest_sha256=key.manifest_sha256,
        dek=key.dek,
    )
    return OpenedVersion(session, reader, reader.schema())


def dask_types_mapper(arrow_strings: bool) -> TypesMapper | None:
    """The pandas dtypes ``dd.read_parquet`` gives Arrow types when Dask converts strings (``arrow_strings``,
    Dask's ``dataframe.convert-string``): partitions come out as Dask would convert them, without a second
    pass over each one."""
    if not arrow_strings:
        return None
    mapping: dict[pa.DataType, Any] = {
        pa.string(): pd.StringDtype("pyarrow"),
        pa.large_string(): pd.StringDtype("pyarrow"),
        pa.date32(): pd.ArrowDtype(pa.date32()),
        pa.date64(): pd.ArrowDtype(pa.date64()),
    }

    def mapper(arrow_type: pa.DataType) -> Any:
        if pa.types.is_decimal(arrow_type):
            return pd.ArrowDtype(arrow_type)
        return mapping.get(arrow_type)

    return mapper


def forget_keys() -> None:
    """Drop every opened version (and its data key) from this process's memory."""
    with _guard:
        _opened.clear()


def read_dataset(
    name: str,
    columns: Sequence[str] | None = None,
    filters: Any = None,
    *,
    version: int | None = None,
) -> Any:
    """Sealed dataset ``name`` as a lazy Dask DataFrame: one partition per sealed part.

    ``columns``, ``filters`` and ``version`` as in :func:`teelab.sealed_store.notebook.read_dataset`; a later
    column selection (``df[["a"]]``) is pushed into the reads too. Run it in the attested kernel, with a
    Dask client of workers that hold key-release sessions (``teelab.dask.TeeCluster``), or with Dask's local
    schedulers, which read in this kernel.
    """
    import dask.dataframe as dd
    from dask.dataframe.utils import clear_known_categories, pyarrow_strings_enabled

    session = current_session()
    if not isinstance(name, str):
        raise TypeError(f"the dataset name must be a string, not {type(name).__name__}")
    opened = _open(session, name, version)
    reader = opened.reader
    with _guard:  # this kernel reading with a local scheduler uses the version it just opened
        _opened[(reader.name, reader.version)] = opened
    wanted = None if columns is None else list(columns)
    # Checks the query (a QueryError now, not on a worker) and gives the partitions' empty frame.
    arrow_strings = bool(pyarrow_strings_enabled())
    meta = reader.empty_pandas(
        wanted, filters, schema=opened.schema, types_mapper=dask_types_mapper(arrow_strings)
    )
    # Each part has its own categories: the meta must not claim to know them.
    meta = clear_known_categories(meta)  # type: ignore[no-untyped-call]
    parts = [PartRef(k, entry.name) for k, entry in enumerate(reader.manifest.parts, start=1)]
    task = SealedPartReader(reader.name, reader.version, reader.manifest.sha256, filters, arrow_strings)
    return dd.from_map(  # type: ignore[no-untyped-call]
        task, parts, columns=wanted, meta=meta, label=f"read-sealed-{reader.name}-v{reader.version}"
    )
