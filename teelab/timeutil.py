"""Time is an input: verification, collateral and grants all take the time they are judged at."""

from __future__ import annotations

from datetime import UTC, datetime

from teelab.errors import UsageError


def utcnow() -> datetime:
    return datetime.now(UTC)


def parse_time(text: str) -> datetime:
    """Parse an ISO-8601 time; a time without a zone is taken as UTC."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"not an ISO-8601 time: {text!r}", hint="write it like 2025-07-01T00:00:00Z"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def isoformat(value: datetime) -> str:
    """UTC, seconds precision, with a Z — the form Intel's collateral uses."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
