"""A strict DER reader for the few structures SEV-SNP verification reads by hand.

``cryptography`` hands AMD's VCEK/VLEK extensions over as opaque bytes, and the certificate fallback
(:mod:`teelab.gateway.snp.fallback`) must walk a certificate without ``cryptography``'s X.509 loader, so
this reads exactly the DER subset X.509 uses: definite lengths, low tag numbers. Every element keeps its
byte span because a signature covers the *encoded* TBS bytes, never a re-encoding of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from teelab.gateway.asn1 import DerError as DerError  # re-exported: callers use der.DerError
from teelab.gateway.asn1 import decode_oid as decode_oid  # re-exported: callers use der.decode_oid

BOOLEAN = 0x01
INTEGER = 0x02
BIT_STRING = 0x03
OCTET_STRING = 0x04
NULL = 0x05
OID = 0x06
UTF8_STRING = 0x0C
PRINTABLE_STRING = 0x13
IA5_STRING = 0x16
UTC_TIME = 0x17
GENERALIZED_TIME = 0x18
SEQUENCE = 0x30
SET = 0x31


def context(number: int) -> int:
    """Tag of a constructed, context-specific ``[number]`` (EXPLICIT tagging, as X.509 uses)."""
    return 0xA0 | number


# Four length bytes allow 4 GiB, far beyond any certificate; longer forms only appear in hostile input.
_MAX_LENGTH_BYTES = 4
# Certificates nest about six levels deep; a bound keeps hostile nesting from costing anything.
_MAX_CHILDREN = 4096


@dataclass(frozen=True, slots=True)
class Element:
    """One TLV inside ``buf``: the tag byte sits at ``start``, its content is ``buf[content:end]``."""

    buf: bytes
    tag: int
    start: int
    content: int
    end: int

    @property
    def value(self) -> bytes:
        return self.buf[self.content : self.end]

    @property
    def encoded(self) -> bytes:
        """The element exactly as it was encoded, header included."""
        return self.buf[self.start : self.end]

    def children(self) -> list[Element]:
        if not self.tag & 0x20:
            raise DerError(f"tag 0x{self.tag:02x} is primitive and has no children")
        return read_children(self.buf, self.content, self.end)

    def expect(self, tag: int, what: str) -> Element:
        if self.tag != tag:
            raise DerError(f"{what}: expected tag 0x{tag:02x}, found 0x{self.tag:02x}")
        return self


def read(buf: bytes, pos: int = 0, limit: int | None = None) -> Element:
    """The element starting at ``pos``; it must end at or before ``limit`` (default: end of ``buf``)."""
    end_limit = len(buf) if limit is None else limit
    if pos + 2 > end_limit:
        raise DerError(f"truncated element at offset {pos}")
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise DerError(f"multi-byte tag at offset {pos} is not used in X.509")
    first = buf[pos + 1]
    content = pos + 2
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise DerError(f"indefinite length at offset {pos} is not DER")
    else:
        count = first & 0x7F
        if count > _MAX_LENGTH_BYTES:
            raise DerError(f"length field of {count} bytes at offset {pos} is too long")
        if content + count > end_limit:
            raise DerError(f"truncated length field at offset {pos}")
        length = int.from_bytes(buf[content : content + count], "big")
        content += count
    end = content + length
    if end > end_limit:
        raise DerError(f"element at offset {pos} claims {length} bytes but only {end_limit - content} remain")
    return Element(buf, tag, pos, content, end)


def read_children(buf: bytes, start: int, end: int) -> list[Element]:
    items: list[Element] = []
    pos = start
    while pos < end:
        if len(items) >= _MAX_CHILDREN:
            raise DerError("too many elements")
        item = read(buf, pos, end)
        items.append(item)
        pos = item.end
    return items


def read_single(buf: bytes, tag: int, what: str) -> Element:
    """The one element that fills ``buf`` exactly; it must carry ``tag``."""
    item = read(buf)
    if item.end != len(buf):
        raise DerError(f"{what}: {len(buf) - item.end} bytes after the element")
    return item.expect(tag, what)


def decode_unsigned(value: bytes, what: str, *, max_bytes: int = 8) -> int:
    """A non-negative INTEGER's content.

    A redundant leading zero byte is accepted: the value is unambiguous, and refusing it would reject a
    certificate over an encoding detail rather than over what it says.
    """
    if not value:
        raise DerError(f"{what}: empty INTEGER")
    if value[0] & 0x80:
        raise DerError(f"{what}: negative INTEGER")
    if len(value) > max_bytes + 1:
        raise DerError(f"{what}: INTEGER of {len(value)} bytes is out of range")
    return int.from_bytes(value, "big")


def decode_text(item: Element, what: str) -> str:
    if item.tag not in (UTF8_STRING, PRINTABLE_STRING, IA5_STRING):
        raise DerError(f"{what}: expected a string, found tag 0x{item.tag:02x}")
    try:
        return item.value.decode("utf-8" if item.tag == UTF8_STRING else "ascii")
    except UnicodeDecodeError:
        raise DerError(f"{what}: not valid text") from None


def decode_time(item: Element, what: str) -> datetime:
    """UTCTime ``YYMMDDHHMMSSZ`` or GeneralizedTime ``YYYYMMDDHHMMSSZ``, the two forms RFC 5280 allows."""
    text = item.value
    if item.tag == UTC_TIME:
        digits, century_digits = 12, 2
    elif item.tag == GENERALIZED_TIME:
        digits, century_digits = 14, 4
    else:
        raise DerError(f"{what}: expected a time, found tag 0x{item.tag:02x}")
    if len(text) != digits + 1 or text[-1:] != b"Z" or not text[:-1].isdigit():
        raise DerError(f"{what}: time {text!r} is not in the RFC 5280 form")
    year = int(text[:century_digits])
    if century_digits == 2:
        year += 1900 if year >= 50 else 2000
    month, day, hour, minute, second = (int(text[i : i + 2]) for i in range(century_digits, digits, 2))
    try:
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        raise DerError(f"{what}: time {text!r} is not a valid date") from None
