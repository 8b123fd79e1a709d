"""Strict reading of Intel's signed JSON documents (TCB info, enclave identity).

Intel signs the exact bytes of the ``tcbInfo`` / ``enclaveIdentity`` value as served, so the signed span is
sliced out of the original text and never re-serialised. Duplicate keys and non-finite numbers are refused:
a document must mean one thing to every reader.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NoReturn


class DocError(ValueError):
    """A collateral document is malformed; the caller names the document in its VerificationError."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DocError(f"key {key!r} appears twice")
        out[key] = value
    return out


def _no_constants(name: str) -> NoReturn:
    raise DocError(f"{name} is not valid JSON")


# The C string scanner json itself uses; typeshed does not declare it.
scanstring: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
_WS = re.compile(r"[ \t\n\r]*")


def _ws(text: str, pos: int) -> int:
    """The position after any JSON whitespace at ``pos``."""
    match = _WS.match(text, pos)
    return match.end() if match else pos


def decode_text(data: bytes | str) -> str:
    if isinstance(data, str):
        return data
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DocError(f"expected text or bytes, got {type(data).__name__}")
    data = bytes(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DocError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return text


def loads(text: str) -> Any:
    try:
        value, end = _DECODER.raw_decode(text, _ws(text, 0))
    except DocError:
        raise
    except (ValueError, RecursionError) as exc:
        raise DocError(f"not valid JSON ({exc})") from None
    if _ws(text, end) != len(text):
        raise DocError("extra text after the JSON value")
    return value


def members_with_spans(text: str) -> dict[str, tuple[Any, int, int]]:
    """Members of the top-level object with the character span of each value in ``text``."""

    def ws(pos: int) -> int:
        return _ws(text, pos)

    try:
        pos = ws(0)
        if text[pos : pos + 1] != "{":
            raise DocError("the document is not a JSON object")
        out: dict[str, tuple[Any, int, int]] = {}
        pos = ws(pos + 1)
        if text[pos : pos + 1] == "}":
            pos += 1
        else:
            while True:
                if text[pos : pos + 1] != '"':
                    raise DocError(f"expected a key at character {pos}")
                key, pos = scanstring(text, pos + 1)
                pos = ws(pos)
                if text[pos : pos + 1] != ":":
                    raise DocError(f"expected ':' at character {pos}")
                start = ws(pos + 1)
                value, end = _DECODER.raw_decode(text, start)
                if key in out:
                    raise DocError(f"key {key!r} appears twice")
                out[key] = (value, start, end)
                pos = ws(end)
                sep = text[pos : pos + 1]
                pos = ws(pos + 1)
                if sep == "}":
                    break
                if sep != ",":
                    raise DocError(f"expected ',' or '}}' at character {pos}")
        if ws(pos) != len(text):
            raise DocError("extra text after the JSON object")
        return out
    except DocError:
        raise
    except (ValueError, RecursionError) as exc:
        raise DocError(f"not valid JSON ({exc})") from None


# Typed accessors: each raises DocError naming the field, so a person can find the bad value.


def obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DocError(f"{what} must be a JSON object")
    return value


def field(doc: dict[str, Any], key: str, what: str) -> Any:
    if key not in doc:
        raise DocError(f"{what} has no {key!r}")
    return doc[key]


def get_obj(doc: dict[str, Any], key: str, what: str) -> dict[str, Any]:
    return obj(field(doc, key, what), f"{what}.{key}")


def get_list(doc: dict[str, Any], key: str, what: str) -> list[Any]:
    value = field(doc, key, what)
    if not isinstance(value, list):
        raise DocError(f"{what}.{key} must be a list")
    return value


def get_str(doc: dict[str, Any], key: str, what: str) -> str:
    value = field(doc, key, what)
    if not isinstance(value, str):
        raise DocError(f"{what}.{key} must be a string")
    return value


def get_int(doc: dict[str, Any], key: str, what: str, upper: int = 2**32 - 1) -> int:
    value = field(doc, key, what)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DocError(f"{what}.{key} must be an integer")
    if not 0 <= value <= upper:
        raise DocError(f"{what}.{key} = {value} is outside 0..{upper}")
    return value


def get_hex(doc: dict[str, Any], key: str, what: str, size: int) -> bytes:
    value = get_str(doc, key, what)
    if len(value) != 2 * size:
        raise DocError(f"{what}.{key} must be {size} bytes of hex, got {len(value)} characters")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise DocError(f"{what}.{key} is not hex") from None


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})")


def parse_date(value: str, what: str) -> datetime:
    if not _DATE.fullmatch(value):
        raise DocError(f"{what} = {value!r} is not an ISO-8601 UTC time like 2025-07-01T00:00:00Z")
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        raise DocError(f"{what} = {value!r} is not a valid time") from None


def get_date(doc: dict[str, Any], key: str, what: str) -> datetime:
    return parse_date(get_str(doc, key, what), f"{what}.{key}")


def get_advisories(doc: dict[str, Any], what: str) -> tuple[str, ...]:
    if "advisoryIDs" not in doc:
        return ()
    ids = get_list(doc, "advisoryIDs", what)
    if not all(isinstance(i, str) for i in ids):
        raise DocError(f"{what}.advisoryIDs must be a list of strings")
    return tuple(ids)
