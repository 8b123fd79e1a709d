"""TeeSpawner across a hub restart: the verdict comes back from the hub's database (``load_state``) and the
first ``poll()`` of the new hub re-challenges the still-running server with the recorded keys."""

from __future__ import annotations

import os
from collections.abc import Iterator

import psutil
import pytest

from teelab.extension.hub.demo import HubProcess
from teelab.gateway.identity import GatewayIdentity
from tests.hub.test_tee_spawner import TeeHub, build_server_image

pytestmark = pytest.mark.slow


@pytest.fixture
def restartable_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TeeHub]:
    root = tmp_path_factory.mktemp("tee-hub-restart")
    hub = HubProcess(root)
    hub.prepare()
    build_server_image(root)
    with (root / "jupyterhub_config.py").open("a") as config:
        config.write(f"""
from teelab.extension.hub.spawner_config import configure_tee_spawner
configure_tee_spawner(c, root={str(root)!r})
c.JupyterHub.cleanup_servers = False  # servers outlive the hub process (a restart, an upgrade)
c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 0}}
c.JupyterHub.load_roles.append({{"name": "teelab-tee-test", "services": ["teelab-demo-setup"],
    "scopes": ["servers", "admin:server_state", "read:users", "proxy"]}})
""")
    hub.start()
    tee = TeeHub(hub, "", "")
    try:
        yield tee
    finally:
        try:
            tee.stop("alice")  # the hub keeps no server on its way out: stop it here
        finally:
            hub.stop()


def test_the_verdict_survives_a_hub_restart_and_the_new_hub_rechallenges(restartable_hub: TeeHub) -> None:
    hub = restartable_hub.hub
    events = restartable_hub.spawn_and_follow("alice")
    assert events[-1].get("ready") is True, events
    before = restartable_hub.verdict("alice")
    pid = restartable_hub.server("alice")["state"]["pid"]
    hub.stop()
    os.kill(pid, 0)  # the server outlived the hub
    hub.start()
    restartable_hub.wait_until("alice", ready=True)
    after = restartable_hub.verdict("alice")
    assert after["status"] == "attested" and after["enclave_key"] == before["enclave_key"]
    challenge = after["last_challenge"]  # made by the new hub's first poll, from the loaded state
    assert challenge is not None and challenge["ok"] is True, challenge
    assert challenge["answer"]["enclave_key"] == before["enclave_key"]


def test_a_hub_restarted_with_a_new_spawner_key_stops_the_server_of_the_old_one(
    restartable_hub: TeeHub,
) -> None:
    """What a restarted hub pod does (its G_s is made new in the TEE's scratch at every start), were its database
    kept: the old server's re-challenge names the old controller, fails check ``controller``, and the server is
    stopped, not trusted."""
    hub = restartable_hub.hub
    events = restartable_hub.spawn_and_follow("alice")
    assert events[-1].get("ready") is True, events
    before = restartable_hub.verdict("alice")
    pid = restartable_hub.server("alice")["state"]["pid"]
    hub.stop()
    identity = hub.root / "hub" / "spawner-identity.pem"
    identity.unlink()  # the restarted hub makes a new G_s
    hub.start()
    restartable_hub.wait_until("alice", ready=False)  # the new hub's first poll
    assert GatewayIdentity.load_or_create(identity).controller.hex() != before["controller"]
    after = restartable_hub.verdict("alice")
    assert after["status"] == "refused" and after["ok"] is False, after
    assert "controller" in after["reason"], after["reason"]
    try:  # the spawner's stop waited for the old server's TEE to end
        assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        pass
