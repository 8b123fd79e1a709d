"""The error contract of the public functions: hostile input yields VerificationError and nothing else.

Parsers raise VerificationError on purpose for everything they recognise as malformed. Should some input
still reach an unexpected exception, it is reported as a VerificationError with check ``internal_error`` —
never as a crash of the gateway — and the fuzz tests assert that this check never occurs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from teelab.errors import VerificationError

INTERNAL = "internal_error"
P = ParamSpec("P")
R = TypeVar("R")


def internal_error(exc: Exception, doing: str) -> VerificationError:
    return VerificationError(
        INTERNAL,
        f"unexpected {type(exc).__name__} while {doing}: {exc}; this is a teelab bug, please report it",
        hint="the input was rejected to be safe",
    )


def verification_errors_only(doing: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return fn(*args, **kwargs)
            except VerificationError:
                raise
            except Exception as exc:
                raise internal_error(exc, doing) from exc

        return guarded

    return decorate
