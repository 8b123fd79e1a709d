"""Each identity provider against a real counterpart: local tokens issued by the broker, and an OIDC issuer
whose JWKS is served over HTTP on loopback by the test (keys rotate; tokens of another issuer, audience,
key or time are refused)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from teelab.errors import ConfigError, KeyBrokerError
from teelab.sealed_store.kbs.auth import read_token
from teelab.sealed_store.kbs.auth_config import AuthConfig, parse_auth
from teelab.sealed_store.kbs.client import KbsClient
from teelab.sealed_store.kbs.identity import OidcSettings, issue_local_token

from .conftest import FakeClock, Kbs, open_kbs

ISSUER = "https://id.example.test/realms/lab"
AUDIENCE = "teelab-kbs"


def _reason(call: Any) -> str:
    with pytest.raises(KeyBrokerError) as caught:
        call()
    return caught.value.reason


# -- local tokens -------------------------------------------------------------------------------------


def test_local_tokens_name_their_user_and_a_renewed_token_revokes_the_old(kbs: Kbs) -> None:
    old = read_token(issue_local_token(kbs.state, "dora"))
    with KbsClient(kbs.server.target, old) as dora:
        assert dora.issue_session_grant(enclave_key_hash="cd" * 32).grant_id
        entry = kbs.admin.audit().records[-1].entry()
        assert (entry["event"], entry["user"], entry["actor"]) == ("session_grant", "dora", "user:dora")
        new = read_token(issue_local_token(kbs.state, "dora", replace=True))
        assert new != old
        assert _reason(lambda: dora.issue_session_grant(enclave_key_hash="cd" * 32)) == "unauthenticated"
    with KbsClient(kbs.server.target, new) as dora:
        assert dora.list_datasets() == []
    # A deleted token file is a revoked user.
    (kbs.state / "users" / "dora.token").unlink()
    (kbs.state / "users").touch()
    with KbsClient(kbs.server.target, new) as dora:
        assert _reason(lambda: dora.list_datasets()) == "unauthenticated"


def test_the_serving_user_has_a_token_with_no_setup(kbs: Kbs) -> None:
    import getpass

    mine = kbs.state / "users" / f"{getpass.getuser()}.token"
    with KbsClient(kbs.server.target, read_token(mine)) as me:
        assert me.issue_session_grant(enclave_key_hash="ef" * 32).grant_id


# -- OIDC ---------------------------------------------------------------------------------------------


class Issuer:
    """An OIDC issuer's signing keys, with its JWKS document served on loopback."""

    def __init__(self) -> None:
        self.keys = {"k1": rsa.generate_private_key(public_exponent=65537, key_size=2048)}
        self.fetches = 0
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                issuer.fetches += 1
                keys = []
                for kid, key in issuer.keys.items():
                    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
                    keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
                body = json.dumps({"keys": keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.jwks_url = f"http://127.0.0.1:{self.server.server_address[1]}/certs"

    def token(self, clock: FakeClock, *, kid: str = "k1", key: Any = None, **claims: Any) -> str:
        now = int(clock.now.timestamp())
        body = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "preferred_username": "olga",
            "groups": ["/analysts", "bad group"],
            "iat": now,
            "exp": now + 300,
            **claims,
        }
        return jwt.encode(body, key or self.keys[kid], algorithm="RS256", headers={"kid": kid})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def oidc(tmp_path: Path, clock: FakeClock, kbs: Kbs) -> Iterator[tuple[Kbs, Issuer]]:
    issuer = Issuer()
    auth = AuthConfig(
        providers=("oidc",),
        # No refetch cooldown: the rotation test rotates at once (the default waits 30 s between refetches).
        oidc=OidcSettings(
            issuer=ISSUER, audience=AUDIENCE, jwks_url=issuer.jwks_url, jwks_refresh_cooldown_seconds=0
        ),
        junk_burst=1 << 30,
    )
    state = tmp_path / "oidc-kbs"
    world = open_kbs(state, clock, kbs.platform, auth=auth)
    try:
        yield world, issuer
    finally:
        world.close()
        world.server.stop(grace=0)
        issuer.close()


def test_an_oidc_token_authenticates_its_user_and_groups(oidc: tuple[Kbs, Issuer]) -> None:
    kbs, issuer = oidc
    assert not (kbs.state / "users").exists()  # only the configured provider: no local tokens issued
    kbs.register("sales")
    kbs.admin.grant("sales", "group:analysts")  # a group only the identity provider knows about
    enclave = kbs.enclave()
    with KbsClient(kbs.server.target, issuer.token(kbs.clock)) as olga:
        grant = olga.issue_session_grant(enclave_key=enclave.public)
        assert [d.name for d in olga.list_datasets()] == ["sales"]  # readable through the IdP's group
    assert kbs.fetch("sales", enclave, grant.token).version == 1
    entry = kbs.admin.audit().records[-2].entry()
    assert entry["event"] == "session_grant" and entry["groups"] == ["analysts"]


@pytest.mark.parametrize(
    "variant",
    ["another issuer", "another audience", "expired", "not yet valid", "unknown key", "no user", "not a jwt"],
)
def test_oidc_tokens_that_do_not_verify_are_refused(oidc: tuple[Kbs, Issuer], variant: str) -> None:
    kbs, issuer = oidc
    now = int(kbs.clock.now.timestamp())
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = {
        "another issuer": lambda: issuer.token(kbs.clock, iss="https://evil.example.test"),
        "another audience": lambda: issuer.token(kbs.clock, aud="some-other-service"),
        "expired": lambda: issuer.token(kbs.clock, exp=now - 60),
        "not yet valid": lambda: issuer.token(kbs.clock, nbf=now + 3600),
        "unknown key": lambda: issuer.token(kbs.clock, key=stranger),
        "no user": lambda: issuer.token(kbs.clock, preferred_username=None),
        "not a jwt": lambda: "opaque-token",
    }[variant]()
    with KbsClient(kbs.server.target, token) as caller:
        assert _reason(lambda: caller.issue_session_grant(enclave_key_hash="ab" * 32)) == "unauthenticated"


def test_the_jwks_is_cached_and_refetched_for_a_new_key(oidc: tuple[Kbs, Issuer]) -> None:
    kbs, issuer = oidc
    for _ in range(3):
        with KbsClient(kbs.server.target, issuer.token(kbs.clock)) as olga:
            olga.list_datasets()
    assert issuer.fetches == 1
    issuer.keys["k2"] = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # key rotation
    with KbsClient(kbs.server.target, issuer.token(kbs.clock, kid="k2")) as olga:
        olga.list_datasets()
    assert issuer.fetches == 2
    # Expiry follows the broker's clock, not the wall clock.
    token = issuer.token(kbs.clock)
    kbs.clock.advance(minutes=10)
    with KbsClient(kbs.server.target, token) as olga:
        assert _reason(lambda: olga.list_datasets()) == "unauthenticated"
    kbs.clock.advance(minutes=-10)


def test_the_auth_config_is_checked() -> None:
    assert parse_auth({}).providers == ("local",)
    hub = parse_auth(
        {"providers": ["jupyterhub"], "jupyterhub": {"api_url": "http://127.0.0.1:8081/hub/api"}}
    )
    assert hub.jupyterhub is not None and hub.jupyterhub.cache_seconds == 60
    for bad in (
        {"providers": ["ldap"]},
        {"providers": ["oidc"]},
        {"providers": ["oidc"], "oidc": {"issuer": "x", "audience": "y", "jwks_url": "file:///etc/passwd"}},
        {"providers": ["jupyterhub"], "jupyterhub": {"api_url": "ftp://hub"}},
        {"admins": ["x"]},
        {"junk_burst": 0},
    ):
        with pytest.raises(ConfigError):
            parse_auth(bad)
