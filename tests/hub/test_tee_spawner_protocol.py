"""``teelab/hub-server/v1`` (extension/hub/spawner_protocol.py): everything the server's boot and the spawner
decode has crossed the untrusted host. Hostile input of any shape fails only with HandshakeError; every message
survives its own encoding; the bindings and signatures of this protocol are never those of the kernel's."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st
from traitlets.config import Config

from teelab.errors import ConfigError
from teelab.extension.hub import configure_hub
from teelab.extension.hub import spawner_protocol as protocol
from teelab.extension.hub.server_boot import ServerKeys, apply_bundle
from teelab.extension.hub.spawner_config import SPAWNER_CLASS, STATE_SCOPE
from teelab.extension.hub.spawner_protocol import (
    ChallengeAnswer,
    ServerBootRequest,
    ServerBundle,
    ServerHello,
    ServerSecrets,
)
from teelab.extension.hub.tee_spawner import choose_policy
from teelab.protocols.session import HandshakeError, session_report_data, sign_bundle

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = [
    "type",
    "enclave_key",
    "tls_spki",
    "evidence",
    "protocol",
    "server",
    "env",
    "argv",
    "cwd",
    "confirm_key",
    "secrets",
    "api_token",
    "nonce",
    "respond_to",
    "controller_key",
    "attest_listen",
]
objects = st.dictionaries(
    st.sampled_from(FIELDS) | st.text(max_size=8),
    json_values
    | st.sampled_from([protocol.PROTOCOL, "server-hello", "challenge-answer", "alice/", "127.0.0.1:1"])
    | st.text(alphabet="ABCDEFabcdef0123456789+/=", max_size=90),
    max_size=10,
)


def _x25519() -> tuple[X25519PrivateKey, bytes]:
    secret = X25519PrivateKey.generate()
    return secret, secret.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _bundle(**changes: object) -> ServerBundle:
    fields: dict[str, object] = {
        "server": "alice/",
        "env": {"JUPYTERHUB_USER": "alice", "PATH": "/usr/bin"},
        "argv": ("--config=/etc/x.py",),
        "cwd": "/home/alice",
        "confirm_key": os.urandom(32),
        "secrets": ServerSecrets(api_token="t0ken", tls_cert_pem=None),
        **changes,
    }
    return ServerBundle(**fields)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(objects)
def test_hostile_objects_fail_only_with_handshake_error(data: dict[str, object]) -> None:
    for decode in (
        ServerHello.from_json,
        ChallengeAnswer.from_json,
        ServerBundle.from_json,
        ServerSecrets.from_json,
        lambda d: ServerBootRequest.from_env(json.dumps(d)),
        lambda d: protocol.parse_bundle(json.dumps(d).encode()),
    ):
        try:
            decode(data)
        except HandshakeError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_hostile_bytes_fail_only_with_handshake_error(data: bytes) -> None:
    secret, _ = _x25519()
    for decode in (
        protocol.parse_bundle,
        lambda b: protocol.unseal(secret, b"\0" * 32, b),
        lambda b: ServerBootRequest.from_env(b.decode("utf-8", "replace")),
    ):
        try:
            decode(data)
        except HandshakeError:
            pass


def test_messages_survive_their_encoding() -> None:
    _, key = _x25519()
    hello = ServerHello(key, b"spki", {"kind": "sgx-dcap-quote", "blob": "AA=="})
    assert ServerHello.from_json(json.loads(json.dumps(hello.to_json()))) == hello
    answer = ChallengeAnswer(key, b"spki", {"kind": "sgx-dcap-quote", "blob": "AA=="})
    assert ChallengeAnswer.from_json(answer.to_json()) == answer
    request = ServerBootRequest(os.urandom(32), ("127.0.0.1", 9), os.urandom(32), "alice/", ("10.0.0.2", 8))
    assert ServerBootRequest.from_env(request.to_env()) == request
    bundle = _bundle()
    assert protocol.parse_bundle(json.dumps(bundle.to_json()).encode()) == bundle
    assert "t0ken" not in repr(bundle) and "t0ken" not in repr(bundle.secrets)


@pytest.mark.parametrize("name", sorted(protocol.SECRET_ENV))
def test_a_secret_is_never_accepted_in_the_bundles_env(name: str) -> None:
    data = _bundle().to_json()
    data["env"] = {name: "x"}  # type: ignore[index]
    with pytest.raises(HandshakeError, match="secrets section"):
        ServerBundle.from_json(data)


def test_only_the_attested_key_opens_the_bundle_and_only_g_s_signed_it() -> None:
    secret, key = _x25519()
    other, _ = _x25519()
    nonce, spawner, host = os.urandom(32), Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    g_s = spawner.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    sealed = protocol.seal(key, nonce, _bundle())
    assert protocol.parse_bundle(protocol.unseal(secret, nonce, sealed)).server == "alice/"
    with pytest.raises(HandshakeError):
        protocol.unseal(other, nonce, sealed)
    with pytest.raises(HandshakeError):
        protocol.unseal(secret, os.urandom(32), sealed)  # a bundle of another spawn
    protocol.check_signature(g_s, protocol.sign(spawner, sealed, nonce, key), sealed, nonce, key)
    for signature in (
        protocol.sign(host, sealed, nonce, key),  # another controller
        protocol.sign(spawner, sealed, os.urandom(32), key),  # G_s's, for another spawn
        sign_bundle(spawner, sealed, nonce, key),  # G_s's kernel-session signature: another label
    ):
        with pytest.raises(HandshakeError, match="not authenticated"):
            protocol.check_signature(g_s, signature, sealed, nonce, key)


def test_the_bindings_are_distinct_from_each_other_and_from_a_kernel_session() -> None:
    _, key = _x25519()
    nonce = os.urandom(32)
    hello = protocol.hello_report_data(key, b"spki", nonce, "alice/")
    assert len(hello) == 64
    assert hello != protocol.challenge_report_data(key, b"spki", nonce, "alice/")
    assert hello != protocol.hello_report_data(key, b"other-spki", nonce, "alice/")
    assert hello != protocol.hello_report_data(key, b"spki", nonce, "bob/")
    assert hello != session_report_data(key, nonce)


def test_ready_confirmation_needs_the_bundles_key() -> None:
    _, key = _x25519()
    confirm, nonce = os.urandom(32), os.urandom(32)
    good = protocol.ready_confirmation(confirm, nonce, key)
    assert protocol.check_ready(confirm, nonce, key, good)
    assert not protocol.check_ready(os.urandom(32), nonce, key, good)


@pytest.mark.parametrize(
    ("user", "name"), [("", "x"), ("a/b", ""), ("a", "b/c"), ("alice", "\x00"), ("a b", "")]
)
def test_server_names_that_cannot_be_bound(user: str, name: str) -> None:
    with pytest.raises(HandshakeError):
        protocol.server_id(user, name)


def test_policy_choice_user_then_group_then_default() -> None:
    policies = {"user:carol": "c.toml", "group:analysts": "a.toml", "*": "d.toml"}
    assert choose_policy(policies, "carol", ["analysts"]).file == "c.toml"
    assert choose_policy(policies, "alice", ["analysts"]).selector == "group:analysts"
    assert choose_policy(policies, "dave", []).selector == "*"
    with pytest.raises(ConfigError, match="different server policies"):
        choose_policy({"group:a": "1.toml", "group:b": "2.toml"}, "eve", ["b", "a"])
    assert choose_policy({"group:a": "1.toml", "group:b": "1.toml"}, "eve", ["b", "a"]).file == "1.toml"
    with pytest.raises(ConfigError, match="no server attestation policy"):
        choose_policy({"group:a": "1.toml"}, "eve", [])


def test_configure_hub_with_tee_spawner(tmp_path: Path) -> None:
    c = Config()
    configure_hub(c, root=tmp_path, tee_spawner=True)
    assert c.JupyterHub.spawner_class == SPAWNER_CLASS
    assert c.TeeSpawner.policy_for == {"*": str(tmp_path / "policies" / "hub-server.toml")}
    assert c.TeeSpawner.identity_file == str(tmp_path / "hub" / "spawner-identity.pem")
    roles = {role["name"]: role for role in c.JupyterHub.load_roles}
    assert STATE_SCOPE in roles["teelab-kbs-service"]["scopes"]
    plain = Config()
    configure_hub(plain, root=tmp_path)
    assert "spawner_class" not in plain.JupyterHub
    assert (
        STATE_SCOPE
        not in {role["name"]: role for role in plain.JupyterHub.load_roles}["teelab-kbs-service"]["scopes"]
    )


def test_the_boot_sets_secrets_in_memory_and_files_only_in_the_tees_scratch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch, home = tmp_path / "teelab-tee-x", tmp_path / "home"
    scratch.mkdir()
    home.mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(os, "environ", {**os.environ, "TMPDIR": str(scratch)})
    keys = ServerKeys()
    bundle = _bundle(
        cwd=str(home),
        secrets=ServerSecrets(
            api_token="hub-t0ken", kbs_token="kbs-t0ken", tls_cert_pem="CERT", tls_ca_pem="CA"
        ),
    )
    from teelab.extension.hub import server_token

    monkeypatch.setattr(server_token, "_held", [])
    apply_bundle(bundle, keys)
    # The hub token is in no environment (kernels and terminals inherit it): in this process's memory only.
    assert "JUPYTERHUB_API_TOKEN" not in os.environ and server_token.hub_token() == "hub-t0ken"
    assert os.environ["JUPYTERHUB_USER"] == "alice"
    assert Path.cwd() == home
    files = {name: Path(os.environ[name]) for name in ("TEELAB_KBS_TOKEN_FILE", "JUPYTERHUB_SSL_KEYFILE")}
    for path in files.values():
        assert path.is_relative_to(scratch) and path.stat().st_mode & 0o077 == 0
    assert files["TEELAB_KBS_TOKEN_FILE"].read_text() == "kbs-t0ken"
    assert b"PRIVATE KEY" in files["JUPYTERHUB_SSL_KEYFILE"].read_bytes()
