"""The hub's parsers of bytes from the host, the cluster network or the hub's API fail only with teelab's own
errors (or, inside the spawner's re-challenge, the ValueError its caller turns into an "unreachable" outcome),
whatever the bytes:

- the init-data annotation a pod's boot request carries (``read_init_data``: HandshakeError) and the controller
  check over an init-data and evidence claims (``check_init_data_controller``: a failed check, never a raise);
- the boot request's pod fields (``listen``, ``init_data``);
- the front door's attestation reply with a hub pod's ``pod`` field, and its ``hub pod`` line;
- the hub's record of a server (``teelab hub verify``);
- the re-challenge's TLS peer certificate and HTTP answer (``spawner_attest``).
"""

from __future__ import annotations

import base64
import datetime
import gzip
import hashlib
import json
import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from teelab.extension.hub import spawner_protocol as protocol
from teelab.extension.hub.front_door_protocol import FrontDoorError, FrontDoorEvidence
from teelab.extension.hub.hub_pod_verify import pod_line
from teelab.extension.hub.kubernetes import ConfidentialPods, check_init_data_controller, read_init_data
from teelab.extension.hub.spawner_attest import MAX_ANSWER, answer_body, peer_spki
from teelab.extension.hub.verify_server import ServerRecord
from teelab.protocols.session import HandshakeError

CONTROLLER = hashlib.sha256(b"G_s.pub").digest()
ANNOTATION = ConfidentialPods("kata-qemu-snp", CONTROLLER, "ab" * 32, digest="sha256").init_data_annotation()
TOML = gzip.decompress(base64.b64decode(ANNOTATION)).decode()

json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=30)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=16,
)
hexes = st.text(alphabet="0123456789abcdef", max_size=70)


def _mutated(data: bytes, draw: st.DataObject) -> bytes:
    buffer = bytearray(data)
    if not buffer:
        return data
    for _ in range(draw.draw(st.integers(1, 6))):
        buffer[draw.draw(st.integers(0, len(buffer) - 1))] = draw.draw(st.integers(0, 255))
    return bytes(buffer)


def _certificate() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "teelab hub server")])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )


CERTIFICATE = _certificate()


# -- the init-data ---------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: base64.b64encode(b).decode()))
def test_any_text_as_init_data_is_a_handshake_error(annotation: str) -> None:
    with pytest.raises(HandshakeError):
        read_init_data(annotation)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_init_data_reads_or_is_a_handshake_error(data: st.DataObject) -> None:
    where = data.draw(st.sampled_from(["toml", "gzip"]))
    if where == "toml":
        blob = gzip.compress(_mutated(TOML.encode(), data))
    else:
        blob = _mutated(base64.b64decode(ANNOTATION), data)
    try:
        init_data = read_init_data(base64.b64encode(blob).decode())
    except HandshakeError:
        return
    assert len(init_data.controller) == 32 and init_data.algorithm in ("sha256", "sha384", "sha512")


@settings(max_examples=300, deadline=None)
@given(
    st.data(),
    st.dictionaries(
        st.sampled_from(["host_data", "mrconfigid", "config_id", "other"]), json_values | hexes, max_size=3
    ),
)
def test_the_init_data_controller_check_fails_closed_never_raises(
    data: st.DataObject, claims: dict[str, object]
) -> None:
    toml = data.draw(st.just(TOML) | st.just(TOML.replace("sha256", "sha512")) | st.text(max_size=200))
    if data.draw(st.booleans()):
        toml = _mutated(toml.encode(), data).decode("utf-8", "replace")
    passed, detail = check_init_data_controller(claims, toml, CONTROLLER)
    assert isinstance(detail, str)
    if passed:  # only the launch field holding this very TOML's digest passes
        digest = hashlib.sha256(toml.encode()).digest()
        assert any(
            isinstance(value, str) and bytes.fromhex(value).startswith(digest) for value in claims.values()
        )


# -- the boot request ------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["listen", "init_data", "protocol", "nonce", "attest_listen"]),
        json_values,
        max_size=3,
    )
)
def test_the_boot_requests_pod_fields_parse_or_are_a_handshake_error(change: dict[str, object]) -> None:
    request = protocol.ServerBootRequest(
        os.urandom(32), ("0.0.0.0", 8890), os.urandom(32), "alice/", ("0.0.0.0", 8891), True, ANNOTATION
    )
    try:
        parsed = protocol.ServerBootRequest.from_env(json.dumps({**json.loads(request.to_env()), **change}))
    except HandshakeError:
        return
    assert isinstance(parsed.listen, bool) and (parsed.init_data is None or isinstance(parsed.init_data, str))


# -- the front door's reply, its pod line, the hub's server record ---------------------------------------

GOOD_REPLY = {
    "version": 1,
    "evidence": base64.b64encode(b"evidence").decode(),
    "evidence_kind": "sim",
    "nonce": "11" * 32,
    "tls_spki_sha256": "22" * 32,
    "pod": {"image": "hub-pod", "hub_config_sha256": "33" * 32, "proxy_sha256": "44" * 32},
}


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from([*GOOD_REPLY, "collateral"]), json_values, max_size=3)
    | st.dictionaries(st.text(max_size=8), json_values, max_size=40).map(lambda pod: {"pod": pod})
)
def test_a_front_door_reply_parses_or_is_a_front_door_error(change: dict[str, object]) -> None:
    try:
        answer = FrontDoorEvidence.from_reply(json.dumps({**GOOD_REPLY, **change}).encode())
    except FrontDoorError:
        return
    assert answer.pod is None or all(isinstance(v, str) for v in answer.pod.values())


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_as_a_front_door_reply_are_a_front_door_error(body: bytes) -> None:
    with pytest.raises(FrontDoorError):
        FrontDoorEvidence.from_reply(body)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=20), st.text(max_size=80), max_size=8), st.booleans())
def test_the_pod_line_passes_only_over_a_verified_front_door_with_a_complete_description(
    pod: dict[str, str], verified: bool
) -> None:
    line = pod_line(pod, verified=verified)
    assert line.passed == (
        verified
        and pod.get("image") == "hub-pod"
        and len(pod.get("hub_config_sha256", "")) == 64
        and len(pod.get("proxy_sha256", "")) == 64
    )
    if not verified:
        assert all(value not in line.detail for value in pod.values() if len(value) > 3)


GOOD_RECORD = {
    "server": "alice/",
    "evidence": {"kind": "sim", "blob": base64.b64encode(b"evidence").decode()},
    "nonce": "11" * 32,
    "tls_spki_sha256": "22" * 32,
    "enclave_key": "33" * 32,
    "controller": "44" * 32,
    "init_data": ANNOTATION,
    "report_data_inputs": {"label": "teelab/hub-server/v1/hello"},
    "status": "attested",
}


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from([*GOOD_RECORD, "collateral", "servers"]), json_values, max_size=3),
    st.booleans(),
)
def test_a_hub_record_parses_or_is_a_front_door_error(change: dict[str, object], wrapped: bool) -> None:
    record = {**GOOD_RECORD, **change}
    body = {"user": "alice", "servers": [{**record, "server_name": ""}]} if wrapped else record
    try:
        ServerRecord.from_reply(json.dumps(body).encode(), "alice", "")
    except FrontDoorError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_as_a_hub_record_are_a_front_door_error(body: bytes) -> None:
    with pytest.raises(FrontDoorError):
        ServerRecord.from_reply(body, "alice", "")


# -- the re-challenge's TLS certificate and HTTP answer ----------------------------------------------------


def test_a_certificate_with_an_unknown_key_type_or_version_is_a_value_error() -> None:
    """Before: UnsupportedAlgorithm escaped challenge() (it caught ValueError, OSError, …), so a relay in the
    cluster presenting such a certificate made poll() raise instead of reporting the server unreachable."""
    ec_public_key = bytes.fromhex("06072a8648ce3d0201")  # the OID 1.2.840.10045.2.1
    assert CERTIFICATE.count(ec_public_key) == 1
    unknown = CERTIFICATE.replace(ec_public_key, bytes.fromhex("06072a8648ce3d0209"))
    with pytest.raises(ValueError, match="cannot be read"):
        peer_spki(unknown)
    version_3 = bytes.fromhex("a00302010" + "2")  # [0] EXPLICIT INTEGER 2 (v3)
    assert CERTIFICATE.count(version_3) == 1
    with pytest.raises(ValueError, match="cannot be read"):  # before: cryptography's InvalidVersion
        peer_spki(CERTIFICATE.replace(version_3, bytes.fromhex("a003020101")))
    with pytest.raises(ValueError, match="no certificate"):
        peer_spki(None)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_mutated_certificate_yields_a_key_or_a_value_error(data: st.DataObject) -> None:
    try:
        spki = peer_spki(_mutated(CERTIFICATE, data))
    except ValueError:
        return
    assert isinstance(spki, bytes)


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=300)
    | st.tuples(
        st.sampled_from([b"HTTP/1.1 200 OK", b"HTTP/1.1 404 x", b"200", b""]), st.binary(max_size=80)
    ).map(lambda parts: parts[0] + b"\r\n\r\n" + parts[1])
)
def test_an_http_answer_is_its_body_only_when_its_status_is_200(raw: bytes) -> None:
    try:
        body = answer_body(raw)
    except ValueError as error:
        assert len(str(error)) < 200  # never the answer itself
        return
    assert raw.split(b"\r\n", 1)[0].split()[1] == b"200" and raw.endswith(body)


def test_an_answer_past_the_bound_is_refused() -> None:
    with pytest.raises(ValueError, match="larger"):
        answer_body(b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * MAX_ANSWER)


# -- the pod as KubeSpawner's reflector holds it (the API server's JSON: the host's) -------------------------

POD_KEYS = ["status", "metadata", "containerStatuses", "state", "terminated", "exitCode", "name", "phase"]
POD_KEYS += ["podIP", "deletionTimestamp"]


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        json_scalars | st.sampled_from(["notebook", "Failed", "Succeeded", "10.0.0.7"]),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(
                st.sampled_from(POD_KEYS),
                inner,
                max_size=4,
            )
        ),
        max_leaves=20,
    )
)
def test_a_pods_status_of_any_shape_is_running_an_exit_code_or_failed(pod: object) -> None:
    import asyncio

    from teelab.extension.hub.kube_spawner import KubeBootProcess

    async def never() -> None:
        return None

    loop = asyncio.new_event_loop()
    try:
        boot = KubeBootProcess(lambda: {"ns/pod": pod}, "ns/pod", never, loop=loop, wait_seconds=0)
        assert boot.poll() is None or isinstance(boot.poll(), int)
        assert boot.pod_ip() is None or isinstance(boot.pod_ip(), str)
        assert isinstance(boot._exit_code(1), int)
    finally:
        loop.close()


def test_a_malformed_exit_code_is_a_failed_pod_not_an_exception() -> None:
    import asyncio

    from teelab.extension.hub.kube_spawner import KubeBootProcess

    terminated = {"name": "notebook", "state": {"terminated": {"exitCode": "x"}}}
    loop = asyncio.new_event_loop()
    try:
        for pod in ({"status": {"containerStatuses": [terminated]}}, {"status": {"containerStatuses": 5}}):
            boot = KubeBootProcess(lambda pod=pod: {"k": pod}, "k", None, loop=loop, wait_seconds=0)
            assert boot.poll() == 1  # before: ValueError / TypeError out of poll()
        boot = KubeBootProcess(
            lambda: {"k": {"status": {"podIP": ["a"]}}}, "k", None, loop=loop, wait_seconds=0
        )
        assert boot.pod_ip() is None  # before: "['a']"
    finally:
        loop.close()


# -- the front door's request (the host's environment) -----------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            ["listen_host", "listen_port", "upstream_host", "upstream_port", "hostnames", "collateral"]
        ),
        json_values | st.floats(allow_nan=True, allow_infinity=True),
        max_size=4,
    )
)
def test_a_front_door_request_parses_or_is_a_front_door_error(change: dict[str, object]) -> None:
    from teelab.extension.hub.front_door import FrontDoorRequest

    good = {
        "listen_host": "0.0.0.0",
        "listen_port": 8443,
        "upstream_host": "127.0.0.1",
        "upstream_port": 8000,
        "hostnames": ["hub.example"],
    }
    try:
        request = FrontDoorRequest.from_env(json.dumps({**good, **change}))
    except FrontDoorError:
        return
    assert 0 <= request.listen_port < 65536 and 0 <= request.upstream_port < 65536 and request.hostnames


def test_infinity_as_a_port_is_a_front_door_error() -> None:
    from teelab.extension.hub.front_door import FrontDoorRequest

    text = '{"listen_host": "0.0.0.0", "listen_port": Infinity, "upstream_host": "127.0.0.1", "upstream_port": 1,'
    with pytest.raises(FrontDoorError):  # before: OverflowError
        FrontDoorRequest.from_env(text + ' "hostnames": ["hub"]}')
