"""The acceptance report: every check with its outcome, detail and timing, as JSON and as readable text."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TextIO

Outcome = Literal["pass", "fail", "not checked"]
REPORT_JSON = "acceptance.json"
REPORT_TEXT = "acceptance.txt"


class CheckFailed(Exception):
    """A check's own failure: its message is the report's detail."""


@dataclass
class CheckRecord:
    name: str
    outcome: Outcome
    seconds: float
    detail: str

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "outcome": self.outcome,
            "seconds": round(self.seconds, 3),
            "detail": self.detail,
        }


@dataclass
class AcceptanceReport:
    backend: str
    started_at: str
    checks: list[CheckRecord] = field(default_factory=list)
    facts: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.outcome != "fail" for c in self.checks)

    def to_json(self) -> dict[str, object]:
        return {
            "format": "teelab-acceptance/v1",
            "backend": self.backend,
            "started_at": self.started_at,
            "ok": self.ok,
            "host": {
                "kernel": platform.release(),
                "machine": platform.machine(),
                "python": platform.python_version(),
            },
            "facts": self.facts,
            "checks": [c.to_json() for c in self.checks],
        }

    def summary(self) -> str:
        lines = [f"teelab acceptance run on backend {self.backend} ({self.started_at})", ""]
        width = max((len(c.name) for c in self.checks), default=10)
        for check in self.checks:
            lines.append(
                f"  {check.outcome:<11} {check.name:<{width}}  {check.seconds:7.2f}s  {check.detail}"
            )
        lines.append("")
        for key, value in self.facts.items():
            lines.append(f"  {key}: {value}")
        lines.append("")
        lines.append("result: " + ("PASS" if self.ok else "FAIL"))
        return "\n".join(lines) + "\n"

    def write(self, folder: Path) -> tuple[Path, Path]:
        folder.mkdir(parents=True, exist_ok=True)
        json_path, text_path = folder / REPORT_JSON, folder / REPORT_TEXT
        json_path.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        text_path.write_text(self.summary())
        return json_path, text_path


class Recorder:
    """Runs checks in order, timing each, and shows progress on ``stream``."""

    def __init__(self, report: AcceptanceReport, stream: TextIO, total: int) -> None:
        self.report, self.stream, self.total = report, stream, total
        self.failed = False

    def run(
        self, name: str, body: Callable[[Callable[[str], None]], None], *, needs_previous: bool = True
    ) -> bool:
        """Run and time ``body(note)``; it passes unless it raises (``note(text)`` adds to its detail). After a
        failure, checks that need the earlier ones are recorded as not checked. True when it passed."""
        if self.failed and needs_previous:
            self.skip(name, "an earlier check failed")
            return False
        self.stream.write(f"[{len(self.report.checks) + 1}/{self.total}] {name} … ")
        self.stream.flush()
        detail: list[str] = []
        start = time.monotonic()
        try:
            body(detail.append)
        except Exception as error:  # every failure becomes the report's detail; nothing is hidden
            self.failed = True
            message = str(error) or type(error).__name__
            self._finish(
                CheckRecord(name, "fail", time.monotonic() - start, f"{type(error).__name__}: {message}")
            )
            return False
        self._finish(CheckRecord(name, "pass", time.monotonic() - start, "; ".join(detail)))
        return True

    def skip(self, name: str, why: str) -> None:
        self.stream.write(f"[{len(self.report.checks) + 1}/{self.total}] {name} … ")
        self._finish(CheckRecord(name, "not checked", 0.0, why))

    def _finish(self, record: CheckRecord) -> None:
        self.report.checks.append(record)
        self.stream.write(f"{record.outcome} ({record.seconds:.1f}s)\n")
        self.stream.flush()
