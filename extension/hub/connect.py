"""``teelab hub connect``: a loopback proxy that reaches the hub only over connections to the verified key.

The browser talks plain HTTP to ``127.0.0.1:PORT``; for each of its connections this opens a new TLS
connection to the hub and, before a single byte of the browser's goes upstream, compares the key the hub
presents (SPKI-SHA256, constant time) with the one ``teelab hub verify`` pinned. A different key — a swapped
front door, a man in the middle with a certificate of its own, even one a public CA issued — gets no byte: the
browser's connection is answered ``502`` with the reason and closed. The first connection is made at start, so
a mismatch also stops the command (exit 1) before the browser is pointed anywhere.

The loopback hop is plaintext on the user's own machine; other local users can connect to it too (as to any
local port), which is why it listens on 127.0.0.1 only and the hub still asks each browser to sign in.
"""

from __future__ import annotations

import asyncio
import hmac
import ssl
import sys
from collections.abc import Callable

from teelab.errors import TeelabError
from teelab.extension.hub.front_door_protocol import FrontDoorError, spki_sha256
from teelab.extension.hub.verify_channel import HubAddress, client_context

PIPE_CHUNK = 64 << 10
CONNECT_SECONDS = 30.0


class KeyMismatch(FrontDoorError):
    """The hub presented a TLS key other than the pinned, verified one."""


async def open_pinned(
    address: HubAddress, pinned: bytes, context: ssl.SSLContext
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS connection to ``address`` whose key is ``pinned``; a KeyMismatch (connection closed) otherwise."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(address.host, address.port, ssl=context), CONNECT_SECONDS
        )
    except (OSError, ssl.SSLError, TimeoutError) as error:
        raise FrontDoorError(f"cannot open TLS to {address.origin}: {error}") from None
    ssl_object = writer.get_extra_info("ssl_object")
    certificate = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    seen = spki_sha256(certificate) if certificate else b""
    if not hmac.compare_digest(seen, pinned):
        writer.close()
        raise KeyMismatch(
            f"{address.origin} presented TLS key {seen.hex()[:16]}…, not the verified {pinned.hex()[:16]}…; "
            "refusing to connect",
            hint="run teelab hub verify again: if the front door restarted its new key is checked and pinned "
            "there (--update-pins)",
        )
    return reader, writer


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while chunk := await source.read(PIPE_CHUNK):
            sink.write(chunk)
            await sink.drain()
        if sink.can_write_eof():
            sink.write_eof()  # half-close: the other direction may still carry the answer
        else:
            sink.close()  # TLS has no half-close; closing ends the other direction's pipe too
    except (ConnectionError, ssl.SSLError, OSError):
        sink.close()


class PinnedProxy:
    def __init__(
        self, address: HubAddress, pinned: bytes, *, log: Callable[[str], None] | None = None
    ) -> None:
        self.address = address
        self.pinned = pinned
        self.context = client_context()
        self.log = log or (lambda message: print(message, file=sys.stderr))
        self.refused = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await open_pinned(self.address, self.pinned, self.context)
        except FrontDoorError as error:
            self.refused += 1
            self.log(f"teelab hub connect: {error.message}")
            body = f"teelab hub connect refused: {error.message}\n".encode()
            writer.write(
                b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\n"
                + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
            writer.close()
            return
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            up_writer.close()
            writer.close()

    async def start(self, port: int, host: str = "127.0.0.1") -> asyncio.Server:
        """Check the hub's key once (a KeyMismatch stops here), then listen on ``host:port``."""
        _, writer = await open_pinned(self.address, self.pinned, self.context)
        writer.close()
        return await asyncio.start_server(self.handle, host, port)


def serve(address: HubAddress, pinned: bytes, port: int, *, host: str = "127.0.0.1") -> int:
    """Run until interrupted; exit status 1 (with the reason) when the hub's key is not the pinned one."""

    async def main() -> None:
        proxy = PinnedProxy(address, pinned)
        server = await proxy.start(port, host)
        bound = server.sockets[0].getsockname()[1]
        print(
            f"teelab hub connect: open http://{host}:{bound}/ — only {address.origin} with key "
            f"{pinned.hex()[:16]}… is reached",
            flush=True,
        )
        async with server:
            await server.serve_forever()

    try:
        asyncio.run(main())
    except TeelabError:
        raise
    except KeyboardInterrupt:
        return 0
    return 0
