"""``teelab hub verify`` end to end: a real JupyterHub with configurable-http-proxy and TeeSpawner (sim TEE),
the attested front door in front of the proxy, and alice verifying the front door and her own server with the
CLI, over one TLS connection, with her own hub token and her own policies."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from teelab.cli import main as teelab_main
from teelab.enclave_runtime.backends import get_backend
from teelab.extension.hub.demo import HubProcess
from teelab.extension.hub.front_door_launch import (
    RunningFrontDoor,
    build_front_door_image,
    front_door_policy_text,
    launch_front_door,
)

pytestmark = pytest.mark.slow

WAIT_SECONDS = 180.0


@dataclass
class HostedHub:
    hub: HubProcess
    front_door: RunningFrontDoor
    front_door_policy: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.front_door.port}"


def _wait_ready(hub: HubProcess, user: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        server = (hub.api("GET", f"users/{user}").get("servers") or {}).get("")
        if server and server.get("ready"):
            return
        time.sleep(0.5)
    raise AssertionError(f"{user}'s server did not become ready")


@pytest.fixture(scope="module")
def hosted(tmp_path_factory: pytest.TempPathFactory, shared_cache_dir: Path) -> Iterator[HostedHub]:
    root = tmp_path_factory.mktemp("hosted-hub")
    hub = HubProcess(root)
    hub.prepare()
    with (root / "jupyterhub_config.py").open("a") as config:
        config.write(f"""
from teelab.extension.hub.spawner_config import configure_tee_spawner
configure_tee_spawner(c, root={str(root)!r})
c.JupyterHub.load_roles.append({{"name": "teelab-verify-test", "services": ["teelab-demo-setup"],
    "scopes": ["servers", "read:users"]}})
""")
    hub.start()
    try:
        # Each image is built right before its launch: the checkout is shared with engineers editing trusted
        # files, and a launch refuses an image whose files changed since it was built.
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("TEELAB_DATA_DIR", str(root / "data"))  # the hub's simulated platform
            patch.setenv("TEELAB_CACHE_DIR", str(shared_cache_dir))
            backend = get_backend("sim")
            image = build_front_door_image(backend)
            policy = root / "front-door.toml"
            policy.write_text(front_door_policy_text(image, simulated=True))
            running = launch_front_door(backend, image, upstream=("127.0.0.1", hub.port))
        try:
            built = subprocess.run(
                [sys.executable, "-m", "teelab.extension.hub.spawner_image", str(root)],
                env={**os.environ, "TEELAB_DATA_DIR": str(root / "data")},
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert built.returncode == 0, built.stderr
            hub.api("POST", "users/alice/server")
            _wait_ready(hub, "alice")
            yield HostedHub(hub, running, policy)
        finally:
            running.stop()
    finally:
        hub.stop()


def test_alice_verifies_the_front_door_and_her_own_server_through_it(
    hosted: HostedHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TEELAB_DATA_DIR", str(hosted.hub.root / "data"))
    token = tmp_path / "alice-token"
    token.write_text(hosted.hub.user_token("alice", "teelab hub verify"))
    argv = [
        "hub", "verify", hosted.url, "--policy", str(hosted.front_door_policy),
        "--user", "alice", "--token-file", str(token),
        "--server-policy", str(hosted.hub.root / "policies" / "hub-server.toml"),
        "--pin-file", str(tmp_path / "pins.json"),
    ]  # fmt: skip
    status = teelab_main(argv)
    captured = capsys.readouterr()
    assert status == 0, captured.out + captured.err
    lines = captured.out.splitlines()
    assert all(line.startswith("✓ ") for line in lines[:-1]), captured.out
    assert any(line.startswith("✓ server binding:") and "'alice/'" in line for line in lines)
    assert any(line.startswith("✓ server record:") and "attested" in line for line in lines)
    assert token.read_text() not in captured.out + captured.err


def test_bob_cannot_verify_alices_server_with_his_token(
    hosted: HostedHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TEELAB_DATA_DIR", str(hosted.hub.root / "data"))
    token = tmp_path / "bob-token"
    token.write_text(hosted.hub.user_token("bob", "teelab hub verify"))
    argv = [
        "hub", "verify", hosted.url, "--policy", str(hosted.front_door_policy),
        "--user", "alice", "--token-file", str(token), "--pin-file", str(tmp_path / "pins.json"),
    ]  # fmt: skip
    assert teelab_main(argv) == 1
    assert "✗ server record: the hub's service answered HTTP 403" in capsys.readouterr().out
