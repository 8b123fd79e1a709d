"""Everything the session handshake reads has crossed the untrusted host: frames, the hello, the ready
message, the boot request, the evidence envelope and the sealed bundle. Hostile input of any shape fails only
with teelab's own errors (HandshakeError, EvidenceError)."""

from __future__ import annotations

import asyncio
import json
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from teelab.enclave_runtime.backend import Evidence
from teelab.errors import EvidenceError
from teelab.gateway.handshake import (
    BootRequest,
    b64,
    open_bundle,
    parse_hello,
    parse_ready,
    seal_bundle,
    session_report_data,
)
from teelab.gateway.wire import MAX_FRAME, HandshakeError, decode_body, encode_frame, read_frame

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
messages = st.dictionaries(
    st.sampled_from(["type", "enclave_key", "evidence", "confirm", "sealed", "reason"]) | st.text(max_size=8),
    json_values | st.text(alphabet="ABCDEFabcdef0123456789+/=", max_size=80),
    max_size=5,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_frame_bodies(body: bytes) -> None:
    try:
        assert isinstance(decode_body(body), dict)
    except HandshakeError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_frames_read_from_the_channel(stream: bytes) -> None:
    async def read() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(stream)
        reader.feed_eof()
        await read_frame(reader)

    try:
        asyncio.run(read())
    except HandshakeError:
        pass


def test_an_oversized_frame_is_refused_before_it_is_read() -> None:
    async def read() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(struct.pack(">I", MAX_FRAME + 1))
        await read_frame(reader)

    with pytest.raises(HandshakeError, match="over the"):
        asyncio.run(read())


@settings(max_examples=300, deadline=None)
@given(messages)
def test_hello_ready_and_evidence_envelopes(message: dict[str, object]) -> None:
    for parse in (parse_hello, parse_ready):
        try:
            parse(message)
        except HandshakeError:
            pass
    try:
        Evidence.from_json(message.get("evidence", message))
    except EvidenceError:
        pass
    encode_frame({"type": "refused"})  # the encoder handles what the gateway sends


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200) | st.builds(json.dumps, json_values))
def test_boot_requests(text: str) -> None:
    try:
        request = BootRequest.from_env(text)
    except HandshakeError:
        return
    assert len(request.nonce) == 32 and request.host and 0 <= request.port


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_sealed_bundles(sealed: bytes) -> None:
    secret = X25519PrivateKey.generate()
    with pytest.raises(HandshakeError):
        open_bundle(secret, bytes(32), sealed)


def test_a_bundle_sealed_for_another_nonce_or_key_does_not_open() -> None:
    secret = X25519PrivateKey.generate()
    key = secret.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    sealed = seal_bundle(key, bytes(32), {"key": "k"})
    assert open_bundle(secret, bytes(32), sealed) == {"key": "k"}
    with pytest.raises(HandshakeError):
        open_bundle(secret, b"\x01" * 32, sealed)
    with pytest.raises(HandshakeError):
        open_bundle(X25519PrivateKey.generate(), bytes(32), sealed)


def test_the_report_data_binds_key_and_nonce() -> None:
    key, nonce = bytes(range(32)), bytes(32)
    base = session_report_data(key, nonce)
    assert len(base) == 64
    assert session_report_data(key, b"\x01" + nonce[1:]) != base
    assert session_report_data(b"\x01" + key[1:], nonce) != base
    assert parse_hello({"type": "hello", "enclave_key": b64(key), "evidence": {}})[0] == key
