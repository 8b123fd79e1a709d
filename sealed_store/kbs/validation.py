"""Checks for every value that arrives from outside: names, principals, versions, digests, sizes.

Each check returns the value in its canonical form or raises ``KeyBrokerError("invalid_argument", ...)``
naming the field; nothing else escapes, whatever the input (``tests/sealed_store/kbs/test_fuzz.py``).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from teelab.errors import KeyBrokerError
from teelab.sealed_store.kbs.reasons import Reason, denied

DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# Hub user names are usually lower-case words or e-mail addresses; no spaces, colons or control characters.
USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")
GROUP_NAME = USER_NAME
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
MAX_VERSION = (1 << 31) - 1  # fits a signed 32-bit column in every database
EARLIEST = datetime(1970, 1, 2, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)


def invalid(field: str, problem: str) -> KeyBrokerError:
    return denied(Reason.INVALID_ARGUMENT, f"{field}: {problem}")


def _clip(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def dataset_name(value: object, field: str = "dataset") -> str:
    if not isinstance(value, str) or not DATASET_NAME.fullmatch(value):
        raise invalid(field, f"{_clip(value)} is not a dataset name ([A-Za-z0-9][A-Za-z0-9._-]{{0,127}})")
    return value


def user_name(value: object, field: str = "user") -> str:
    if not isinstance(value, str) or not USER_NAME.fullmatch(value):
        raise invalid(field, f"{_clip(value)} is not a user name ([A-Za-z0-9][A-Za-z0-9._@+-]{{0,127}})")
    return value


def group_name(value: object, field: str = "group") -> str:
    if not isinstance(value, str) or not GROUP_NAME.fullmatch(value):
        raise invalid(field, f"{_clip(value)} is not a group name ([A-Za-z0-9][A-Za-z0-9._@+-]{{0,127}})")
    return value


@dataclass(frozen=True)
class Principal:
    kind: str  # "user" or "group"
    name: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"

    @classmethod
    def user(cls, name: str) -> Principal:
        return cls("user", user_name(name))

    @classmethod
    def group(cls, name: str) -> Principal:
        return cls("group", group_name(name))


def principal(value: object, field: str = "principal") -> Principal:
    if isinstance(value, str):
        kind, sep, name = value.partition(":")
        if sep and kind == "user":
            return Principal("user", user_name(name, field))
        if sep and kind == "group":
            return Principal("group", group_name(name, field))
    raise invalid(field, f"{_clip(value)} is not a principal (user:<name> or group:<name>)")


def version(value: object, field: str = "version") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_VERSION:
        raise invalid(field, f"{_clip(value)} is not a version (an integer from 1 to {MAX_VERSION})")
    return value


def sha256_hex(value: object, field: str) -> str:
    if not isinstance(value, str) or not SHA256_HEX.fullmatch(value):
        raise invalid(field, f"{_clip(value)} is not a SHA-256 digest (64 lower-case hex digits)")
    return value


def exact_bytes(value: object, size: int, field: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != size:
        got = f"{len(value)} bytes" if isinstance(value, bytes) else type(value).__name__
        raise invalid(field, f"expected exactly {size} bytes, got {got}")
    return value


def bounded_bytes(value: object, limit: int, field: str, *, required: bool = True) -> bytes:
    if not isinstance(value, bytes):
        raise invalid(field, f"expected bytes, got {type(value).__name__}")
    if required and not value:
        raise invalid(field, "is required")
    if len(value) > limit:
        raise invalid(field, f"{len(value)} bytes is over the limit of {limit}")
    return value


def bounded_text(value: object, limit: int, field: str, *, required: bool = True) -> str:
    if not isinstance(value, str):
        raise invalid(field, f"expected text, got {type(value).__name__}")
    if required and not value:
        raise invalid(field, "is required")
    if len(value) > limit:
        raise invalid(field, f"{len(value)} characters is over the limit of {limit}")
    return value


def timestamp(value: datetime, field: str) -> datetime:
    """A time within the range every database and JWT library handles (1970-01-02 .. 9999-01-01)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    if not EARLIEST <= value <= LATEST:
        raise invalid(field, f"{value.isoformat()} is out of range")
    return value.astimezone(UTC)


def x25519_public_key(value: object, field: str = "enclave_key") -> bytes:
    """32 bytes that are a usable X25519 public key (not one of the low-order points that make every
    shared secret zero, which would make the released key readable by anyone)."""
    key = exact_bytes(value, 32, field)
    if not _usable_x25519(key):
        raise invalid(field, "is not a usable X25519 public key (a low-order point)")
    return key


@functools.lru_cache(maxsize=4096)  # a session presents the same key on every release
def _usable_x25519(key: bytes) -> bool:
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(key))
    except ValueError:
        return False
    return True
