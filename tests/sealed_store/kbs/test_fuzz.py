"""Every gRPC request field is untrusted: random, oversized and wrongly sized values, and random bytes.

Whatever arrives, the answer is a proper gRPC status with a known reason code — never INTERNAL, never an
exception out of the handler — and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import namedtuple
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teelab.sealed_store.kbs.auth import ADMIN_TOKEN_FILE, read_token
from teelab.sealed_store.kbs.broker import KeyBroker
from teelab.sealed_store.kbs.config import KbsConfig
from teelab.sealed_store.kbs.identity import issue_local_token
from teelab.sealed_store.kbs.protocol import SERVICE_NAME
from teelab.sealed_store.kbs.reasons import REASON_METADATA_KEY, STATUS, Reason
from teelab.sealed_store.kbs.service import METHODS, KbsService, _lenient

from .conftest import GOOD, UNLIMITED_JUNK, FakeClock, Kbs, policy_for

ALLOWED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
}
REASONS = {reason.value for reason in Reason}
Metadatum = namedtuple("Metadatum", ["key", "value"])


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code


class FakeContext:
    """Just what the service uses of a grpc.aio.ServicerContext."""

    def __init__(self, metadata: list[tuple[str, str]]) -> None:
        self._metadata = [Metadatum(k, v) for k, v in metadata]
        self.trailing: tuple[tuple[str, str], ...] = ()

    def invocation_metadata(self) -> list[Metadatum]:
        return self._metadata

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def set_trailing_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.trailing = metadata

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


NAMES = ["sales", "hr", "x" * 128, "x" * 129, "", "bad/name", "../etc", "s\u00e9", "a b"]
PRINCIPALS = ["user:alice", "group:analysts", "user:", "alice", "group:a:b", "user:" + "a" * 200]
HEXES = [hashlib.sha256(b"m").hexdigest(), "A" * 64, "0" * 63, "zz" * 32, ""]
TEXTS = [
    policy_for(GOOD),
    'report_data = "00"',
    "[sgx]\nmrenclave = []",
    "x = [" * 500,
    "\x00\xff",
    "allow_debug = true",
    "",
]


def text_values() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(NAMES + PRINCIPALS + HEXES + TEXTS),
        st.text(max_size=300),
        st.just("a" * 70000),
        st.just("\u00e9" * 40000),
    )


def byte_values(nonces: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.sampled_from(nonces),
        st.binary(max_size=64),
        st.binary(min_size=32, max_size=32),
        st.binary(min_size=2000, max_size=3000),
        st.just(b"\x00" * (1 << 20)),
        st.just(b"\x03\x00\x02\x00" + b"\x00" * 1200),  # looks like a quote header, is not one
    )


def int_values(field: FieldDescriptor) -> st.SearchStrategy[int]:
    bits = 32 if field.type == FieldDescriptor.TYPE_UINT32 else 64
    edges = [0, 1, 2, 3, (1 << 31) - 1, 1 << 31, (1 << 32) - 1, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]
    return st.one_of(st.sampled_from([v for v in edges if v < 1 << bits]), st.integers(0, (1 << bits) - 1))


@st.composite
def messages(draw: st.DrawFn, cls: type[Message], nonces: list[bytes]) -> Message:
    message = cls()
    for field in cls.DESCRIPTOR.fields:
        if not draw(st.booleans()):
            continue
        if field.is_repeated and field.type == FieldDescriptor.TYPE_STRING:
            getattr(message, field.name).extend(draw(st.lists(text_values(), max_size=4)))
        elif field.type == FieldDescriptor.TYPE_STRING:
            setattr(message, field.name, draw(text_values()))
        elif field.type == FieldDescriptor.TYPE_BYTES:
            setattr(message, field.name, draw(byte_values(nonces)))
        elif field.type in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64):
            setattr(message, field.name, draw(int_values(field)))
        elif field.type == FieldDescriptor.TYPE_BOOL:
            setattr(message, field.name, draw(st.booleans()))
        elif field.type == FieldDescriptor.TYPE_MESSAGE:  # google.protobuf.Timestamp
            stamp = getattr(message, field.name)
            stamp.seconds = draw(st.integers(-(1 << 63), (1 << 63) - 1) | st.integers(0, 4_000_000_000))
            stamp.nanos = draw(st.integers(-(1 << 31), (1 << 31) - 1) | st.integers(0, 999_999_999))
    return message


@pytest.fixture
def service(
    tmp_path: Path, clock: FakeClock
) -> Iterator[tuple[KbsService, dict[str, list[tuple[str, str]]], list[bytes]]]:
    # Junk is rate-limited per peer (test_junk.py); here every request must reach its own checks.
    config = KbsConfig(state_dir=tmp_path / "fuzz-kbs", collateral="none", auth=UNLIMITED_JUNK)
    broker = KeyBroker(config, clock=clock)
    tokens = {
        "none": [],
        "admin": [("authorization", f"Bearer {read_token(tmp_path / 'fuzz-kbs' / ADMIN_TOKEN_FILE)}")],
        "user": [
            ("authorization", f"Bearer {read_token(issue_local_token(tmp_path / 'fuzz-kbs', 'alice'))}")
        ],
        "garbage": [("authorization", "Bearer \u00e9\u00e9"), ("authorization", "Basic x")],
    }
    nonces = [broker.challenge().nonce for _ in range(4)]
    yield KbsService(broker), tokens, nonces
    broker.close()


def _check_answer(context: FakeContext, error: Aborted | None) -> None:
    if error is None:
        return
    assert error.code in ALLOWED, error
    reasons = [v for k, v in context.trailing if k == REASON_METADATA_KEY]
    assert len(reasons) == 1 and reasons[0] in REASONS
    assert STATUS[Reason(reasons[0])] == error.code


@pytest.mark.parametrize("method", sorted(METHODS))
def test_random_field_values_only_give_typed_refusals(
    method: str, service: tuple[KbsService, dict[str, list[tuple[str, str]]], list[bytes]]
) -> None:
    svc, tokens, nonces = service
    spec = METHODS[method]
    behaviour = svc._behaviour(method, spec)
    loop = asyncio.new_event_loop()

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(request=messages(spec.request, nonces), who=st.sampled_from(sorted(tokens)))
    def run(request: Message, who: str) -> None:
        context = FakeContext(tokens[who])
        # What arrives is bytes: decode them the way the server does.
        parsed: Any = _lenient(spec.request)(request.SerializeToString())
        try:
            response = loop.run_until_complete(behaviour(parsed, context))
        except Aborted as error:
            _check_answer(context, error)
        else:
            assert isinstance(response, spec.response)

    try:
        run()
    finally:
        loop.close()


def test_random_bytes_over_the_wire_never_break_the_server(kbs: Kbs) -> None:
    channel = grpc.insecure_channel(kbs.server.target)
    admin = (("authorization", f"Bearer {read_token(kbs.state / ADMIN_TOKEN_FILE)}"),)
    calls = {
        name: channel.unary_unary(
            f"/{SERVICE_NAME}/{name}", request_serializer=None, response_deserializer=None
        )
        for name in METHODS
    }

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(
        name=st.sampled_from(sorted(METHODS)),
        payload=st.binary(max_size=512) | st.binary(min_size=5000, max_size=6000),
        authorized=st.booleans(),
    )
    def run(name: str, payload: bytes, authorized: bool) -> None:
        try:
            calls[name](payload, timeout=10, metadata=admin if authorized else ())
        except grpc.RpcError as error:
            assert error.code() in ALLOWED, (name, error.code(), error.details())
            reasons = [v for k, v in error.trailing_metadata() or () if k == REASON_METADATA_KEY]
            assert reasons and reasons[0] in REASONS

    run()
    # Oversized messages are refused by the transport, and the server is still there.
    with pytest.raises(grpc.RpcError) as caught:
        calls["Release"](b"\x32" + b"\xff" * 5 + b"\x0f" + b"a" * (5 << 20), timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert kbs.anon.info().protocol == "teelab/kbs/v1"
    channel.close()


def test_mutated_quotes_in_otherwise_valid_releases_are_only_refused(kbs: Kbs) -> None:
    from teelab.errors import KeyBrokerError
    from teelab.sealed_store.kbs.protocol import release_report_data

    kbs.register("sales")
    kbs.admin.grant("sales", "user:alice")
    enclave = kbs.enclave()
    grant = kbs.session("alice", enclave)

    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        challenge = kbs.anon.challenge()
        quote = bytearray(
            enclave.attest(
                release_report_data(
                    challenge.nonce, enclave.public, grant.encode(), dataset="sales", version=None
                )
            ).blob
        )
        # Header, report body, signature, attestation key, QE report and its signature: every byte is signed.
        # (A flipped byte in the PEM chain's trailing text could be ignored by a PEM parser, legitimately.)
        position = data.draw(st.integers(0, 1011))
        quote[position] ^= data.draw(st.integers(1, 255))
        cut = data.draw(st.sampled_from([len(quote), len(quote) - 1, position + 1, 48]))
        with pytest.raises(KeyBrokerError) as caught:
            kbs.anon.release(
                nonce=challenge.nonce,
                dataset="sales",
                enclave_key=enclave.public,
                grant=grant,
                evidence=bytes(quote[:cut]),
            )
        assert caught.value.reason == "evidence_rejected"

    run()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_edge_values_of_every_field_with_every_token(
    method: str, service: tuple[KbsService, dict[str, list[tuple[str, str]]], list[bytes]]
) -> None:
    """Deterministically, what random sampling may miss: each field alone at each edge value."""
    svc, tokens, nonces = service
    spec = METHODS[method]
    behaviour = svc._behaviour(method, spec)
    loop = asyncio.new_event_loop()
    edges: dict[int, list[Any]] = {
        FieldDescriptor.TYPE_UINT32: [0, 1, (1 << 31) - 1, 1 << 31, (1 << 32) - 1],
        FieldDescriptor.TYPE_UINT64: [0, 1, (1 << 63) - 1, 1 << 63, (1 << 64) - 1],
        FieldDescriptor.TYPE_STRING: ["", "x" * 129, "a" * 70000, "\u00e9", "user:alice", "sales"],
        FieldDescriptor.TYPE_BYTES: [b"", bytes(31), bytes(32), bytes(33), nonces[0], b"\x00" * (1 << 20)],
        FieldDescriptor.TYPE_BOOL: [True],
    }
    for field in spec.request.DESCRIPTOR.fields:
        values: list[Any] = edges.get(field.type, [])
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            values = [(-(1 << 63), 0), ((1 << 63) - 1, 999_999_999), (0, -1), (253402300800, 0)]
        for value in values:
            request = spec.request()
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                stamp = getattr(request, field.name)
                stamp.seconds, stamp.nanos = value
            elif field.is_repeated:
                getattr(request, field.name).append(value)
            else:
                setattr(request, field.name, value)
            for who in tokens:
                context = FakeContext(tokens[who])
                try:
                    loop.run_until_complete(
                        behaviour(_lenient(spec.request)(request.SerializeToString()), context)
                    )
                except Aborted as error:
                    _check_answer(context, error)
    loop.close()
