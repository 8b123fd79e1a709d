"""The session protocol's Dask additions (teelab.protocols.session): the node's hello binding its TLS key, the
boot request's entry, and the sealed DaskNodeBundle. Everything here crossed the untrusted host, so hostile
input of any shape fails only with HandshakeError, and every message survives its own encoding unchanged."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from teelab.dask.tls import ClusterCA, ClusterTlsError, check_node_certificate, load_node_key, peer_role
from teelab.protocols.session import (
    ENTRY_DASK_NODE,
    ENTRY_KERNEL,
    MAX_TLS_KEY,
    BootRequest,
    DaskNodeBundle,
    HandshakeError,
    Hello,
    KeyBrokerSection,
    decrypt_bundle,
    parse_bundle,
    parse_dask_bundle,
    requested_entry,
    seal_bundle,
    session_report_data,
)

CA = ClusterCA("c0ffee")
NODE_KEY = ec.generate_private_key(ec.SECP256R1())
SPKI = NODE_KEY.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
CERTIFICATE = CA.issue(NODE_KEY.public_key(), "worker", "3")


def sample(**changes: object) -> DaskNodeBundle:
    values: dict[str, object] = {
        "cluster_id": "c0ffee",
        "role": "worker",
        "name": "3",
        "key": bytes(range(32)),
        "certificate": CERTIFICATE,
        "ca_certificate": CA.certificate_pem,
        "address": "tls://127.0.0.1:8786",
        "nthreads": 2,
        "key_broker": KeyBrokerSection(address="127.0.0.1:1", store="file:///d", user="alice", grant="g"),
        "attestation": {"verdict": "warning", "checks": []},
    }
    values.update(changes)
    return DaskNodeBundle(**values)  # type: ignore[arg-type]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-5, max_value=70000) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=10,
)
fields = [
    "cluster_id",
    "role",
    "name",
    "key",
    "certificate",
    "ca_certificate",
    "address",
    "nthreads",
    "key_broker",
    "attestation",
]
sections = st.dictionaries(
    st.sampled_from(fields) | st.text(max_size=6),
    json_values
    | st.sampled_from(["worker", "scheduler", "tls://h:1", "-----BEGIN CERTIFICATE-----\n", "00" * 32]),
    max_size=len(fields) + 1,
)


@settings(max_examples=400, deadline=None)
@given(sections)
def test_hostile_dask_sections_fail_only_with_handshake_errors(section: dict[str, object]) -> None:
    try:
        DaskNodeBundle.from_json({"dask": section})
    except HandshakeError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_hostile_bundle_bytes_fail_only_with_handshake_errors(data: bytes) -> None:
    with pytest.raises(HandshakeError):
        parse_dask_bundle(data)


def test_a_bundle_survives_its_encoding_and_is_strict() -> None:
    bundle = sample()
    assert DaskNodeBundle.from_json(json.loads(json.dumps(bundle.to_json()))) == bundle
    assert DaskNodeBundle.from_json(sample(key_broker=None).to_json()) == sample(key_broker=None)
    for bad in (
        {"role": "client"},  # a node is a scheduler or a worker; the client is the controller
        {"address": "tcp://127.0.0.1:8786"},  # never a plaintext scheduler
        {"address": "tls://127.0.0.1:0"},
        {"nthreads": 0},
        {"nthreads": True},
        {"name": ""},
        {"certificate": "not pem"},
    ):
        with pytest.raises(HandshakeError):
            DaskNodeBundle.from_json(sample(**bad).to_json())
    with pytest.raises(HandshakeError):
        DaskNodeBundle.from_json({**bundle.to_json()["dask"]})  # type: ignore[dict-item]  # no section


def test_kernel_and_node_bundles_cannot_pass_for_each_other() -> None:
    secret = X25519PrivateKey.generate()
    enclave_key = secret.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    nonce = bytes(32)
    plaintext = decrypt_bundle(secret, nonce, seal_bundle(enclave_key, nonce, sample()))
    assert parse_dask_bundle(plaintext) == sample()
    with pytest.raises(HandshakeError):
        parse_bundle(plaintext)  # a kernel boot refuses a node's bundle


def test_the_hello_binds_the_tls_key() -> None:
    key, nonce = bytes(range(32)), bytes(32)
    hello = Hello(key, {"kind": "sgx-dcap-quote", "blob": "AA=="}, SPKI)
    assert Hello.from_json(json.loads(json.dumps(hello.to_json()))) == hello
    assert "tls_key" not in Hello(key, {}).to_json()  # a kernel's hello is unchanged on the wire
    plain = session_report_data(key, nonce)
    bound = session_report_data(key, nonce, SPKI)
    assert len(bound) == 64 and bound != plain
    assert session_report_data(key, nonce, SPKI[:-1] + b"\x00") != bound
    for bad in ("", "!!", "A" * (4 * (MAX_TLS_KEY // 3 + 2))):
        with pytest.raises(HandshakeError):
            Hello.from_json({**hello.to_json(), "tls_key": bad})


def test_the_boot_request_entry() -> None:
    request = BootRequest(bytes(32), "127.0.0.1", 9, bytes(32), entry=ENTRY_DASK_NODE)
    assert BootRequest.from_env(request.to_env()) == request
    assert requested_entry(request.to_env()) == ENTRY_DASK_NODE
    kernel = BootRequest(bytes(32), "127.0.0.1", 9, bytes(32))
    assert "entry" not in json.loads(kernel.to_env())  # a kernel's request is unchanged on the wire
    assert requested_entry(kernel.to_env()) == ENTRY_KERNEL
    assert requested_entry("{not json") == ENTRY_KERNEL and requested_entry(None) == ENTRY_KERNEL
    with pytest.raises(HandshakeError):
        BootRequest.from_env(json.dumps({**json.loads(request.to_env()), "entry": "shell"}))


def test_node_certificates_name_one_role() -> None:
    pem = CA.issue(NODE_KEY.public_key(), "worker", "3")
    assert check_node_certificate(pem, CA.certificate_pem, NODE_KEY.public_key()) == ("worker", "3")
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(ClusterTlsError, match="another key"):
        check_node_certificate(pem, CA.certificate_pem, other)
    with pytest.raises(ClusterTlsError):
        check_node_certificate(pem, ClusterCA("other").certificate_pem, NODE_KEY.public_key())
    with pytest.raises(ClusterTlsError):
        load_node_key(b"\x30\x00")
    rsa_like = (
        X25519PrivateKey.generate().public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ClusterTlsError, match="P-256"):
        load_node_key(rsa_like)
    assert peer_role({"subjectAltName": (("URI", "teelab-dask://worker/3"),)}) == ("worker", "3")
    assert peer_role({"subjectAltName": (("URI", "teelab-dask://client/x"),)}) == ("client", "x")
    for hostile in (
        None,
        {},
        {"subjectAltName": (("DNS", "worker"),)},
        "x",
        {"subjectAltName": (("URI", "teelab-dask://worker/1"), ("URI", "teelab-dask://worker/2"))},
    ):
        assert peer_role(hostile) is None
