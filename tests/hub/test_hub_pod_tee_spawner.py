"""The whole chain a user checks, with the hub inside the pod: a real JupyterHub with TeeSpawner and
configurable-http-proxy in the hub pod (sim TEE), alice signing in and spawning through the pod's front door, and
`teelab hub verify --user alice` verifying the pod (hub and proxy in its measurement) and then her own server,
over the one verified TLS connection."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests
import urllib3

from teelab.cli import main as teelab_main
from teelab.enclave_runtime.backends import get_backend
from teelab.extension.hub.deploy import hub_pod_config_text, write_demo_root
from teelab.extension.hub.front_door_launch import front_door_policy_text
from teelab.extension.hub.hub_pod_image import build_hub_pod_image, launch_hub_pod

pytestmark = pytest.mark.slow

PASSWORD = "teelab-pod-demo"
SPAWN_SECONDS = 180.0
SECRET_NAMES = {
    b"CONFIGPROXY_AUTH_TOKEN",
    b"JPY_COOKIE_SECRET",
    b"JUPYTERHUB_CRYPT_KEY",
    b"JUPYTERHUB_API_TOKEN",
}


def _run(argv: list[str], root: Path) -> None:
    done = subprocess.run(
        argv,
        env={**os.environ, "TEELAB_DATA_DIR": str(root / "data")},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr or done.stdout


def test_alice_verifies_the_hub_pod_and_her_attested_server_through_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "root"
    write_demo_root(root, PASSWORD)
    teelab = str(Path(sys.executable).with_name("teelab"))
    _run([teelab, "hub", "setup", "--root", str(root)], root)  # the kernel's image, policy and kernelspec
    _run([sys.executable, "-m", "teelab.extension.hub.spawner_image", str(root)], root)  # the server's image
    config = root / "jupyterhub_config.py"
    config.write_text(hub_pod_config_text(root, tee_spawner=True))
    monkeypatch.setenv("TEELAB_DATA_DIR", str(root / "data"))
    backend = get_backend("sim")
    image = build_hub_pod_image(backend, config, out=root / "pod-image")
    policy = tmp_path / "hub-pod.toml"
    policy.write_text(front_door_policy_text(image, simulated=True))
    running = launch_hub_pod(backend, image)
    url = f"https://127.0.0.1:{running.port}"
    try:
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        session = requests.Session()
        # Self-signed: `teelab hub verify` below is what checks this key. Per request: requests prefers
        # REQUESTS_CA_BUNDLE from the environment over a session's own verify.
        session.request = functools.partial(session.request, verify=False)  # type: ignore[method-assign]
        session.get(f"{url}/hub/login", timeout=30)
        xsrf = session.cookies.get("_xsrf", path="/hub/") or ""
        login = session.post(
            f"{url}/hub/login",
            data={"username": "alice", "password": PASSWORD, "_xsrf": xsrf},
            allow_redirects=False,
            timeout=30,
        )
        assert login.status_code == 302, login.text
        api = {"X-XSRFToken": xsrf}
        session.get(f"{url}/hub/spawn", timeout=60)
        deadline = time.monotonic() + SPAWN_SECONDS
        while time.monotonic() < deadline:
            server = (
                session.get(f"{url}/hub/api/user", headers=api, timeout=30).json().get("servers") or {}
            ).get("")
            if server and server.get("ready"):
                break
            time.sleep(0.5)
        else:
            raise AssertionError("alice's attested server did not become ready")
        # With TeeSpawner no process of the pod — alice's attested server included — has a secret in its
        # environment: the server's token is sealed to it (the simple spawner's test must leave its server out).
        pod_processes = psutil.Process(running.process.popen.pid).children(recursive=True)
        assert any(b"server_boot" in Path(f"/proc/{p.pid}/cmdline").read_bytes() for p in pod_processes)
        for process in pod_processes:
            environ = Path(f"/proc/{process.pid}/environ").read_bytes()
            names = {entry.split(b"=", 1)[0] for entry in environ.split(b"\0") if entry}
            assert not names & SECRET_NAMES, (process.cmdline(), names & SECRET_NAMES)
        # The hub set a new XSRF cookie for the signed-in user: the token request carries that one.
        session.get(f"{url}/hub/token", timeout=30)
        fresh = {"X-XSRFToken": session.cookies.get("_xsrf", path="/hub/") or ""}
        minted = session.post(
            f"{url}/hub/api/users/alice/tokens",
            headers=fresh,
            json={"note": "teelab hub verify", "expires_in": 3600},
            timeout=30,
        )
        assert minted.status_code == 201, minted.text
        token = tmp_path / "alice-token"
        token.write_text(minted.json()["token"])
        argv = [
            "hub", "verify", url, "--policy", str(policy),
            "--user", "alice", "--token-file", str(token),
            "--server-policy", str(root / "policies" / "hub-server.toml"),
            "--pin-file", str(tmp_path / "pins.json"),
        ]  # fmt: skip
        status = teelab_main(argv)
        captured = capsys.readouterr()
    finally:
        running.stop()
    assert status == 0, captured.out + captured.err
    lines = captured.out.splitlines()
    assert all(line.startswith("✓ ") for line in lines[:-1]), captured.out
    assert any(line.startswith("✓ hub pod: hub, proxy and service measured") for line in lines), captured.out
    assert any(line.startswith("✓ server binding:") and "'alice/'" in line for line in lines), captured.out
    assert any(line.startswith("✓ server controller:") for line in lines), captured.out
    assert token.read_text() not in captured.out + captured.err
