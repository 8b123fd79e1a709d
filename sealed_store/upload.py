"""Resumable, atomic upload of a sealed folder into a :class:`DatasetStore`.

1. Parts are copied into ``<root>/<dataset>/.staging/<upload-id>/``. The upload id is derived from the
   version and the manifest's digest, so running the same upload again finds its own staging area and
   resumes, while an upload of different content never mixes with it.
2. After each part is copied (and, locally, fsynced) and its SHA-256 matches the manifest, it is recorded in
   ``progress.json`` in the staging area. A resumed upload skips recorded parts whose staged copy is still
   there with the right size, so an interrupted multi-GB upload restarts where it stopped.
3. Publishing moves the parts into ``v<version>/`` (a rename locally; a server-side copy on object stores)
   and writes ``manifest.json`` last, atomically. Only then is the version visible. ``kill -9`` at any point
   leaves either no visible version or a complete one; the next upload resumes or finishes the publish.

Versions are immutable: uploading different content under a visible version is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

from teelab.sealed_store.errors import PartSizeError, PartTamperedError, StorageError, VersionExistsError
from teelab.sealed_store.folder import SealedDataset
from teelab.sealed_store.manifest import PartEntry
from teelab.sealed_store.progress import Advance, Progress, progress_bar
from teelab.sealed_store.storage import DatasetStore, store_errors

PROGRESS_FORMAT = "teelab/sealed-upload/v1"
PROGRESS_NAME = "progress.json"


@dataclass(frozen=True)
class UploadResult:
    name: str
    version: int
    manifest_sha256: str
    parts_uploaded: int
    parts_skipped: int  # already staged by an earlier, interrupted run
    bytes_uploaded: int
    already_present: bool  # the identical version was already visible; nothing was copied


def upload_id(sealed: SealedDataset) -> str:
    return f"v{sealed.version}-{sealed.manifest_sha256[:16]}"


def upload_sealed(
    store: DatasetStore,
    source: SealedDataset | str | Path,
    *,
    resume: bool = True,
    progress: Progress = None,
    chunk_size: int = 8 * 1024 * 1024,
) -> UploadResult:
    """Upload a sealed folder; resume an interrupted upload of the same folder unless ``resume=False``."""
    sealed = source if isinstance(source, SealedDataset) else SealedDataset.open(source)
    name, version, manifest = sealed.name, sealed.version, sealed.manifest
    staging = store.staging_path(name, upload_id(sealed))
    if store.exists(name, version):
        if store.manifest_bytes(name, version) != manifest.to_bytes():
            raise VersionExistsError(
                f"is already in the store {store.url!r} with different content", dataset=name, version=version
            )
        _remove(store, staging)  # a publish that was killed after writing the manifest
        return UploadResult(name, version, sealed.manifest_sha256, 0, 0, 0, already_present=True)

    if not resume:
        _remove(store, staging)
    done = _load_progress(store, staging, sealed) if resume else {}
    staged = _sizes(store, staging)
    final = store.part_sizes(name, version)
    uploaded = skipped = sent = 0
    with progress_bar(
        progress, total=manifest.total_size, label=f"uploading {name} v{version}", unit="B"
    ) as bar:
        for entry in manifest.parts:
            if done.get(entry.name) == entry.sha256 and entry.size in (
                staged.get(entry.name),
                final.get(entry.name),
            ):
                skipped += 1
                bar(entry.size)
                continue
            _copy_part(
                store, sealed.folder / entry.name, f"{staging}/{entry.name}", entry, sealed, bar, chunk_size
            )
            done[entry.name] = entry.sha256
            _save_progress(store, staging, sealed, done)
            uploaded += 1
            sent += entry.size
    _publish(store, sealed, staging)
    return UploadResult(name, version, sealed.manifest_sha256, uploaded, skipped, sent, already_present=False)


def _copy_part(
    store: DatasetStore,
    local: Path,
    remote: str,
    entry: PartEntry,
    sealed: SealedDataset,
    advance: Advance,
    chunk_size: int,
) -> None:
    digest = hashlib.sha256()
    size = 0
    try:
        with local.open("rb", buffering=0) as source:
            target = _open_for_write(store, remote)
            try:
                while chunk := source.read(chunk_size):
                    digest.update(chunk)
                    target.write(chunk)
                    size += len(chunk)
                    advance(len(chunk))
                if store.is_local:
                    target.flush()
                    os.fsync(target.fileno())  # recorded as done only once it is durable
            except BaseException:
                _abandon(store, target)
                raise
            target.close()
    except store_errors() as error:
        raise StorageError(
            f"copying {entry.name} to {store.url!r} failed: {error}",
            dataset=sealed.name,
            version=sealed.version,
        ) from None
    if size != entry.size:
        _remove(store, remote)
        raise PartSizeError(
            f"changed in the sealed folder while uploading ({size} bytes, manifest says {entry.size})",
            dataset=sealed.name,
            version=sealed.version,
            part=entry.name,
        )
    if digest.hexdigest() != entry.sha256:
        _remove(store, remote)
        raise PartTamperedError(
            f"in the sealed folder {str(sealed.folder)!r} does not match the manifest's SHA-256",
            dataset=sealed.name,
            version=sealed.version,
            part=entry.name,
            hint="the local copy is damaged; seal the data again",
        )


def _open_for_write(store: DatasetStore, path: str) -> IO[bytes]:
    store.ensure_folder(path.rsplit("/", 1)[0])
    if store.is_local:
        return open(path, "wb")  # closed by the caller's with-statement
    return cast(IO[bytes], store.fs.open(path, "wb"))


def _abandon(store: DatasetStore, target: IO[bytes]) -> None:
    """Give up a half-written part. fsspec commits an object-store file when it is closed, so closing it
    would store a truncated object (and complete its multipart upload): discard it instead."""
    if store.is_local:
        target.close()  # a truncated staged file; the resume check (size, progress.json) ignores it
        return
    discard = getattr(target, "discard", None)
    with contextlib.suppress(Exception):
        if callable(discard):
            discard()  # s3fs: aborts the multipart upload, drops the buffer
        target.closed = True  # type: ignore[misc]  # so that nothing flushes it later
    with contextlib.suppress(Exception):
        target.close()


def _publish(store: DatasetStore, sealed: SealedDataset, staging: str) -> None:
    name, version = sealed.name, sealed.version
    folder = store.version_path(name, version)
    staged = _sizes(store, staging)
    try:
        for entry in sealed.manifest.parts:
            if staged.get(entry.name) == entry.size:  # else it is already in place (an earlier publish)
                store.ensure_folder(folder)
                store.fs.mv(f"{staging}/{entry.name}", f"{folder}/{entry.name}")
    except store_errors() as error:
        raise StorageError(f"publishing failed: {error}", dataset=name, version=version) from None
    final = store.part_sizes(name, version)
    for entry in sealed.manifest.parts:
        if final.get(entry.name) != entry.size:
            raise StorageError(
                f"{entry.name} is not in place after publishing (another upload to this version at the "
                "same time?)",
                dataset=name,
                version=version,
                hint="upload again",
            )
    # The one step that makes the version visible.
    try:
        store.put_atomic(store.manifest_path(name, version), sealed.manifest.to_bytes())
    except store_errors() as error:
        raise StorageError(f"writing the manifest failed: {error}", dataset=name, version=version) from None
    _remove(store, staging)


def _load_progress(store: DatasetStore, staging: str, sealed: SealedDataset) -> dict[str, str]:
    """Parts an earlier run finished; anything unreadable or for other content counts as nothing done."""
    unreadable: tuple[type[Exception], ...] = (*store_errors(), ValueError)
    try:
        raw = store.fs.cat_file(f"{staging}/{PROGRESS_NAME}")
        record = json.loads(raw)
    except unreadable:
        return {}
    if (
        not isinstance(record, dict)
        or record.get("format") != PROGRESS_FORMAT
        or record.get("manifest_sha256") != sealed.manifest_sha256
        or not isinstance(record.get("done"), dict)
    ):
        return {}
    return {str(k): str(v) for k, v in record["done"].items()}


def _save_progress(store: DatasetStore, staging: str, sealed: SealedDataset, done: dict[str, str]) -> None:
    record = {
        "format": PROGRESS_FORMAT,
        "dataset": sealed.name,
        "version": sealed.version,
        "manifest_sha256": sealed.manifest_sha256,
        "done": done,
    }
    try:
        store.put_atomic(f"{staging}/{PROGRESS_NAME}", json.dumps(record, sort_keys=True).encode())
    except store_errors() as error:
        raise StorageError(
            f"recording upload progress failed: {error}", dataset=sealed.name, version=sealed.version
        ) from None


def _sizes(store: DatasetStore, folder: str) -> dict[str, int]:
    try:
        store.fs.invalidate_cache(folder)
        entries = store.fs.ls(folder, detail=True)
    except FileNotFoundError:
        return {}
    except store_errors() as error:
        raise StorageError(f"cannot list {folder!r} in {store.url!r}: {error}") from None
    return {
        os.path.basename(str(e["name"]).rstrip("/")): int(e.get("size") or 0)
        for e in entries
        if e.get("type") == "file"
    }


def _remove(store: DatasetStore, path: str) -> None:
    with contextlib.suppress(*store_errors()):
        store.fs.invalidate_cache(path)
        if store.fs.exists(path):
            store.fs.rm(path, recursive=True)
