"""A small, strict DER reader for the Intel SGX extension of PCK certificates.

``cryptography`` hands the extension over as opaque bytes (``UnrecognizedExtension``), and no other ASN.1
library is allowed here, so this reads exactly the DER subset Intel uses: definite lengths, low tag numbers,
minimal encodings. Anything else is refused rather than guessed at, because these bytes decide TCB status.
"""

from __future__ import annotations

from dataclasses import dataclass

from teelab.gateway.asn1 import DerError as DerError  # re-exported: callers use der.DerError
from teelab.gateway.asn1 import decode_oid as decode_oid  # re-exported: callers use der.decode_oid

BOOLEAN = 0x01
INTEGER = 0x02
OCTET_STRING = 0x04
OID = 0x06
ENUMERATED = 0x0A
SEQUENCE = 0x30

# Four length bytes allow 4 GiB, far beyond any certificate; longer forms are only seen in hostile input.
_MAX_LENGTH_BYTES = 4


@dataclass(frozen=True, slots=True)
class Tlv:
    tag: int
    value: bytes


def _read_one(data: bytes, pos: int) -> tuple[Tlv, int]:
    if pos + 2 > len(data):
        raise DerError(f"truncated element at offset {pos}")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise DerError(f"multi-byte tag at offset {pos} is not used by Intel")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise DerError("indefinite length is not DER")
    else:
        count = first & 0x7F
        if count > _MAX_LENGTH_BYTES:
            raise DerError(f"length field of {count} bytes is too long")
        if pos + count > len(data):
            raise DerError("truncated length field")
        raw = data[pos : pos + count]
        if raw[0] == 0:
            raise DerError("length has leading zero bytes (not DER)")
        length = int.from_bytes(raw, "big")
        if length < 0x80:
            raise DerError("long-form length for a short value (not DER)")
        pos += count
    end = pos + length
    if end > len(data):
        raise DerError(f"element at offset {pos} claims {length} bytes but only {len(data) - pos} remain")
    return Tlv(tag, data[pos:end]), end


def read_all(data: bytes) -> list[Tlv]:
    """Every element of ``data``, which they must fill exactly."""
    items: list[Tlv] = []
    pos = 0
    while pos < len(data):
        item, pos = _read_one(data, pos)
        items.append(item)
    return items


def read_single(data: bytes, tag: int) -> Tlv:
    """The one element that fills ``data``; it must carry ``tag``."""
    item, end = _read_one(data, 0)
    if end != len(data):
        raise DerError(f"{len(data) - end} bytes after the element")
    expect(item, tag)
    return item


def expect(item: Tlv, tag: int) -> None:
    if item.tag != tag:
        raise DerError(f"expected tag 0x{tag:02x}, found 0x{item.tag:02x}")


def decode_integer(value: bytes) -> int:
    if not value:
        raise DerError("empty INTEGER")
    if len(value) > 1 and ((value[0] == 0x00 and value[1] < 0x80) or (value[0] == 0xFF and value[1] >= 0x80)):
        raise DerError("INTEGER not minimally encoded (not DER)")
    return int.from_bytes(value, "big", signed=True)


def decode_boolean(value: bytes) -> bool:
    if value == b"\x00":
        return False
    if value == b"\xff":
        return True
    raise DerError("BOOLEAN must be one byte 0x00 or 0xff in DER")
