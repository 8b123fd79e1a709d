"""Where sealed datasets live: any fsspec URL (a local folder by default, ``s3://…`` when one machine is
not enough, ``memory://…`` in tests), always laid out the same way::

    <root>/<dataset>/v<version>/manifest.json
    <root>/<dataset>/v<version>/part-00001.parquet …
    <root>/<dataset>/.staging/<upload-id>/…           unfinished uploads (see upload.py)

A version is *visible* exactly when its ``manifest.json`` exists, and the manifest is always the last thing
written, in one atomic step (temp file + rename locally, a single PUT on object stores). Listing therefore
never shows a half-uploaded version, and deleting removes the manifest first.

The store holds only ciphertext and manifests; it needs no key and checks no authenticity: that is the
reader's job (reader.py), against the digest the key broker registered.

An ``s3://`` URL may carry its connection settings in a query string, so that the one URL the gateway puts
into a kernel's sealed bundle is all the kernel needs (docs/datasets.md, "Datasets on S3")::

    s3://bucket/prefix?endpoint_url=https://minio.example:9000&region=eu-central-1&key=…&secret=…

``secret`` and ``token`` never appear in :attr:`DatasetStore.url` (what messages and reprs show).
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast
from urllib.parse import unquote

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from teelab.files import replace_atomically
from teelab.paths import data_dir
from teelab.sealed_store.errors import DatasetNotFoundError, StorageError
from teelab.sealed_store.format import MANIFEST_NAME, check_name, check_version, part_name
from teelab.sealed_store.manifest import MAX_MANIFEST_BYTES, Manifest, parse_manifest
from teelab.sealed_store.progress import Progress

if TYPE_CHECKING:
    import pyarrow.fs as pafs

    from teelab.sealed_store.folder import SealedDataset
    from teelab.sealed_store.upload import UploadResult

STAGING = ".staging"
# Object stores have no folders; asking s3fs/gcsfs for one may even create a bucket. Skip makedirs there.
_FOLDERLESS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "memory"})
_VERSION_DIR = re.compile(r"v([1-9][0-9]*)")
# What an s3:// URL's query may set (anything else is a typo we refuse rather than silently ignore).
_S3_PROTOCOLS = ("s3://", "s3a://")
_S3_QUERY = frozenset({"endpoint_url", "region", "key", "secret", "token", "anon", "profile"})
_S3_SECRETS = frozenset({"secret", "token"})


def default_store_url() -> str:
    """The per-user local store, under teelab's data directory."""
    return (data_dir() / "datasets").as_uri()


@dataclass(frozen=True, order=True)
class DatasetVersion:
    name: str
    version: int


class DatasetStore:
    """Sealed datasets under one fsspec URL. ``storage_options`` go to fsspec (credentials, endpoint…)."""

    def __init__(self, url: str | Path | None = None, **storage_options: Any) -> None:
        full = str(url) if url is not None else default_store_url()
        location, from_query, self.url = split_store_url(full)
        try:
            fs, root = url_to_fs(location, **{**from_query, **storage_options})
        except ImportError as error:
            raise StorageError(
                f"cannot open the dataset store {self.url!r}: {error}",
                hint="install teelab's s3 extra (pip install 'teelab[s3]')"
                if location.startswith(_S3_PROTOCOLS)
                else None,
            ) from None
        except (ValueError, OSError) as error:
            raise StorageError(f"cannot open the dataset store {self.url!r}: {error}") from None
        self.fs: fsspec.AbstractFileSystem = fs
        self.root: str = root.rstrip("/") or "/"
        self.is_local = isinstance(fs, LocalFileSystem)

    def __repr__(self) -> str:
        return f"DatasetStore({self.url!r})"

    # ----------------------------------------------------------------------------------------- paths

    def _join(self, *parts: str) -> str:
        return "/".join((self.root.rstrip("/"), *parts))

    def dataset_path(self, name: str) -> str:
        return self._join(check_name(name))

    def version_path(self, name: str, version: int) -> str:
        return self._join(check_name(name), f"v{check_version(version)}")

    def manifest_path(self, name: str, version: int) -> str:
        return f"{self.version_path(name, version)}/{MANIFEST_NAME}"

    def part_path(self, name: str, version: int, part: int | str) -> str:
        file_name = part_name(part) if isinstance(part, int) else part
        if file_name != os.path.basename(file_name) or not file_name.startswith("part-"):
            raise StorageError(f"not a part name: {file_name!r}")
        return f"{self.version_path(name, version)}/{file_name}"

    def staging_path(self, name: str, upload_id: str) -> str:
        return self._join(check_name(name), STAGING, upload_id)

    def arrow_filesystem(self) -> pafs.FileSystem:
        """The store as a pyarrow filesystem, for reading parts with pyarrow's own (threaded) I/O."""
        import pyarrow.fs as pafs  # only readers need pyarrow; uploads stay light

        if self.is_local:
            return pafs.LocalFileSystem()
        return pafs.PyFileSystem(pafs.FSSpecHandler(self.fs))

    # ------------------------------------------------------------------------------------- queries

    def list(self, name: str | None = None) -> builtins.list[DatasetVersion]:
        """Every visible version (those with a manifest), sorted; only ``name``'s when given."""
        pattern = self._join(check_name(name) if name is not None else "*", "v*", MANIFEST_NAME)
        with self._errors("list"):
            self._refresh()
            found = self.fs.glob(pattern)
            if not found:
                self._check_bucket()
        prefix = self.root.rstrip("/") + "/"
        versions = []
        for path in found:
            relative = str(path)[len(prefix) :] if str(path).startswith(prefix) else ""
            pieces = relative.split("/")
            if len(pieces) != 3:
                continue
            match = _VERSION_DIR.fullmatch(pieces[1])
            with contextlib.suppress(Exception):
                if match:
                    versions.append(DatasetVersion(check_name(pieces[0]), check_version(int(match[1]))))
        return sorted(versions)

    def versions(self, name: str) -> builtins.list[int]:
        return [v.version for v in self.list(name)]

    def latest_version(self, name: str) -> int | None:
        """The highest visible version, or ``None`` when the dataset has none.

        What the *current* version is, is the key broker's to say; this is what the store happens to hold.
        """
        numbers = self.versions(name)
        return numbers[-1] if numbers else None

    def exists(self, name: str, version: int) -> bool:
        path = self.manifest_path(name, version)
        with self._errors("look up", name, version):
            self._refresh(path)
            return bool(self.fs.exists(path))

    def manifest_bytes(self, name: str, version: int) -> bytes:
        path = self.manifest_path(name, version)
        try:
            with self._errors("read the manifest of", name, version):
                self._refresh(path)
                with self.fs.open(path, "rb") as handle:
                    data = handle.read(MAX_MANIFEST_BYTES + 1)
        except FileNotFoundError:
            raise self._not_found(name, version) from None
        return cast(bytes, data)

    def manifest(self, name: str, version: int) -> Manifest:
        """The parsed manifest, NOT yet authenticated (that needs the data key or the broker's digest)."""
        return parse_manifest(self.manifest_bytes(name, version), dataset=name, version=version)

    def part_sizes(self, name: str, version: int) -> dict[str, int]:
        """Size of every file in the version's folder, in one listing (one request on object stores)."""
        folder = self.version_path(name, version)
        try:
            with self._errors("list the parts of", name, version):
                self._refresh(folder)
                entries = self.fs.ls(folder, detail=True)
        except FileNotFoundError:
            return {}
        return {
            os.path.basename(str(e["name"]).rstrip("/")): int(e.get("size") or 0)
            for e in entries
            if e.get("type") == "file"
        }

    def open_part(self, name: str, version: int, part: int | str) -> IO[bytes]:
        """A seekable binary file for one part (what pyarrow reads from)."""
        path = self.part_path(name, version, part)
        with self._errors("open", name, version):
            return cast(IO[bytes], self.fs.open(path, "rb"))

    def read_range(self, path: str, start: int, end: int) -> bytes:
        with self._errors("read"):
            return cast(bytes, self.fs.cat_file(path, start=start, end=end))

    # ------------------------------------------------------------------------------------ changes

    def upload(
        self,
        source: SealedDataset | str | Path,
        *,
        resume: bool = True,
        progress: Progress = None,
        chunk_size: int = 8 * 1024 * 1024,
    ) -> UploadResult:
        """Upload a sealed folder (see :func:`teelab.sealed_store.upload.upload_sealed`)."""
        from teelab.sealed_store.upload import upload_sealed

        return upload_sealed(self, source, resume=resume, progress=progress, chunk_size=chunk_size)

    def delete(self, name: str, version: int | None = None) -> None:
        """Delete one version, or the whole dataset (every version and unfinished upload)."""
        if version is None:
            for number in self.versions(name):
                self.delete(name, number)
            path = self.dataset_path(name)
            with self._errors("delete", name):
                if self.fs.exists(path):
                    self.fs.rm(path, recursive=True)
            return
        manifest = self.manifest_path(name, version)
        folder = self.version_path(name, version)
        with self._errors("delete", name, version):
            self._refresh(folder)
            if not self.fs.exists(folder):
                raise self._not_found(name, version)
            # Manifest first: the version disappears in one step, before any part does.
            if self.fs.exists(manifest):
                self.fs.rm_file(manifest)
            self.fs.rm(folder, recursive=True)
            self._refresh(folder)

    def ensure_folder(self, path: str) -> None:
        if self.is_local:
            Path(path).mkdir(parents=True, exist_ok=True)
        elif not _FOLDERLESS.intersection(_protocols(self.fs)):
            self.fs.makedirs(path, exist_ok=True)

    def put_atomic(self, path: str, data: bytes) -> None:
        """Write a small file so that readers see all of it or none of it."""
        parent = path.rsplit("/", 1)[0]
        self.ensure_folder(parent)
        if self.is_local:
            replace_atomically(Path(path), data, mode=0o644)
            _fsync_dir(Path(parent))
        else:
            self.fs.pipe_file(path, data)  # one PUT: object stores never show a partial object
        self._refresh(parent)

    # ------------------------------------------------------------------------------------ helpers

    def _refresh(self, path: str | None = None) -> None:
        # fsspec caches listings (s3fs, gcsfs); another process may have uploaded or deleted since.
        self.fs.invalidate_cache(path)

    def _check_bucket(self) -> None:
        """A listing of a missing bucket is empty, not an error, on S3: say so rather than show no datasets."""
        if {"s3", "s3a"}.isdisjoint(_protocols(self.fs)):
            return
        bucket = self.root.strip("/").split("/", 1)[0]
        if not self.fs.exists(bucket):
            raise StorageError(
                f"the bucket {bucket!r} of the store {self.url!r} does not exist (or is not yours)"
            )

    def _not_found(self, name: str, version: int) -> DatasetNotFoundError:
        return DatasetNotFoundError(
            f"not in the store {self.url!r} (no manifest: never uploaded, deleted, or the upload is unfinished)",
            dataset=name,
            version=version,
        )

    @contextlib.contextmanager
    def _errors(self, action: str, name: str | None = None, version: int | None = None) -> Iterator[None]:
        """Storage failures become StorageError; FileNotFoundError passes through for callers to judge."""
        try:
            yield
        except FileNotFoundError:
            raise
        except store_errors() as error:
            raise StorageError(
                f"cannot {action} the store {self.url!r}: {error}", dataset=name, version=version
            ) from None


@functools.cache
def store_errors() -> tuple[type[Exception], ...]:
    """What a store's client raises when the store cannot be reached or refuses: OSError (fsspec's own, and
    s3fs's translation of S3's errors), and botocore's that s3fs lets through (no credentials, a bad endpoint)."""
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        return (OSError,)
    return (OSError, BotoCoreError, ClientError)


def split_store_url(url: str) -> tuple[str, dict[str, Any], str]:
    """``(location, storage options, url for display)``: an ``s3://`` URL's query becomes s3fs options.

    Values are percent-decoded but a ``+`` stays a ``+`` (S3 secret keys contain them). Other protocols, and
    local paths (which may contain ``?``), are passed through untouched.
    """
    if not url.startswith(_S3_PROTOCOLS) or "?" not in url:
        return url, {}, url
    location, query = url.split("?", 1)
    options: dict[str, Any] = {}
    client: dict[str, str] = {}
    shown: list[str] = []
    seen: set[str] = set()
    for item in query.split("&"):
        field, equals, raw = item.partition("=")
        if not field:
            continue
        if not equals or field not in _S3_QUERY or field in seen:
            raise StorageError(
                f"the store URL's setting {field[:40]!r} is not one of {', '.join(sorted(_S3_QUERY))} "
                "(each once, as name=value)"
            )
        seen.add(field)
        value = unquote(raw)
        shown.append(f"{field}=***" if field in _S3_SECRETS else item)
        if field == "region":
            client["region_name"] = value
        elif field == "anon":
            if value not in ("true", "false"):
                raise StorageError(f"the store URL's anon must be true or false, not {value[:20]!r}")
            options["anon"] = value == "true"
        else:
            options[field] = value
    if client:
        options["client_kwargs"] = client
    return location, options, f"{location}?{'&'.join(shown)}" if shown else location


def _protocols(fs: fsspec.AbstractFileSystem) -> set[str]:
    protocol = fs.protocol
    return {protocol} if isinstance(protocol, str) else set(protocol)


def _fsync_dir(folder: Path) -> None:
    """Make renames in ``folder`` durable (a crash must not lose the parts but keep the manifest)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
