"""configfs-tsm reports (Linux ≥ 6.7, ``Documentation/ABI/testing/configfs-tsm``).

One report = one fresh entry: ``mkdir /sys/kernel/config/tsm/report/<unique>``, read ``provider`` and
``generation``, write exactly 64 bytes to ``inblob``, read ``outblob`` (and ``auxblob``: the SNP certificate
table when the host supplies one), read ``generation`` again, ``rmdir``. The kernel bumps ``generation`` on
every write, so anything but start + 1 means another writer touched the entry between our write and our read
and the outblob may answer *their* inblob: the report is thrown away and asked for again on a fresh entry.

File access goes through :class:`TsmFiles` so a test can stand in for configfs, whose entries fill themselves
on ``mkdir`` and answer writes — behaviour a plain folder cannot imitate.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from teelab.enclave_runtime.backend import REPORT_DATA_SIZE
from teelab.errors import EvidenceError

REPORT_DIR = "/sys/kernel/config/tsm/report"
PROVIDERS = ("sev_guest", "tdx_guest")
ATTEMPTS = 3
_MAX_BLOB = 1 << 20


class TsmFiles(Protocol):
    def mkdir(self, path: Path) -> None: ...
    def rmdir(self, path: Path) -> None: ...
    def read(self, path: Path) -> bytes: ...
    def write(self, path: Path, data: bytes) -> int: ...
    def exists(self, path: Path) -> bool: ...


class OsFiles:
    """configfs through ordinary system calls, unbuffered: one write() is one attribute store."""

    def mkdir(self, path: Path) -> None:
        os.mkdir(path)

    def rmdir(self, path: Path) -> None:
        os.rmdir(path)

    def read(self, path: Path) -> bytes:
        with open(path, "rb", buffering=0) as handle:
            return handle.read(_MAX_BLOB)

    def write(self, path: Path, data: bytes) -> int:
        with open(path, "wb", buffering=0) as handle:
            return handle.write(data) or 0

    def exists(self, path: Path) -> bool:
        return path.exists()


@dataclass(frozen=True)
class TsmReport:
    provider: str
    outblob: bytes
    auxblob: bytes | None


class ConfigfsTsm:
    def __init__(
        self,
        root: Path = Path("/"),
        *,
        files: TsmFiles | None = None,
        entry_name: Callable[[], str] = lambda: f"teelab-{uuid.uuid4().hex}",
        attempts: int = ATTEMPTS,
    ) -> None:
        self.base = root / REPORT_DIR.lstrip("/")
        self.files = files or OsFiles()
        self.entry_name = entry_name
        self.attempts = attempts

    def available(self) -> bool:
        return self.files.exists(self.base)

    def _text(self, path: Path) -> str:
        return self.files.read(path).decode("ascii", "replace").strip()

    def report(self, inblob: bytes, *, provider: str | None = None) -> TsmReport:
        """A report over ``inblob`` (exactly 64 bytes), from ``provider`` if one is demanded."""
        # Both providers refuse any other length with EINVAL; refuse it here, before anything is created.
        if len(inblob) != REPORT_DATA_SIZE:
            raise EvidenceError(f"configfs-tsm takes exactly 64 bytes of report data, not {len(inblob)}")
        for _ in range(self.attempts):
            found = self._once(inblob, provider)
            if found is not None:
                return found
        raise EvidenceError(
            f"configfs-tsm: another writer changed the report entry during each of {self.attempts} attempts",
            hint="some other process is writing to this machine's report entries; retry later",
        )

    def _once(self, inblob: bytes, demanded: str | None) -> TsmReport | None:
        entry = self.base / self.entry_name()
        try:
            self.files.mkdir(entry)
        except PermissionError:
            raise EvidenceError(
                f"cannot create {entry}: configfs-tsm reports need root (or write access to {self.base})"
            ) from None
        except OSError as error:
            raise EvidenceError(f"cannot create the configfs-tsm entry {entry}: {error.strerror}") from None
        try:
            provider = self._text(entry / "provider")
            if demanded is not None and provider != demanded:
                raise EvidenceError(f"configfs-tsm's provider is {provider!r}, not the expected {demanded!r}")
            if provider not in PROVIDERS:
                raise EvidenceError(
                    f"configfs-tsm's provider {provider!r} is not one teelab knows ({', '.join(PROVIDERS)})"
                )
            start = int(self._text(entry / "generation"))
            written = self.files.write(entry / "inblob", inblob)
            if written != REPORT_DATA_SIZE:
                raise EvidenceError(f"configfs-tsm took {written} of the 64 report-data bytes")
            outblob = self.files.read(entry / "outblob")
            auxblob = None
            if provider == "sev_guest" and self.files.exists(entry / "auxblob"):
                auxblob = self.files.read(entry / "auxblob") or None
            end = int(self._text(entry / "generation"))
        except OSError as error:
            detail = error.strerror or str(error)
            if error.errno == errno.EBUSY:
                detail += " (the quote service is busy)"
            raise EvidenceError(f"configfs-tsm report failed: {detail}") from None
        except ValueError:
            raise EvidenceError(f"configfs-tsm's generation in {entry} is not a number") from None
        finally:
            with contextlib.suppress(OSError):
                self.files.rmdir(entry)
        if end != start + 1:
            return None
        if not outblob:
            raise EvidenceError("configfs-tsm returned an empty report")
        return TsmReport(provider, outblob, auxblob)
