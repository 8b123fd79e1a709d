"""The fork-output pipe's framing: whole messages from concurrent writers, and only typed errors on bad bytes."""

from __future__ import annotations

import random
import select

import pytest
from hypothesis import given
from hypothesis import strategies as st

from teelab.kernel import fork_output
from teelab.kernel.fork_output import (
    ForkOutputError,
    RecordAssembler,
    decode_message,
    encode_message,
    records,
)

frames_strategy = st.lists(st.binary(max_size=3000), max_size=6)


@given(frames_strategy)
def test_plaintext_pipe_message_round_trips(frames: list[bytes]) -> None:
    assert decode_message(encode_message(frames)) == frames


def test_plaintext_pipe_records_fit_one_atomic_write_and_reassemble_per_writer() -> None:
    rng = random.Random(7)
    messages = {
        (100, 1): [encode_message([b"topic", rng.randbytes(n)]) for n in (0, 10, 5000, 70000)],
        (100, 2): [encode_message([memoryview(rng.randbytes(9000)), b""])],
        (200, 200): [encode_message([rng.randbytes(4085)]), encode_message([b"a" * 4086])],
    }
    queues = {writer: [r for m in ms for r in records(m, *writer)] for writer, ms in messages.items()}
    assert all(len(r) <= select.PIPE_BUF for rs in queues.values() for r in rs)
    # Writers interleave at record granularity (what atomic pipe writes allow) …
    stream = bytearray()
    while any(queues.values()):
        writer = rng.choice([w for w, rs in queues.items() if rs])
        stream += queues[writer].pop(0)
    # … and the kernel's reads end anywhere, even inside a record header.
    assembler = RecordAssembler()
    received: list[bytes] = []
    offset = 0
    while offset < len(stream):
        step = rng.choice((1, 3, 11, 4096, 65536))
        received += assembler.feed(bytes(stream[offset : offset + step]))
        offset += step
    for writer_messages in messages.values():
        assert [m for m in received if m in writer_messages] == writer_messages
    assert len(received) == sum(len(ms) for ms in messages.values())


def test_plaintext_pipe_drops_an_oversized_message_and_keeps_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fork_output, "MAX_MESSAGE", 10_000)
    big, small = encode_message([b"b" * 20_000]), encode_message([b"after"])
    assembler = RecordAssembler()
    received = [m for r in [*records(big, 1, 1), *records(small, 1, 1)] for m in assembler.feed(r)]
    assert received == [small]


@given(st.binary(max_size=200))
def test_plaintext_pipe_decoder_raises_only_its_own_error(data: bytes) -> None:
    try:
        frames = decode_message(data)
    except ForkOutputError:
        return
    assert encode_message(frames) == data


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\x00",
        b"\x00\x00\x00\x02",
        b"\x00\x00\x00\x01" + b"\x00" * 7 + b"\x09abc",
        encode_message([]) + b"x",
    ],
)
def test_plaintext_pipe_decoder_refuses_malformed_messages(data: bytes) -> None:
    with pytest.raises(ForkOutputError):
        decode_message(data)


def test_plaintext_pipe_a_reused_writer_id_does_not_continue_a_dead_writers_message() -> None:
    cut_off = list(records(encode_message([b"a" * 10_000]), 42, 42))[:-1]  # its writer died mid-message
    whole = encode_message([b"from the next process with pid 42"])
    assembler = RecordAssembler()
    received = [m for r in [*cut_off, *records(whole, 42, 42)] for m in assembler.feed(r)]
    assert received == [whole]
