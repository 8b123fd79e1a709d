"""What the two DER readers share: their error type and OBJECT IDENTIFIER decoding.

The readers themselves stay apart on purpose: ``dcap.der`` reads Intel's SGX extension strictly (minimal
lengths, the exact subset Intel writes, because those bytes decide TCB status), ``snp.der`` reads whole AMD
certificates, whose encodings it must accept as AMD issued them.
"""

from __future__ import annotations

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
