"""Framing for the session handshake's response channel: 4-byte big-endian length, then UTF-8 JSON.

The channel crosses the untrusted host, so every frame is parsed as hostile input: bounded size, JSON
objects only, and every failure is a :class:`HandshakeError` naming what was wrong.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct

from teelab.errors import TeelabError

MAX_FRAME = 1 << 20  # evidence is a few KB; nothing legitimate comes near 1 MiB
_LENGTH = struct.Struct(">I")


class HandshakeError(TeelabError):
    """A handshake message was malformed, out of order, or the peer went away."""


def encode_frame(message: dict[str, object]) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME:
        raise HandshakeError(f"handshake message of {len(body)} bytes exceeds the {MAX_FRAME}-byte limit")
    return _LENGTH.pack(len(body)) + body


def decode_body(body: bytes) -> dict[str, object]:
    try:
        message = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise HandshakeError(f"handshake message is not JSON: {error}") from None
    if not isinstance(message, dict):
        raise HandshakeError("handshake message is not a JSON object")
    return message


def _length(header: bytes) -> int:
    length: int = _LENGTH.unpack(header)[0]
    if length > MAX_FRAME:
        raise HandshakeError(f"handshake message announces {length} bytes, over the {MAX_FRAME}-byte limit")
    return length


async def read_frame(reader: asyncio.StreamReader) -> dict[str, object]:
    try:
        body = await reader.readexactly(_length(await reader.readexactly(_LENGTH.size)))
    except asyncio.IncompleteReadError:
        raise HandshakeError("the TEE closed the handshake channel") from None
    return decode_body(body)


def recv_frame(sock: socket.socket) -> dict[str, object]:
    def exactly(n: int) -> bytes:
        chunks = bytearray()
        while len(chunks) < n:
            chunk = sock.recv(n - len(chunks))
            if not chunk:
                raise HandshakeError("the gateway closed the handshake channel")
            chunks.extend(chunk)
        return bytes(chunks)

    return decode_body(exactly(_length(exactly(_LENGTH.size))))


def send_frame(sock: socket.socket, message: dict[str, object]) -> None:
    sock.sendall(encode_frame(message))
