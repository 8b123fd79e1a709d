"""The JupyterHub identity provider against a real JupyterHub process on loopback.

The hub (with its configurable-http-proxy, which scripts/install-system-deps.sh installs from package.json)
knows two users, hanna in group ``finance`` and ivan in none, and a service that may create their tokens. The
key broker asks the hub who owns each bearer token (``GET /hub/api/user``): the name and groups come from the
hub, never from the caller.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from teelab.errors import KeyBrokerError
from teelab.sealed_store.kbs.auth_config import AuthConfig
from teelab.sealed_store.kbs.client import KbsClient
from teelab.sealed_store.kbs.identity import HubSettings

from .conftest import GOOD, FakeClock, Kbs, open_kbs, policy_for

REPO = Path(__file__).resolve().parents[3]
SERVICE_TOKEN = "teelab-test-service-token-0123456789abcdef"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _proxy() -> str:
    for candidate in (
        REPO / "node_modules" / ".bin" / "configurable-http-proxy",
        shutil.which("configurable-http-proxy"),
    ):
        if candidate and Path(candidate).exists():
            return str(candidate)
    pytest.fail(
        "configurable-http-proxy not found: run scripts/install-system-deps.sh (npm ci in the repository)"
    )


def _api(base: str, path: str, *, token: str, method: str = "GET", body: object = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"{base}{path}", data=data, method=method, headers={"Authorization": f"token {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        text = answer.read()
    return json.loads(text) if text else None


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running hub; yields its API URL."""
    folder = tmp_path_factory.mktemp("hub")
    hub_port, proxy_port, proxy_api = _free_port(), _free_port(), _free_port()
    config = f"""
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {proxy_port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api}"
c.ConfigurableHTTPProxy.command = [{_proxy()!r}]
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allowed_users = {{"hanna", "ivan"}}
c.JupyterHub.db_url = "sqlite:///{folder}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{folder}/cookie_secret"
c.JupyterHub.pid_file = "{folder}/hub.pid"
c.JupyterHub.load_groups = {{"finance": {{"users": ["hanna"]}}}}
c.JupyterHub.services = [{{"name": "issuer", "api_token": {SERVICE_TOKEN!r}}}]
c.JupyterHub.load_roles = [{{"name": "issuer", "scopes": ["tokens", "read:users"], "services": ["issuer"]}}]
"""
    (folder / "jupyterhub_config.py").write_text(config)
    log = (folder / "hub.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyterhub", "-f", str(folder / "jupyterhub_config.py")],
        cwd=folder,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "JUPYTERHUB_CRYPT_KEY": ""},
    )
    api = f"http://127.0.0.1:{hub_port}/hub/api"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                _api(api, "/", token=SERVICE_TOKEN)
                break
            except (urllib.error.URLError, OSError):
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the hub did not start: {(folder / 'hub.log').read_text()[-3000:]}")
                time.sleep(0.2)
        yield api
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _user_token(api: str, user: str) -> str:
    created = _api(
        api, f"/users/{user}/tokens", token=SERVICE_TOKEN, method="POST", body={"note": "kbs test"}
    )
    return str(created["token"])


@pytest.fixture
def hub_kbs(hub: str, tmp_path: Path, clock: FakeClock, kbs: Kbs) -> Iterator[Kbs]:
    auth = AuthConfig(providers=("jupyterhub",), jupyterhub=HubSettings(api_url=hub, cache_seconds=60))
    state = tmp_path / "hub-kbs"
    world = open_kbs(state, clock, kbs.platform, auth=auth)
    try:
        yield world
    finally:
        world.close()
        world.server.stop(grace=0)


def _reason(call: Any) -> str:
    with pytest.raises(KeyBrokerError) as caught:
        call()
    return caught.value.reason


def test_hub_tokens_name_the_hub_user_and_its_groups(hub: str, hub_kbs: Kbs) -> None:
    kbs = hub_kbs
    hanna_token, ivan_token = _user_token(hub, "hanna"), _user_token(hub, "ivan")
    with KbsClient(kbs.server.target, hanna_token) as hanna, KbsClient(kbs.server.target, ivan_token) as ivan:
        # hanna registers a dataset owned by her hub group: the KBS takes "finance" from the hub.
        hanna.register_dataset(
            "ledger",
            1,
            manifest_sha256="0" * 64,
            dek=b"k" * 32,
            release_policy_toml=policy_for(GOOD),
            owner="group:finance",
        )
        assert hanna.grant("ledger", "user:hanna").principal == "user:hanna"
        # ivan, in no group, may not administer it nor ask for hanna's grants.
        assert _reason(lambda: ivan.grant("ledger", "user:ivan")) == "forbidden"
        assert _reason(lambda: ivan.issue_session_grant("hanna", enclave_key_hash="ab" * 32)) == "forbidden"
        grant = hanna.issue_session_grant(enclave_key_hash="ab" * 32)
        assert grant.grant_id
    issued = kbs.admin.audit().records[-1].entry()
    assert (issued["actor"], issued["groups"]) == ("user:hanna", ["finance"])
    # A token the hub does not know, and the service's own token (not a user), authenticate no one.
    for token in ("not-a-hub-token", SERVICE_TOKEN):
        with KbsClient(kbs.server.target, token) as stranger:
            assert _reason(lambda: stranger.list_datasets()) == "unauthenticated"


def test_a_revoked_hub_token_stops_working_when_the_cache_expires(hub: str, hub_kbs: Kbs) -> None:
    kbs = hub_kbs
    token = _user_token(hub, "ivan")
    with KbsClient(kbs.server.target, token) as ivan:
        assert ivan.list_datasets() == []
        tokens = _api(hub, "/users/ivan/tokens", token=SERVICE_TOKEN)["api_tokens"]
        for entry in tokens:
            _api(hub, f"/users/ivan/tokens/{entry['id']}", token=SERVICE_TOKEN, method="DELETE")
        assert ivan.list_datasets() == []  # still cached (60 s)
        kbs.clock.advance(seconds=61)
        assert _reason(lambda: ivan.list_datasets()) == "unauthenticated"
