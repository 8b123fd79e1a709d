"""The one DER reader of the gateway: for the Intel SGX extension of PCK certificates and the parts of AMD's
certificates and CRLs that SEV-SNP verification reads by hand.

``cryptography`` hands those extensions over as opaque bytes, and the SEV-SNP certificate fallback must walk a
certificate without ``cryptography``'s X.509 loader, so this reads exactly the DER subset X.509 uses: definite,
minimal lengths and low tag numbers. Anything else is refused rather than guessed at, because these bytes
decide TCB status. Every element keeps its byte span, because a signature covers the *encoded* TBS bytes,
never a re-encoding. Every failure is a :class:`DerError`, and every size is bounded, so hostile input costs
time linear in its length.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from teelab.errors import TeelabError

# Bounds on an OBJECT IDENTIFIER. Real ones are a dozen arcs and a few dozen bytes; the largest legitimate
# arc is a 128-bit UUID (2.25.<uuid>, 19 bytes of base-128). Without bounds, a hostile certificate's 256 KB OID
# costs quadratic time (every arc byte shifts a growing integer) and its decimal text cannot even be printed.
MAX_OID_BYTES = 1024
MAX_OID_ARCS = 128
MAX_ARC_BYTES = 20


class DerError(TeelabError):
    """Malformed DER; callers turn it into a VerificationError naming what they were reading.

    A project error, not a ``ValueError``: a parser of untrusted bytes fails only with teelab's own errors.
    """


def decode_oid(value: bytes) -> str:
    """The dotted form of an OBJECT IDENTIFIER's content; non-minimal, truncated or oversized ones are refused.

    Linear in ``len(value)``, which is bounded by :data:`MAX_OID_BYTES` before any arithmetic.
    """
    if not value:
        raise DerError("empty OBJECT IDENTIFIER")
    if len(value) > MAX_OID_BYTES:
        raise DerError(f"OBJECT IDENTIFIER of {len(value)} bytes (limit {MAX_OID_BYTES})")
    if value[-1] & 0x80:
        raise DerError("truncated OBJECT IDENTIFIER")
    arcs: list[int] = []
    current = 0
    size = 0
    for byte in value:
        if size == 0 and byte == 0x80:
            raise DerError("OBJECT IDENTIFIER arc with a leading 0x80 (not DER)")
        size += 1
        if size > MAX_ARC_BYTES:
            raise DerError(f"OBJECT IDENTIFIER arc longer than {MAX_ARC_BYTES} bytes")
        current = (current << 7) | (byte & 0x7F)
        if not byte & 0x80:
            if len(arcs) + 2 > MAX_OID_ARCS:  # the first subidentifier holds two arcs
                raise DerError(f"OBJECT IDENTIFIER of more than {MAX_OID_ARCS} arcs")
            arcs.append(current)
            current = 0
            size = 0
    first = arcs[0]
    head = [0, first] if first < 40 else [1, first - 40] if first < 80 else [2, first - 80]
    return ".".join(str(arc) for arc in head + arcs[1:])


BOOLEAN = 0x01
INTEGER = 0x02
BIT_STRING = 0x03
OCTET_STRING = 0x04
NULL = 0x05
OID = 0x06
ENUMERATED = 0x0A
UTF8_STRING = 0x0C
PRINTABLE_STRING = 0x13
IA5_STRING = 0x16
UTC_TIME = 0x17
GENERALIZED_TIME = 0x18
SEQUENCE = 0x30
SET = 0x31

# Four length bytes allow 4 GiB, far beyond any certificate; longer forms only appear in hostile input.
_MAX_LENGTH_BYTES = 4
# Certificates nest about six levels deep and hold a few dozen elements per level; a bound keeps hostile
# input from costing anything.
_MAX_CHILDREN = 4096


def context(number: int) -> int:
    """Tag of a constructed, context-specific ``[number]`` (EXPLICIT tagging, as X.509 uses)."""
    return 0xA0 | number


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
        if buf[content] == 0:
            raise DerError(f"length at offset {pos} has leading zero bytes (not DER)")
        length = int.from_bytes(buf[content : content + count], "big")
        if length < 0x80:
            raise DerError(f"long-form length for a short value at offset {pos} (not DER)")
        content += count
    end = content + length
    if end > end_limit:
        raise DerError(f"element at offset {pos} claims {length} bytes but only {end_limit - content} remain")
    return Element(buf, tag, pos, content, end)


def read_children(buf: bytes, start: int, end: int) -> list[Element]:
    """Every element of ``buf[start:end]``, which they must fill exactly."""
    items: list[Element] = []
    pos = start
    while pos < end:
        if len(items) >= _MAX_CHILDREN:
            raise DerError("too many elements")
        item = read(buf, pos, end)
        items.append(item)
        pos = item.end
    return items


def read_all(buf: bytes) -> list[Element]:
    """Every element of ``buf``, which they must fill exactly."""
    return read_children(buf, 0, len(buf))


def read_single(buf: bytes, tag: int, what: str) -> Element:
    """The one element that fills ``buf`` exactly; it must carry ``tag``."""
    item = read(buf)
    if item.end != len(buf):
        raise DerError(f"{what}: {len(buf) - item.end} bytes after the element")
    return item.expect(tag, what)


def decode_integer(value: bytes, what: str) -> int:
    """A signed INTEGER's content, minimally encoded as DER requires."""
    if not value:
        raise DerError(f"{what}: empty INTEGER")
    if len(value) > 1 and ((value[0] == 0x00 and value[1] < 0x80) or (value[0] == 0xFF and value[1] >= 0x80)):
        raise DerError(f"{what}: INTEGER not minimally encoded (not DER)")
    return int.from_bytes(value, "big", signed=True)


def decode_unsigned(value: bytes, what: str, *, max_bytes: int = 8) -> int:
    """A non-negative INTEGER's content.

    A redundant leading zero byte is accepted: the value is unambiguous, and refusing it would reject an AMD
    certificate over an encoding detail rather than over what it says.
    """
    if not value:
        raise DerError(f"{what}: empty INTEGER")
    if value[0] & 0x80:
        raise DerError(f"{what}: negative INTEGER")
    if len(value) > max_bytes + 1:
        raise DerError(f"{what}: INTEGER of {len(value)} bytes is out of range")
    return int.from_bytes(value, "big")


def decode_boolean(value: bytes, what: str) -> bool:
    if value == b"\x00":
        return False
    if value == b"\xff":
        return True
    raise DerError(f"{what}: BOOLEAN must be one byte 0x00 or 0xff in DER")


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
