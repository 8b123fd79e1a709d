"""The record of checks a verification made, in order, each with pass/fail and a reason.

Verifiers call :meth:`CheckLog.passed` for every check that holds and :meth:`CheckLog.fail` for the first
that does not; ``fail`` records the check and raises :class:`~teelab.errors.VerificationError`, so a caller
that catches it still holds every check made up to and including the failure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NoReturn

from teelab.errors import VerificationError


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "passed": self.passed, "detail": self.detail}


@dataclass
class CheckLog:
    checks: list[Check] = field(default_factory=list)

    def passed(self, name: str, detail: str) -> None:
        self.checks.append(Check(name, True, detail))

    def fail(self, name: str, detail: str, *, hint: str | None = None) -> NoReturn:
        self.checks.append(Check(name, False, detail))
        raise VerificationError(name, detail, hint=hint)

    def require(self, condition: bool, name: str, ok: str, failure: str) -> None:
        if condition:
            self.passed(name, ok)
        else:
            self.fail(name, failure)

    def note_failure(self, name: str, detail: str) -> None:
        """Record a failed check without stopping (a finding that policy, not cryptography, judges)."""
        self.checks.append(Check(name, False, detail))
