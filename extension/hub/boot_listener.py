"""A listening boot's door (a pod's, ``"listen": true``): hear every connection at once until one brings a
bundle the controller ``G_s`` signed.

Anyone on the pod network reaches the boot's port before, after and while the spawner does, so no connection
may hold the door: each gets the public hello and has a short deadline for its one frame; the number of open
connections is bounded, and when the bound is reached the peer address holding the most connections gives
one up (the spawner, with its single connection, is never the one turned away while a stranger holds two);
garbage, an unsigned ``refused`` and a bundle ``G_s`` did not sign close that connection only. The whole wait
is bounded too: with no signed bundle by the overall deadline the boot gives up, so a spawn the hub abandoned
leaves no orphan listening.

One thread, non-blocking sockets and a selector: no peer costs a thread, and every deadline is checked on
the same clock.
"""

from __future__ import annotations

import selectors
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from teelab.protocols.session import (
    MAX_FRAME,
    HandshakeError,
    Refused,
    SealedBundle,
    decode_body,
    decode_one_of,
)

_LENGTH = struct.Struct(">I")  # the session framing: a 4-byte big-endian length, then the JSON body
_ACCEPTS_PER_WAKE = 64  # a burst of connections is taken in one go, then the open ones are served again
_RECV_CHUNK = 64 * 1024


@dataclass(frozen=True)
class ListenLimits:
    """How long and how many: the defaults a pod's boot runs with (tests pass short ones)."""

    # The boot's whole wait for a signed bundle; the spawner's own deadline (handshake_timeout, 120 s by
    # default, counted from before the pod is scheduled) ends well inside it.
    overall: float = 300.0
    # From accept to the peer's complete first frame: the spawner reads the hello, appraises the evidence
    # (collateral fetches included) and seals the bundle in this time; a silent or dribbling peer is closed.
    first_frame: float = 60.0
    max_connections: int = 64  # each buffers at most one frame (MAX_FRAME): 64 MiB at the very worst
    max_per_peer: int = 8  # one address never holds more than this many


@dataclass
class ListenReport:
    """What the connections that were not the spawner's did: counts only (the host reads the boot's stderr,
    and a stranger's text is not worth relaying)."""

    garbage: int = 0  # not a frame, not JSON, oversized, another message type, closed before a frame
    refusals: int = 0  # an unsigned ``refused``: anyone can send one
    unsigned: int = 0  # a ``bundle`` G_s did not sign for this nonce and enclave key
    silent: int = 0  # no complete frame by the first-frame deadline
    turned_away: int = 0  # closed to keep the bounds (per peer, in all)

    def total(self) -> int:
        return self.garbage + self.refusals + self.unsigned + self.silent + self.turned_away

    def summary(self) -> str:
        return (
            f"{self.total()} connection(s) were not the spawner's (garbage {self.garbage}, unsigned refusals "
            f"{self.refusals}, bundles not signed by the controller {self.unsigned}, silent past the "
            f"first-frame deadline {self.silent}, turned away at the connection bounds {self.turned_away})"
        )


class NoSpawner(HandshakeError):
    """The overall deadline passed with no bundle the controller signed: the boot exits."""


@dataclass
class _Peer:
    channel: socket.socket
    address: str
    accepted: float
    outgoing: bytes  # what is left of the hello to send
    incoming: bytearray = field(default_factory=bytearray)


def _frame(buffer: bytearray) -> dict[str, object] | None:
    """The first complete frame in ``buffer``, None while it is incomplete; HandshakeError when oversized."""
    if len(buffer) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack_from(buffer)
    if length > MAX_FRAME:
        raise HandshakeError(f"a frame announces {length} bytes, over the {MAX_FRAME}-byte limit")
    if len(buffer) < _LENGTH.size + length:
        return None
    return decode_body(bytes(buffer[_LENGTH.size : _LENGTH.size + length]))


class _Door:
    def __init__(
        self,
        listener: socket.socket,
        hello: bytes,
        signed: Callable[[SealedBundle], bool],
        limits: ListenLimits,
        clock: Callable[[], float],
    ) -> None:
        self.listener = listener
        self.hello = hello
        self.signed = signed
        self.limits = limits
        self.clock = clock
        self.peers: dict[socket.socket, _Peer] = {}
        self.report = ListenReport()
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ)

    def close(self, peer: _Peer) -> None:
        self.selector.unregister(peer.channel)
        del self.peers[peer.channel]
        peer.channel.close()

    def close_all(self) -> None:
        for peer in list(self.peers.values()):
            self.close(peer)
        self.selector.close()

    def _events(self, peer: _Peer) -> int:
        return selectors.EVENT_READ | (selectors.EVENT_WRITE if peer.outgoing else 0)

    def admit(self, channel: socket.socket, address: str, now: float) -> None:
        """Keep the bounds: a peer at its own bound is turned away; at the overall bound the address holding
        the most connections gives up its oldest, unless the newcomer's address would then hold as many."""
        held = Counter(peer.address for peer in self.peers.values())
        if held[address] >= self.limits.max_per_peer:
            self.report.turned_away += 1
            channel.close()
            return
        if len(self.peers) >= self.limits.max_connections:
            heaviest, count = held.most_common(1)[0]
            if count <= held[address] + 1:
                self.report.turned_away += 1
                channel.close()
                return
            oldest = min(
                (peer for peer in self.peers.values() if peer.address == heaviest), key=lambda p: p.accepted
            )
            self.report.turned_away += 1
            self.close(oldest)
        channel.setblocking(False)
        peer = _Peer(channel, address, now, self.hello)
        self.peers[channel] = peer
        self.selector.register(channel, self._events(peer), peer)

    def accept(self, now: float) -> None:
        for _ in range(_ACCEPTS_PER_WAKE):
            try:
                channel, address = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. a connection reset before it was taken, or out of descriptors for now
            self.admit(channel, str(address[0]), now)

    def write(self, peer: _Peer) -> None:
        sent = peer.channel.send(peer.outgoing)
        peer.outgoing = peer.outgoing[sent:]
        if not peer.outgoing:
            self.selector.modify(peer.channel, self._events(peer), peer)

    def read(self, peer: _Peer) -> SealedBundle | None:
        """The peer's signed bundle once its frame is complete; None while it is not (or it was closed)."""
        data = peer.channel.recv(_RECV_CHUNK)
        if not data:
            self.report.garbage += 1
            self.close(peer)
            return None
        peer.incoming.extend(data)
        try:
            message = _frame(peer.incoming)
            if message is None:
                return None
            reply = decode_one_of(message, Refused, SealedBundle)
        except HandshakeError:
            self.report.garbage += 1
            self.close(peer)
            return None
        if isinstance(reply, Refused):
            # Unsigned: anyone can send one. The hub that refuses a server deletes its pod as well.
            self.report.refusals += 1
            self.close(peer)
            return None
        assert isinstance(reply, SealedBundle)
        if not self.signed(reply):
            self.report.unsigned += 1
            self.close(peer)
            return None
        return reply

    def expire(self, now: float) -> None:
        for peer in list(self.peers.values()):
            if now - peer.accepted >= self.limits.first_frame:
                self.report.silent += 1
                self.close(peer)

    def serve(self, deadline: float) -> tuple[socket.socket, SealedBundle]:
        while True:
            now = self.clock()
            if now >= deadline:
                raise NoSpawner(
                    f"no spawner brought a bundle signed by this server's controller within "
                    f"{self.limits.overall:g} s; {self.report.summary()}"
                )
            self.expire(now)
            wake = min([deadline] + [peer.accepted + self.limits.first_frame for peer in self.peers.values()])
            for key, mask in self.selector.select(timeout=max(0.0, wake - now)):
                if key.fileobj is self.listener:
                    self.accept(self.clock())
                    continue
                peer: _Peer = key.data
                if peer.channel not in self.peers:
                    continue  # closed earlier in this round (evicted to keep the bounds)
                try:
                    if mask & selectors.EVENT_WRITE and peer.outgoing:
                        self.write(peer)
                    if mask & selectors.EVENT_READ:
                        reply = self.read(peer)
                        if reply is not None:
                            del self.peers[peer.channel]
                            self.selector.unregister(peer.channel)
                            return peer.channel, reply
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    self.report.garbage += 1  # reset by the peer
                    if peer.channel in self.peers:
                        self.close(peer)


def hear_spawner(
    listen: tuple[str, int],
    hello: bytes,
    signed: Callable[[SealedBundle], bool],
    *,
    limits: ListenLimits | None = None,
    clock: Callable[[], float] = time.monotonic,
    on_listening: Callable[[tuple[str, int]], None] = lambda address: None,
) -> tuple[socket.socket, SealedBundle, ListenReport]:
    """Listen at ``listen``, send every connection ``hello`` (an encoded frame) and return the first
    connection whose frame is a bundle ``signed`` accepts — blocking again, every other connection and the
    listener closed — with what the others did. Raises :class:`NoSpawner` after ``limits.overall``."""
    limits = limits or ListenLimits()
    deadline = clock() + limits.overall
    with socket.create_server(listen) as listener:
        listener.setblocking(False)
        on_listening(listener.getsockname()[:2])
        door = _Door(listener, hello, signed, limits, clock)
        try:
            channel, reply = door.serve(deadline)
        finally:
            door.close_all()
    channel.setblocking(True)
    return channel, reply, door.report
