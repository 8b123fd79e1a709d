"""The one strict PEM splitter of the gateway (Intel PCK chains and collateral, AMD certificates and CRLs).

``cryptography.x509.load_pem_x509_certificates`` silently skips a damaged PEM block, so a chain with a broken
END line or a corrupted byte loads as a shorter chain. Here every BEGIN marker must open a complete block whose
base64 decodes, or the whole text is refused with :class:`PemError`; callers turn that into a
VerificationError naming what they were reading.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from teelab.errors import TeelabError

_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)
_BEGIN = b"-----BEGIN "
# What a block holds, in words, for messages.
_KINDS = {"CERTIFICATE": "certificate", "X509 CRL": "CRL"}


class PemError(TeelabError):
    """PEM text that is damaged: a block without its END line, a block that is not base64, stray bytes."""


@dataclass(frozen=True)
class PemBlock:
    label: str
    der: bytes
    # The block's span in the text, so a caller can cut blocks out (e.g. CRLs beside certificates).
    start: int
    end: int


def pem_blocks(
    text: bytes, *, what: str, only: str | None = None, strict_layout: bool = True
) -> list[PemBlock]:
    """The blocks of ``text`` in order (with label ``only``, when given), their base64 decoded.

    Every BEGIN marker must open a complete block, whatever its label. ``strict_layout`` also refuses bytes
    between or around the blocks (trailing NULs aside: quotes pad their PEM chain with them); without it, text
    beside the blocks (e.g. ``openssl x509 -text`` output) is ignored.
    """
    text = text.rstrip(b"\0")
    found = list(_BLOCK.finditer(text))
    markers = text.count(_BEGIN)
    if markers != len(found):
        raise PemError(
            f"{what} has {markers} PEM BEGIN markers but only {len(found)} complete blocks (a block is damaged, "
            "or not closed by a matching END line)"
        )
    if strict_layout:
        _check_layout(text, found, what)
    blocks: list[PemBlock] = []
    for index, match in enumerate(found, 1):
        label = match.group(1).decode("ascii")
        if only is not None and label != only:
            continue
        try:
            der = base64.b64decode(b"".join(match.group(2).split()), validate=True)
        except (binascii.Error, ValueError):
            kind = _KINDS.get(label, label)
            raise PemError(f"{what}: a PEM {kind} block is not valid base64 (block {index})") from None
        blocks.append(PemBlock(label, der, match.start(), match.end()))
    return blocks


def _check_layout(text: bytes, found: list[re.Match[bytes]], what: str) -> None:
    covered = 0
    for index, match in enumerate(found, 1):
        if text[covered : match.start()].strip():
            raise PemError(f"{what} has stray bytes before PEM block {index}")
        covered = match.end()
    if text[covered:].strip():
        raise PemError(f"{what} has stray bytes after its last PEM block")


def without_blocks(text: bytes, blocks: list[PemBlock]) -> bytes:
    """``text`` with ``blocks`` (found in it by :func:`pem_blocks`) cut out."""
    pieces: list[bytes] = []
    covered = 0
    for block in sorted(blocks, key=lambda b: b.start):
        pieces.append(text[covered : block.start])
        covered = block.end
    pieces.append(text[covered:])
    return b"".join(pieces)
