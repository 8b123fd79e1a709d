"""Output of forked children reaches the kernel over an inherited pipe, never over the host's loopback.

Stock ipykernel makes every forked child (``os.fork``, ``multiprocessing`` with the fork start method) push
its iopub messages — prints, displays — to a PULL socket the kernel binds on ``tcp://127.0.0.1``, without
CURVE (ipykernel 7.4 ``iostream.py`` ``_setup_pipe_in``/``_setup_pipe_out``). Under a LibOS that loopback
is the host's network stack, so the host would read every line a child prints, and the token that
authenticates those messages travels in the clear with them.

Here the kernel makes an ``os.pipe()`` before it runs any user code; children inherit its write end and
write their messages into it, and the kernel's IOPub thread reads the other end and publishes them on the
CURVE iopub socket as stock ipykernel does. Pipes between the kernel's own processes stay inside the TEE:
Gramine encrypts them with keys from the parent–child local attestation, Occlum has no fork, and in a
confidential VM the pipe is the guest kernel's. It is the channel fd-level output (``os.system``, C
extensions) already takes to the kernel (ipykernel's ``watchfd`` pipes on fds 1 and 2), so it adds no new
assumption. Both pipe ends are close-on-exec: an exec'd program never sees them.

Several children may write at once, so a message is cut into records of at most ``PIPE_BUF`` bytes, each
written by a single ``write(2)`` — POSIX makes such writes atomic, so records never interleave inside a
record — and each record names its writer (process and thread id) so the kernel reassembles each writer's
messages apart.
"""

from __future__ import annotations

import logging
import os
import select
import struct
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from ipykernel.iostream import CHILD, IOPubThread
from tornado.ioloop import IOLoop

from teelab.errors import TeelabError

log = logging.getLogger("teelab.kernel.fork_output")

_RECORD_HEADER = struct.Struct("!IIBH")  # writer pid, writer thread id, flags, payload length
_LAST = 1
_FIRST = 2  # a writer that died mid-message leaves a partial one; a reused pid must not continue it
_RECORD_PAYLOAD = select.PIPE_BUF - _RECORD_HEADER.size
_FRAME_COUNT = struct.Struct("!I")
_FRAME_LENGTH = struct.Struct("!Q")
# A child's message larger than this is dropped rather than held in the kernel's memory.
MAX_MESSAGE = 256 * 1024 * 1024
# Writers that died in the middle of a message leave a partial one behind; past this many, start afresh.
MAX_PARTIAL = 1024


class ForkOutputError(TeelabError):
    """Bytes on the fork-output pipe do not form a message."""


def encode_message(frames: Sequence[bytes | memoryview]) -> bytes:
    """A multipart message as one byte string: frame count, then each frame's length and bytes."""
    parts = [_FRAME_COUNT.pack(len(frames))]
    for frame in frames:
        data = bytes(frame)
        parts += [_FRAME_LENGTH.pack(len(data)), data]
    return b"".join(parts)


def decode_message(data: bytes) -> list[bytes]:
    """The frames :func:`encode_message` encoded; raises :class:`ForkOutputError` on anything else."""
    if len(data) < _FRAME_COUNT.size:
        raise ForkOutputError("a fork-output message is shorter than its frame count")
    (count,) = _FRAME_COUNT.unpack_from(data)
    offset = _FRAME_COUNT.size
    if count > (len(data) - offset) // _FRAME_LENGTH.size:
        raise ForkOutputError("a fork-output message counts more frames than it can hold")
    frames = []
    for _ in range(count):
        if len(data) - offset < _FRAME_LENGTH.size:
            raise ForkOutputError("a fork-output frame length is cut short")
        (length,) = _FRAME_LENGTH.unpack_from(data, offset)
        offset += _FRAME_LENGTH.size
        if length > len(data) - offset:
            raise ForkOutputError("a fork-output frame is longer than the message")
        frames.append(data[offset : offset + length])
        offset += length
    if offset != len(data):
        raise ForkOutputError("a fork-output message has bytes after its last frame")
    return frames


def records(message: bytes, pid: int, tid: int) -> Iterator[bytes]:
    """``message`` cut into pipe records, each small enough for one atomic write."""
    for start in range(0, max(len(message), 1), _RECORD_PAYLOAD):
        chunk = message[start : start + _RECORD_PAYLOAD]
        flags = (_FIRST if start == 0 else 0) | (_LAST if start + _RECORD_PAYLOAD >= len(message) else 0)
        yield _RECORD_HEADER.pack(pid, tid, flags, len(chunk)) + chunk


class RecordAssembler:
    """Turns the pipe's byte stream back into whole messages, one partial message per writer."""

    def __init__(self) -> None:
        self._pending = bytearray()
        self._partial: dict[tuple[int, int], bytearray] = {}
        self._oversized: set[tuple[int, int]] = set()

    def feed(self, data: bytes) -> list[bytes]:
        """The messages completed by ``data`` (a read from the pipe may end inside a record)."""
        self._pending += data
        done: list[bytes] = []
        offset = 0
        while len(self._pending) - offset >= _RECORD_HEADER.size:
            pid, tid, flags, length = _RECORD_HEADER.unpack_from(self._pending, offset)
            end = offset + _RECORD_HEADER.size + length
            if end > len(self._pending):
                break
            writer = (pid, tid)
            if flags & _FIRST:
                self._partial.pop(writer, None)
                self._oversized.discard(writer)
            if writer not in self._partial and len(self._partial) >= MAX_PARTIAL:
                log.error("dropping the partial output of %d forked writers", len(self._partial))
                self._partial.clear()
            buffer = self._partial.setdefault(writer, bytearray())
            if len(buffer) + length > MAX_MESSAGE:
                self._oversized.add(writer)
                buffer.clear()
            elif writer not in self._oversized:
                buffer += self._pending[offset + _RECORD_HEADER.size : end]
            if flags & _LAST:
                message = bytes(self._partial.pop(writer))
                if writer in self._oversized:
                    self._oversized.discard(writer)
                    log.error("dropped a forked child's message larger than %d bytes", MAX_MESSAGE)
                else:
                    done.append(message)
            offset = end
        del self._pending[:offset]
        return done


class ForkPipeIOPubThread(IOPubThread):  # type: ignore[misc]
    """ipykernel's IOPub thread with forked children's messages carried by an inherited ``os.pipe``."""

    _read_fd: int | None = None
    _write_fd: int | None = None

    def _setup_pipe_in(self) -> None:
        # Called from IOPubThread.__init__ when pipe=True, before any user code (and so any fork) runs.
        self._read_fd, self._write_fd = os.pipe()
        assembler = RecordAssembler()
        read_fd = self._read_fd

        def readable(fd: int, events: int) -> None:
            try:
                data = os.read(read_fd, 1 << 16)
            except BlockingIOError:
                return
            if not data:  # every write end is closed: the kernel is shutting down
                self.io_loop.remove_handler(read_fd)
                return
            for message in assembler.feed(data):
                try:
                    frames = decode_message(message)
                except ForkOutputError as error:
                    log.error("dropped a forked child's output: %s", error.message)
                    continue
                self.send_multipart(frames)  # type: ignore[no-untyped-call]

        self.io_loop.add_handler(read_fd, readable, IOLoop.READ)

    def _setup_pipe_out(self) -> Any:
        raise AssertionError("forked children write to the inherited pipe, never to a loopback socket")

    def _really_send(self, msg: list[Any], *args: Any, **kwargs: Any) -> None:
        if self.closed or self._check_mp_mode() != CHILD:  # type: ignore[no-untyped-call]
            super()._really_send(msg, *args, **kwargs)  # type: ignore[no-untyped-call]
            return
        write_fd = self._write_fd
        if write_fd is None:
            return
        for record in records(encode_message(msg), os.getpid(), threading.get_native_id()):
            # One write per record, each at most PIPE_BUF bytes: atomic, never interleaved with another writer.
            written = os.write(write_fd, record)
            if written != len(record):
                raise ForkOutputError("a record to the kernel's fork-output pipe was cut short")

    def close(self) -> None:
        super().close()  # type: ignore[no-untyped-call]
        # The read end is the IOPub loop's handler: io_loop.close(all_fds=True) closes it when it stops.
        if self._write_fd is not None:
            os.close(self._write_fd)
            self._write_fd = None
