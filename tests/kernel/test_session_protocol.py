"""The session protocol's messages (teelab.protocols.session): everything the handshake decodes has crossed the
untrusted host — frames, the hello, the ready message, the boot request, the evidence envelope and the sealed
bundle. Hostile input of any shape fails only with teelab's own errors (HandshakeError, EvidenceError), and
every message survives its own encoding unchanged."""

from __future__ import annotations

import asyncio
import hashlib
import json
import struct
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from teelab.enclave_runtime.backend import Evidence
from teelab.errors import EvidenceError
from teelab.protocols.session import (
    MAX_FRAME,
    PORT_NAMES,
    BootRequest,
    Failed,
    HandshakeError,
    Hello,
    KeyBrokerSection,
    Ready,
    Refused,
    SealedBundle,
    SessionBundle,
    check_bundle_signature,
    controller_hash,
    decode_body,
    decode_one_of,
    encode_frame,
    open_bundle,
    read_frame,
    seal_bundle,
    session_report_data,
    sign_bundle,
)

MESSAGES = (Hello, Refused, SealedBundle, Failed, Ready)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
messages = st.dictionaries(
    st.sampled_from(["type", "enclave_key", "evidence", "confirm", "sealed", "signature", "reason"])
    | st.text(max_size=8),
    json_values
    | st.sampled_from([m.kind for m in MESSAGES])
    | st.text(alphabet="ABCDEFabcdef0123456789+/=", max_size=80),
    max_size=5,
)
bundle_fields = [
    "session_id", "kernel_id", "ip", "transport", *PORT_NAMES, "key", "signature_scheme",
    "curve_publickey", "curve_secretkey", "attestation", "key_broker",
]  # fmt: skip
bundles = st.dictionaries(
    st.sampled_from(bundle_fields) | st.text(max_size=8),
    json_values | st.integers(min_value=-5, max_value=70000) | st.text(max_size=45),
    max_size=len(bundle_fields) + 2,
)
sections = st.dictionaries(
    st.sampled_from(["address", "store", "user", "kbs_key", "kbs_ca", "grant", "grant_expires_at"]),
    json_values | st.text(alphabet="0123456789abcdef-:T", max_size=40),
    max_size=8,
)


def sample_bundle(**changes: object) -> SessionBundle:
    values: dict[str, object] = {
        "session_id": "s-1",
        "kernel_id": "k-1",
        "ip": "127.0.0.1",
        "ports": (5001, 5002, 5003, 5004, 5005),
        "key": b"ab" * 32,
        "signature_scheme": "hmac-sha256",
        "curve_publickey": b"P" * 40,
        "curve_secretkey": b"S" * 40,
        "attestation": {"verdict": "affirming", "checks": []},
        "key_broker": KeyBrokerSection(
            address="grpcs://kbs:50051",
            store="file:///data",
            user="alice",
            kbs_key=bytes(32),
            kbs_ca="-----BEGIN CERTIFICATE-----\n",
            grant="a.b.c",
            grant_expires_at=datetime(2026, 1, 2, tzinfo=UTC),
        ),
    }
    values.update(changes)
    return SessionBundle(**values)  # type: ignore[arg-type]


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


@settings(max_examples=400, deadline=None)
@given(messages)
def test_every_message_decoder_and_the_evidence_envelope(message: dict[str, object]) -> None:
    for kind in MESSAGES:
        try:
            decoded = kind.from_json(message)
        except HandshakeError:
            continue
        assert message["type"] == kind.kind and decoded.to_json()["type"] == kind.kind
    try:
        decode_one_of(message, Ready, Failed)
    except HandshakeError:
        pass
    try:
        Evidence.from_json(message.get("evidence", message))
    except EvidenceError:
        pass


@settings(max_examples=300, deadline=None)
@given(bundles)
def test_session_bundles(data: dict[str, object]) -> None:
    try:
        bundle = SessionBundle.from_json(data)
    except HandshakeError:
        return
    assert all(0 < port < 65536 for port in bundle.ports) and len(bundle.curve_secretkey) == 40


@settings(max_examples=300, deadline=None)
@given(sections)
def test_key_broker_sections(data: dict[str, object]) -> None:
    try:
        section = KeyBrokerSection.from_json(data)
    except HandshakeError:
        return
    assert isinstance(section.address, str) and isinstance(section.user, str)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200) | st.builds(json.dumps, json_values))
def test_boot_requests(text: str) -> None:
    try:
        request = BootRequest.from_env(text)
    except HandshakeError:
        return
    assert len(request.nonce) == 32 and request.host and 0 < request.port < 65536
    assert len(request.controller_key) == 32


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_sealed_bundles(sealed: bytes) -> None:
    secret = X25519PrivateKey.generate()
    with pytest.raises(HandshakeError):
        open_bundle(secret, bytes(32), sealed)


def test_every_message_round_trips_through_a_frame() -> None:
    for message in (
        Hello(bytes(range(32)), {"kind": "sgx-dcap-quote", "blob": "AA=="}),
        Refused("policy.mrenclave"),
        SealedBundle(b"sealed bytes", bytes(64)),
        Failed("ImportError"),
        Ready(bytes(32)),
    ):
        frame = encode_frame(message)
        assert type(message).from_json(decode_body(frame[4:])) == message
    request = BootRequest(nonce=bytes(range(32)), host="127.0.0.1", port=4242, controller_key=bytes(32))
    assert BootRequest.from_env(request.to_env()) == request


def test_a_decoder_refuses_the_wrong_message_type() -> None:
    with pytest.raises(HandshakeError, match="expected a ready or failed message, got 'hello'"):
        decode_one_of(Hello(bytes(32), {}).to_json(), Ready, Failed)
    with pytest.raises(HandshakeError, match="expected a bundle message"):
        SealedBundle.from_json(Refused("x").to_json())
    with pytest.raises(HandshakeError, match="signature"):
        SealedBundle.from_json({"type": "bundle", "sealed": "AA=="})  # no controller signature: refused


def test_only_the_controller_named_in_the_boot_request_authenticates_a_bundle() -> None:
    controller, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    controller_key = controller.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    nonce, enclave_key, sealed = bytes(32), bytes(range(32)), b"sealed bundle"
    signature = sign_bundle(controller, sealed, nonce, enclave_key)
    check_bundle_signature(controller_key, signature, sealed, nonce, enclave_key)
    for bad in (
        (controller_key, sign_bundle(stranger, sealed, nonce, enclave_key), sealed, nonce, enclave_key),
        (controller_key, signature, sealed + b"!", nonce, enclave_key),  # another bundle
        (controller_key, signature, sealed, b"\x01" * 32, enclave_key),  # another session
        (controller_key, signature, sealed, nonce, bytes(32)),  # another enclave
        (bytes(32), signature, sealed, nonce, enclave_key),  # not even a key
    ):
        with pytest.raises(HandshakeError, match="not authenticated by this kernel's controller"):
            check_bundle_signature(*bad)
    assert controller_hash(controller_key) == hashlib.sha256(controller_key).digest()


def test_the_bundle_round_trips_sealed_and_types_its_key_broker_section() -> None:
    secret = X25519PrivateKey.generate()
    key = secret.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    bundle = sample_bundle()
    opened = open_bundle(secret, bytes(32), seal_bundle(key, bytes(32), bundle))
    assert opened == bundle
    assert opened.port("control_port") == 5004
    assert opened.key_broker is not None and opened.key_broker.grant_expires_at == datetime(
        2026, 1, 2, tzinfo=UTC
    )
    without = sample_bundle(key_broker=KeyBrokerSection(address="kbs:1", store="file:///d", user="bob"))
    reopened = open_bundle(secret, bytes(32), seal_bundle(key, bytes(32), without))
    assert reopened.key_broker is not None and reopened.key_broker.grant is None
    assert (
        open_bundle(secret, bytes(32), seal_bundle(key, bytes(32), sample_bundle(key_broker=None))).key_broker
        is None
    )


def test_a_bundle_with_a_wrong_field_is_refused() -> None:
    good = sample_bundle().to_json()
    for field, value in (
        ("shell_port", 0),
        ("hb_port", True),
        ("curve_secretkey", "short"),
        ("key", ""),
        ("transport", "ipc"),
        ("attestation", []),
        ("key_broker", {"address": "kbs:1"}),
    ):
        with pytest.raises(HandshakeError):
            SessionBundle.from_json({**good, field: value})


def test_a_bundle_sealed_for_another_nonce_or_key_does_not_open() -> None:
    secret = X25519PrivateKey.generate()
    key = secret.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    sealed = seal_bundle(key, bytes(32), sample_bundle())
    assert open_bundle(secret, bytes(32), sealed) == sample_bundle()
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
    assert Hello.from_json(Hello(key, {}).to_json()).enclave_key == key
