"""A cache of file SHA-256 digests keyed by (path, size, mtime, inode) — and ctime.

Measuring a Python environment means hashing tens of thousands of files; with this cache an unchanged
environment is re-measured from ``stat`` alone. A file whose size, mtime or inode changed is hashed again.
The change time is part of the key too: unlike mtime it cannot be set back by a user (``touch -d``), so an
edit that restores size and mtime is still noticed.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from teelab.paths import cache_dir

_SCHEMA = """
CREATE TABLE IF NOT EXISTS file_hash (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    sha256 TEXT NOT NULL
)
"""
_CHUNK = 1 << 20


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class HashCache:
    """Use as a context manager; new digests are written back when it closes."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or cache_dir() / "file-hashes-v1.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One process may share a cache between threads (a Jupyter server launching kernels); a lock keeps
        # the connection and the dictionaries consistent.
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        self._known: dict[str, tuple[int, int, int, int, str]] = {
            row[0]: (row[1], row[2], row[3], row[4], row[5])
            for row in self._db.execute("SELECT path, size, mtime_ns, ctime_ns, inode, sha256 FROM file_hash")
        }
        self._new: dict[str, tuple[int, int, int, int, str]] = {}
        self.hashed_bytes = 0

    def digest(self, path: str, stat: os.stat_result | None = None) -> str:
        """SHA-256 of ``path``'s content (follows symlinks)."""
        stat = stat or os.stat(path)
        key = (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
        with self._lock:
            known = self._new.get(path) or self._known.get(path)
        if known is not None and known[:4] == key:
            return known[4]
        digest = sha256_file(path)
        with self._lock:
            self.hashed_bytes += stat.st_size
            self._new[path] = (*key, digest)
        return digest

    def digests(self, paths: Sequence[str]) -> dict[str, str | None]:
        """Digests of many files at once (None for a file that cannot be read).

        The common case — nothing changed — is one ``stat`` and one dictionary lookup per file, under a
        single lock acquisition; only changed files are hashed.
        """
        found: dict[str, str | None] = {}
        changed: list[str] = []
        with self._lock:
            for path in paths:
                try:
                    stat = os.stat(path)
                except OSError:
                    found[path] = None
                    continue
                known = self._new.get(path) or self._known.get(path)
                if known is not None and known[:4] == (
                    stat.st_size,
                    stat.st_mtime_ns,
                    stat.st_ctime_ns,
                    stat.st_ino,
                ):
                    found[path] = known[4]
                else:
                    changed.append(path)
        for path in changed:
            try:
                found[path] = self.digest(path)
            except OSError:
                found[path] = None
        return found

    def flush(self) -> None:
        """Write new digests to disk (the cache stays open)."""
        with self._lock:
            if self._new:
                with self._db:
                    self._db.executemany(
                        "INSERT OR REPLACE INTO file_hash VALUES (?, ?, ?, ?, ?, ?)",
                        [(p, *v) for p, v in self._new.items()],
                    )
                self._known.update(self._new)
                self._new.clear()

    def close(self) -> None:
        self.flush()
        with self._lock:
            self._db.close()

    def __enter__(self) -> HashCache:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
