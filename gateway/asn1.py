"""What the two DER readers share: their error type and OBJECT IDENTIFIER decoding.

The readers themselves stay apart on purpose: ``dcap.der`` reads Intel's SGX extension strictly (minimal
lengths, the exact subset Intel writes, because those bytes decide TCB status), ``snp.der`` reads whole AMD
certificates, whose encodings it must accept as AMD issued them.
"""

from __future__ import annotations


class DerError(ValueError):
    """Malformed DER; callers turn it into a VerificationError naming what they were reading."""


def decode_oid(value: bytes) -> str:
    """The dotted form of an OBJECT IDENTIFIER's content; non-minimal or truncated arcs are refused."""
    if not value:
        raise DerError("empty OBJECT IDENTIFIER")
    if value[-1] & 0x80:
        raise DerError("truncated OBJECT IDENTIFIER")
    arcs: list[int] = []
    current = 0
    fresh = True
    for byte in value:
        if fresh and byte == 0x80:
            raise DerError("OBJECT IDENTIFIER arc with a leading 0x80 (not DER)")
        current = (current << 7) | (byte & 0x7F)
        fresh = not byte & 0x80
        if fresh:
            arcs.append(current)
            current = 0
    first = arcs[0]
    head = [0, first] if first < 40 else [1, first - 40] if first < 80 else [2, first - 80]
    return ".".join(str(arc) for arc in head + arcs[1:])
