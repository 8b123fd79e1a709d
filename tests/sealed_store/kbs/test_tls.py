"""The key broker over TLS (a private CA made here), and the rule that tokens never travel in plaintext."""

from __future__ import annotations

import signal
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from teelab.enclave_runtime.sim.platform import SimPlatform, default_path
from teelab.errors import ConfigError, KeyBrokerError
from teelab.sealed_store.kbs import cli
from teelab.sealed_store.kbs.auth import ADMIN_TOKEN_FILE, read_token
from teelab.sealed_store.kbs.client import KbsClient
from teelab.sealed_store.kbs.transport import CA_ENV, KbsTarget, ServerTls

from .conftest import FakeClock, Kbs, serve_in_a_process, start_kbs
from .pki import make_pki


@pytest.fixture
def tls_kbs(tmp_path: Path, clock: FakeClock) -> tuple[Kbs, bytes]:
    ca, certificate, key = make_pki(tmp_path / "pki")
    platform = SimPlatform.open(default_path(), now=clock.now - timedelta(hours=1))
    state = tmp_path / "kbs"
    server = start_kbs(state, clock, tls_certificate=certificate, tls_key=key)
    ca_pem = ca.read_bytes()
    clients = [
        KbsClient(server.target, read_token(state / ADMIN_TOKEN_FILE), tls_ca=ca_pem, timeout=20),
        KbsClient(server.target, tls_ca=ca_pem, timeout=20),
    ]
    kbs = Kbs(server, state, clock, platform, *clients, tls_ca=ca_pem)
    yield kbs, ca_pem  # type: ignore[misc]
    kbs.close()
    server.stop(grace=0)


def test_a_whole_release_over_tls_with_a_private_ca(tls_kbs: tuple[Kbs, bytes]) -> None:
    kbs, _ = tls_kbs
    assert kbs.server.target.startswith("grpcs://127.0.0.1:")
    dek = kbs.register("sales")
    kbs.admin.grant("sales", "user:alice")
    enclave = kbs.enclave()
    assert kbs.fetch("sales", enclave, kbs.session("alice", enclave)).dek == dek


def test_the_ca_can_come_from_the_environment(
    tls_kbs: tuple[Kbs, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kbs, ca_pem = tls_kbs
    (tmp_path / "env-ca.pem").write_bytes(ca_pem)
    monkeypatch.setenv(CA_ENV, str(tmp_path / "env-ca.pem"))
    with KbsClient(kbs.server.target, read_token(kbs.state / ADMIN_TOKEN_FILE), timeout=10) as admin:
        assert admin.list_datasets() == []
    monkeypatch.setenv(CA_ENV, str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match=r"missing\.pem"):
        KbsClient(kbs.server.target)


def test_a_client_that_does_not_trust_the_certificate_or_speaks_plaintext_gets_nothing(
    tls_kbs: tuple[Kbs, bytes], tmp_path: Path
) -> None:
    kbs, _ = tls_kbs
    other_ca, _, _ = make_pki(tmp_path / "other")
    for client in (
        KbsClient(kbs.server.target, tls_ca=other_ca.read_bytes(), timeout=5),  # another CA
        KbsClient(kbs.server.target, timeout=5),  # the system's roots
        KbsClient(kbs.server.target.removeprefix("grpcs://"), timeout=5),  # plaintext to the TLS port
    ):
        with client, pytest.raises(KeyBrokerError) as refused:
            client.challenge()
        assert refused.value.reason == "unavailable"


def test_tokens_are_never_sent_in_plaintext_beyond_loopback() -> None:
    for address in ("10.1.2.3:7443", "kbs.example.org:7443", "grpc://192.168.0.9:7443", "[2001:db8::1]:7443"):
        with pytest.raises(ConfigError, match="refusing to send a key broker token in plaintext") as refused:
            KbsClient(address, token="secret-token")
        assert "secret-token" not in str(refused.value) + (refused.value.hint or "")
        assert "grpcs://" in (refused.value.hint or "")
        KbsClient(address).close()  # no token: the kernel's own calls carry only sealed material
    for address in ("127.0.0.1:7443", "localhost:7443", "[::1]:7443", "grpcs://kbs.example.org:7443"):
        KbsClient(address, token="secret-token").close()


@pytest.mark.parametrize(
    ("text", "host", "port", "tls", "loopback"),
    [
        ("127.0.0.1:7443", "127.0.0.1", 7443, False, True),
        ("grpc://localhost:1", "localhost", 1, False, True),
        ("grpcs://kbs.example.org:443", "kbs.example.org", 443, True, False),
        ("[::1]:7443", "::1", 7443, False, True),
        ("grpcs://[2001:db8::1]:7443", "2001:db8::1", 7443, True, False),
        ("127.5.6.7:9", "127.5.6.7", 9, False, True),
    ],
)
def test_addresses(text: str, host: str, port: int, tls: bool, loopback: bool) -> None:
    target = KbsTarget.parse(text)
    assert (target.host, target.port, target.tls, target.loopback) == (host, port, tls, loopback)
    assert KbsTarget.parse(str(target)) == target


@pytest.mark.parametrize(
    "text", ["", "7443", "host:", ":7443", "https://h:1", "h:99999", "h:-1", "a/b:1", "grpcs://", "h :1"]
)
def test_bad_addresses_say_what_is_wrong(text: str) -> None:
    with pytest.raises(ConfigError, match=r"key broker address|port"):
        KbsTarget.parse(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40) | st.from_regex(r"(grpcs?://)?\[?[0-9a-z.:]{0,20}\]?:[0-9]{0,7}", fullmatch=True))
def test_any_address_text_parses_or_is_a_config_error(text: str) -> None:
    try:
        target = KbsTarget.parse(text)
    except ConfigError:
        return
    assert 0 <= target.port <= 65535 and target.host


def test_server_keys_and_certificates_are_checked_with_clear_errors(tmp_path: Path) -> None:
    _, certificate, key = make_pki(tmp_path / "a")
    _, other_certificate, other_key = make_pki(tmp_path / "b")
    assert ServerTls.load(certificate, key).certificate_chain == certificate.read_bytes()
    with pytest.raises(ConfigError, match="does not belong to the certificate"):
        ServerTls.load(certificate, other_key)
    key.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by every user") as loose:
        ServerTls.load(certificate, key)
    assert loose.value.hint == f"chmod 600 {key}"
    key.chmod(0o600)
    with pytest.raises(ConfigError, match="holds no PEM certificate"):
        ServerTls.load(key, key)
    other_certificate.chmod(0o600)
    with pytest.raises(ConfigError, match="holds no unencrypted PEM private key"):
        ServerTls.load(certificate, other_certificate)
    with pytest.raises(ConfigError, match="cannot read the TLS certificate"):
        ServerTls.load(tmp_path / "nope.pem", key)


def test_serve_refuses_plaintext_beyond_loopback_and_half_a_tls_setup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "s"
    assert cli.main(["kbs", "serve", "--listen", "0.0.0.0:0", "--state", str(state)]) == 2
    err = capsys.readouterr().err
    assert "beyond loopback" in err and "--tls-cert" in err
    assert not state.exists()  # refused before any key or token was made
    _, certificate, _ = make_pki(tmp_path / "pki")
    assert cli.main(["kbs", "serve", "--tls-cert", str(certificate), "--state", str(state)]) == 2
    assert "--tls-cert and --tls-key go together" in capsys.readouterr().err


def test_serve_with_tls_records_a_grpcs_endpoint(tmp_path: Path) -> None:
    ca, certificate, key = make_pki(tmp_path / "pki")
    state = tmp_path / "kbs"
    process, lines = serve_in_a_process(
        *("--listen", "127.0.0.1:0", "--state", str(state)),
        *("--tls-cert", str(certificate), "--tls-key", str(key)),
    )
    try:
        endpoint = (state / "endpoint").read_text()
        assert endpoint.startswith("grpcs://127.0.0.1:"), "".join(lines)
        assert any("transport:   TLS" in line for line in lines)
        with KbsClient(endpoint, read_token(state / ADMIN_TOKEN_FILE), tls_ca=ca.read_bytes()) as admin:
            assert admin.list_datasets() == []
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    assert process.returncode == 0
