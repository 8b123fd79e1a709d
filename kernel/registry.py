"""Attestation results of the kernels this server started, by kernel id.

The provisioner records every handshake's outcome here — accepted or not — and the server extension serves
it. A restart replaces the record with the fresh handshake's; a kernel's record goes when the kernel does.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime

from teelab.gateway.result import AttestationResult
from teelab.timeutil import isoformat, utcnow


@dataclass(frozen=True)
class SessionRecord:
    kernel_id: str
    kernel_name: str
    backend: str
    started_at: datetime
    result: AttestationResult | None  # None when the handshake failed before evidence could be judged
    failure: tuple[str, str] | None  # (check, detail) when the kernel was refused or failed to start

    @property
    def ok(self) -> bool:
        return self.failure is None and self.result is not None and self.result.ok

    def to_json(self) -> dict[str, object]:
        return {
            "kernel_id": self.kernel_id,
            "kernel_name": self.kernel_name,
            "backend": self.backend,
            "started_at": isoformat(self.started_at),
            "ok": self.ok,
            "failure": {"check": self.failure[0], "detail": self.failure[1]} if self.failure else None,
            "attestation": self.result.to_json() if self.result is not None else None,
        }


class AttestationRegistry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, SessionRecord] = {}

    def record(
        self,
        kernel_id: str,
        *,
        kernel_name: str,
        backend: str,
        result: AttestationResult | None,
        failure: tuple[str, str] | None = None,
    ) -> SessionRecord:
        record = SessionRecord(kernel_id, kernel_name, backend, utcnow(), result, failure)
        with self._lock:
            self._records[kernel_id] = record
        return record

    def get(self, kernel_id: str) -> SessionRecord | None:
        with self._lock:
            return self._records.get(kernel_id)

    def forget(self, kernel_id: str) -> None:
        with self._lock:
            self._records.pop(kernel_id, None)

    def all(self) -> list[SessionRecord]:
        with self._lock:
            return list(self._records.values())


REGISTRY = AttestationRegistry()
