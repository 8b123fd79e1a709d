"""TeeSpawner on a real JupyterHub with configurable-http-proxy and the simulated TEE.

One hub for the module; every single-user server is launched through the sim backend as the measured
``teelab-hub-server`` image, attested by the spawner and only then given its secrets. alice's server is
attested (progress, state, no secret in the host's view, the service's verdict API); carol's policy pins
another measurement (her spawn fails and the proxy never routes to her); bob's host answers re-challenges with
another enclave (poll stops his server). Servers are spawned one at a time and stopped after their test.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from teelab.enclave_runtime.backend import Evidence
from teelab.enclave_runtime.sim.backend import SimBackend
from teelab.extension.hub import spawner_protocol as protocol
from teelab.extension.hub.demo import HubProcess, free_port
from teelab.gateway.policy import load_policy
from teelab.gateway.session import backend_anchors
from teelab.gateway.verifier import verify_evidence
from teelab.timeutil import utcnow

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
WAIT_SECONDS = 180.0


@dataclass
class TeeHub:
    hub: HubProcess
    proxy_api: str
    proxy_token: str

    def routes(self) -> dict[str, Any]:
        answer = requests.get(
            f"{self.proxy_api}/api/routes", headers={"Authorization": f"token {self.proxy_token}"}, timeout=30
        )
        answer.raise_for_status()
        return dict(answer.json())

    def user(self, name: str) -> dict[str, Any]:
        return dict(self.hub.api("GET", f"users/{name}?include_stopped_servers=1"))

    def server(self, name: str) -> dict[str, Any]:
        return dict((self.user(name).get("servers") or {}).get("", {}))

    def verdict(self, name: str) -> dict[str, Any]:
        return dict(self.server(name)["state"]["teelab_attestation"])

    def spawn_and_follow(self, name: str) -> list[dict[str, Any]]:
        """Request the server and read its progress stream to the end (the page's view of the spawn)."""
        build_server_image(self.hub.root)
        self.hub.api("POST", f"users/{name}/server")
        events = []
        with requests.get(
            f"{self.hub.url}/hub/api/users/{name}/server/progress",
            headers={"Authorization": f"token {self.hub.setup_token}"},
            stream=True,
            timeout=WAIT_SECONDS,
        ) as stream:
            for line in stream.iter_lines(decode_unicode=True):
                if line and line.startswith("data:"):
                    event = json.loads(line[5:])
                    events.append(event)
                    if event.get("ready") or event.get("failed"):
                        break
        return events

    def wait_until(self, name: str, *, ready: bool) -> None:
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            server = (self.hub.api("GET", f"users/{name}").get("servers") or {}).get("")
            if (bool(server) and server.get("ready")) == ready and not (server or {}).get("pending"):
                return
            time.sleep(0.5)
        raise AssertionError(f"{name}'s server did not become {'ready' if ready else 'stopped'}")

    def stop(self, name: str) -> None:
        if (self.hub.api("GET", f"users/{name}").get("servers") or {}).get(""):
            self.hub.api("DELETE", f"users/{name}/server")
            self.wait_until(name, ready=False)


def build_server_image(root: Path) -> None:
    """The server image and its policy, as `teelab hub setup` would make them. Made again right before each
    spawn: the image measures this checkout, which other work may edit while the module runs. Servers
    attested under an earlier build stay allowed (as an operator rolls out a new image; a policy that no longer
    allows a running server's measurement stops it at its next re-challenge), and the policy is replaced in one
    step: the hub reads it at every re-challenge."""
    policy, staged = root / "policies" / "hub-server.toml", root / "policies" / ".hub-server.toml.new"
    built = subprocess.run(
        [sys.executable, "-m", "teelab.extension.hub.spawner_image", str(root), "--policy", str(staged)],
        env={**os.environ, "TEELAB_DATA_DIR": str(root / "data")},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr
    before = tomllib.loads(policy.read_text())["sgx"]["mrenclave"] if policy.exists() else []
    text = staged.read_text()
    allowed = json.dumps(list(dict.fromkeys([*tomllib.loads(text)["sgx"]["mrenclave"], *before])))
    staged.write_text(re.sub(r"(?m)^mrenclave = .*$", lambda _: f"mrenclave = {allowed}", text))
    staged.replace(policy)


def _wrong_policy(good: Path, target: Path) -> None:
    """The server policy with only another measurement pinned: every genuine server fails it."""
    text = re.sub(r"(?m)^mrenclave = .*$", lambda _: f'mrenclave = ["{"ab" * 32}"]', good.read_text())
    target.write_text(text.replace('id = "hub-server"', 'id = "wrong-measurement"'))


@pytest.fixture(scope="module")
def tee_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TeeHub]:
    root = tmp_path_factory.mktemp("tee-hub")
    hub = HubProcess(root)
    hub.prepare()
    build_server_image(root)
    good = root / "policies" / "hub-server.toml"
    _wrong_policy(good, root / "policies" / "wrong.toml")
    proxy_api, proxy_token = f"http://127.0.0.1:{free_port()}", secrets.token_hex(16)
    with (root / "jupyterhub_config.py").open("a") as config:
        config.write(f"""
sys.path.insert(0, {str(REPO)!r})  # the hostile host of these tests (tests/hub/tee_spawner_hostile.py)
from teelab.extension.hub.spawner_config import configure_tee_spawner
configure_tee_spawner(
    c,
    root={str(root)!r},
    policy_for={{"user:carol": {str(root / "policies" / "wrong.toml")!r}, "group:analysts": {str(good)!r}}},
    spawner_class="tests.hub.tee_spawner_hostile.HostileHostSpawner",
)
c.ConfigurableHTTPProxy.api_url = {proxy_api!r}
c.ConfigurableHTTPProxy.auth_token = {proxy_token!r}
c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 0}}
c.Spawner.poll_interval = 3
c.TeeSpawner.kbs_credential = lambda spawner: "kbs-credential-of-" + spawner.user.name
c.JupyterHub.load_roles.append({{"name": "teelab-tee-test", "services": ["teelab-demo-setup"],
    "scopes": ["servers", "admin:server_state", "read:users", "proxy"]}})
""")
    hub.start()
    try:
        yield TeeHub(hub, proxy_api, proxy_token)
    finally:
        hub.stop()


@pytest.fixture(scope="module")
def alice(tee_hub: TeeHub) -> Iterator[list[dict[str, Any]]]:
    """alice's server, spawned once for the module: the progress events the spawn page showed."""
    events = tee_hub.spawn_and_follow("alice")
    try:
        yield events
    finally:
        tee_hub.stop("alice")


def test_alice_server_is_attested_step_by_step_and_the_verdict_is_in_its_state(
    tee_hub: TeeHub, alice: list[dict[str, Any]]
) -> None:
    messages = [event.get("message", "") for event in alice]
    assert alice[-1].get("ready") is True, messages
    order = [
        "Launched the server's boot",
        "Evidence received",
        "Evidence verified against policy hub-server",
        "Controller checked",
        "Secrets sealed",
        "Server ready",
    ]
    found = [next(i for i, m in enumerate(messages) if m.startswith(step)) for step in order]
    assert found == sorted(found), messages
    verdict = tee_hub.verdict("alice")
    assert verdict["status"] == "attested" and verdict["ok"] is True and verdict["simulated"] is True
    assert verdict["policy"]["selector"] == "group:analysts" and verdict["policy"]["id"] == "hub-server"
    assert {c["name"]: c["passed"] for c in verdict["checks"]}["controller"] is True
    assert "/user/alice" in tee_hub.routes()
    # What part 2's `teelab hub verify` does: re-verify the stored evidence from its own inputs.
    inputs = verdict["report_data_inputs"]
    spki = protocol.unb64(verdict["tls_spki"], "tls_spki")
    assert hashlib.sha256(spki).hexdigest() == verdict["tls_spki_sha256"] == inputs["tls_spki_sha256"]
    report_data = protocol.hello_report_data(
        bytes.fromhex(inputs["enclave_key"]), spki, bytes.fromhex(verdict["nonce"]), inputs["server"]
    )
    assert report_data.hex() == verdict["report_data"] and inputs["server"] == "alice/"
    backend = SimBackend(tee_hub.hub.root / "data" / "sim-platform")
    evidence = Evidence.from_json(verdict["evidence"])
    again = verify_evidence(
        evidence.blob,
        collateral=backend.collateral_for(evidence.blob, utcnow()),
        at=utcnow(),
        anchors=backend_anchors(backend),
        policy=load_policy(tee_hub.hub.root / "policies" / "hub-server.toml"),
        expected_report_data=report_data,
        expected_controller=bytes.fromhex(verdict["controller"]),
    )
    assert again.ok, again.error
    assert again.claims["mrenclave"] == verdict["measurement"]["value"]


def test_no_secret_in_the_hosts_view_of_the_server(tee_hub: TeeHub, alice: list[dict[str, Any]]) -> None:
    pid = tee_hub.server("alice")["state"]["pid"]
    environ = dict(
        entry.split(b"=", 1) for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if entry
    )
    names = {name.decode() for name in environ}
    assert not names & protocol.SECRET_ENV, names
    # Only the measured image's environment, the boot request and the simulated loader's descriptor.
    assert not {n for n in names if n.startswith("JUPYTERHUB_")}, names
    request = protocol.ServerBootRequest.from_env(environ[protocol.REQUEST_ENV.encode()].decode())
    assert request.server == "alice/"
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[1:4] == [b"-s", b"-m", b"teelab.extension.hub.server_boot"], cmdline
    credential = b"kbs-credential-of-alice"
    assert credential not in b"\0".join(environ.values()) and credential not in b"\0".join(cmdline)
    # The key broker credential reached the server sealed, as a 0600 file in its TEE's scratch space (a tmpfs
    # in a confidential VM; on the simulated TEE a host folder, like all of its memory).
    (token_file,) = Path(environ[b"TMPDIR"].decode()).glob("teelab-server/kbs-token")
    assert token_file.read_bytes() == credential and token_file.stat().st_mode & 0o077 == 0
    # Yet the server holds its hub token (in memory): it checks a token of alice's with the hub.
    token = tee_hub.hub.user_token("alice", "test: the server authenticates through the hub")
    status = requests.get(
        f"{tee_hub.hub.url}/user/alice/api/status", headers={"Authorization": f"token {token}"}, timeout=60
    )
    assert status.status_code == 200, status.text


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started (their /proc/<pid>/stat's parent field)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_user_code_in_the_server_sees_no_hub_token_and_cannot_open_a_terminal(
    tee_hub: TeeHub, alice: list[dict[str, Any]]
) -> None:
    """Terminals are off (the sealed argv's --ServerApp.terminals_enabled=False; c.TeeSpawner.allow_terminals
    turns them on), and a kernel the server starts in its own process tree (a plain python3 kernel, which
    inherits the server's os.environ) finds no hub token in its environment: the boot never put it there."""
    from teelab.extension.hub.client import HubUser

    user = HubUser(tee_hub.hub, "alice")
    assert user.login().status_code == 302
    user.session.get(user.server_url("lab"), timeout=60).raise_for_status()  # OAuth: the server's cookie
    assert user.request("GET", "api/terminals").status_code == 404
    assert user.request("POST", "api/terminals").status_code in (403, 404)
    server_pid = tee_hub.server("alice")["state"]["pid"]
    before = set(_children(server_pid))
    kernel = user.start_kernel("python3")["id"]
    try:
        output, reply = user.run_cell(
            kernel,
            "import os\n"
            "print([n for n in ('JUPYTERHUB_API_TOKEN', 'JPY_API_TOKEN') if n in os.environ],"
            " os.environ.get('JUPYTERHUB_USER'))",
        )
        assert reply["status"] == "ok", output
        assert output.strip() == "[] alice", output  # the server's environment, without its token
        (kernel_pid,) = set(_children(server_pid)) - before
        environ = Path(f"/proc/{kernel_pid}/environ").read_bytes()
        assert b"ipykernel" in Path(f"/proc/{kernel_pid}/cmdline").read_bytes()
        assert b"JUPYTERHUB_API_TOKEN=" not in environ and b"JPY_API_TOKEN=" not in environ
    finally:
        user.request("DELETE", f"api/kernels/{kernel}")
    # The server itself still holds its token: it authenticates alice through the hub (above, and here).
    assert user.request("GET", "api/status").status_code == 200


def _service(tee_hub: TeeHub, user: str, path: str) -> requests.Response:
    token = tee_hub.hub.user_token(user, f"test: teelab-kbs {path}")
    return requests.get(
        f"{tee_hub.hub.url}/services/teelab-kbs/{path}",
        headers={"Authorization": f"token {token}"},
        timeout=60,
    )


def test_the_service_shows_the_verdict_to_its_user_and_the_operators_only(
    tee_hub: TeeHub, alice: list[dict[str, Any]]
) -> None:
    own = _service(tee_hub, "alice", "api/servers/alice")
    assert own.status_code == 200, own.text
    (server,) = own.json()["servers"]
    stored = tee_hub.verdict("alice")
    for key in ("evidence", "nonce", "report_data", "report_data_inputs", "tls_spki_sha256", "measurement"):
        assert server[key] == stored[key], key
    assert server["ready"] is True and server["status"] == "attested"
    assert _service(tee_hub, "bob", "api/servers/alice").status_code == 403
    assert _service(tee_hub, "alice", "api/servers").status_code == 403
    every = _service(tee_hub, "carol", "api/servers")  # carol operates the broker
    assert every.status_code == 200, every.text
    assert every.json()["users"]["alice"][0]["tls_spki_sha256"] == stored["tls_spki_sha256"]
    page = _service(tee_hub, "carol", "servers")
    assert page.status_code == 200 and stored["tls_spki_sha256"] in page.text


def test_poll_rechallenges_the_server_and_it_answers_with_its_attested_key(
    tee_hub: TeeHub, alice: list[dict[str, Any]]
) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while (challenge := tee_hub.verdict("alice")["last_challenge"]) is None:
        assert time.monotonic() < deadline, "the hub never polled alice's server"
        time.sleep(0.5)
    assert challenge["ok"] is True, challenge
    assert challenge["answer"]["enclave_key"] == tee_hub.verdict("alice")["enclave_key"]
    assert tee_hub.server("alice")["ready"] is True


def test_a_server_failing_its_policy_is_never_routed(tee_hub: TeeHub) -> None:
    events = tee_hub.spawn_and_follow("carol")
    tee_hub.wait_until("carol", ready=False)
    messages = [event.get("message", "") for event in events]
    assert events[-1].get("failed") is True, messages
    refused = [m for m in messages if m.startswith("Attestation refused by policy user:carol")]
    assert refused and "mrenclave" in refused[0], messages
    assert not [m for m in messages if m.startswith(("Secrets sealed", "Server ready"))], messages
    assert not [route for route in tee_hub.routes() if route.startswith("/user/carol")]
    verdict = tee_hub.verdict("carol")
    assert verdict["status"] == "refused" and verdict["ok"] is False
    assert verdict["policy"]["id"] == "wrong-measurement"
    assert [c["name"] for c in verdict["checks"] if not c["passed"]] == ["policy.mrenclave"]


def test_poll_stops_a_server_whose_tee_answers_with_another_key(tee_hub: TeeHub) -> None:
    events = tee_hub.spawn_and_follow("bob")
    assert events[-1].get("ready") is True, events
    assert "/user/bob" in tee_hub.routes()
    tee_hub.wait_until("bob", ready=False)  # the hub's next poll
    verdict = tee_hub.verdict("bob")
    assert verdict["status"] == "key-changed" and verdict["ok"] is False
    assert "enclave key changed" in verdict["reason"]
    assert verdict["last_challenge"]["answer"]["enclave_key"] != verdict["enclave_key"]
    assert "/user/bob" not in tee_hub.routes()


_RECORD_PROGRESS = """
document.addEventListener("DOMContentLoaded", () => {
  const log = document.getElementById("progress-log");
  if (!log) return;
  new MutationObserver((records) => records.forEach((record) =>
    record.addedNodes.forEach((node) => window.teelabStep(node.textContent || "")))).observe(log, {childList: true});
});
"""


def _sign_in(page: Any, hub: HubProcess, user: str) -> None:
    page.goto(f"{hub.url}/hub/login")
    page.fill("#username_input", user)
    page.fill("#password_input", hub.password)
    page.click("#login_submit")


def test_browser_spawn_page_shows_the_steps_and_the_service_page_the_verdicts(
    tee_hub: TeeHub, alice: list[dict[str, Any]], tmp_path: Path
) -> None:
    """Last: bob's spawn page, carol's refused spawn page, carol's operator page (alice's server runs)."""
    from playwright.sync_api import expect

    from tests.extension.lab import ARTIFACTS, chromium

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    hub = tee_hub.hub
    steps: list[str] = []
    with chromium(tmp_path / "bob") as context:
        context.expose_function("teelabStep", lambda text: steps.append(str(text)))
        context.add_init_script(_RECORD_PROGRESS)
        page = context.new_page()
        page.set_default_timeout(60_000)
        build_server_image(hub.root)
        _sign_in(page, hub, "bob")
        deadline = time.monotonic() + WAIT_SECONDS
        while not any(step.strip().startswith("Server ready") for step in steps):
            assert time.monotonic() < deadline, steps
            page.wait_for_timeout(200)
    order = [
        "Launched the server's boot",
        "Evidence received",
        "Evidence verified against policy hub-server",
        "Controller checked",
        "Secrets sealed",
        "Server ready",
    ]
    shown = [step.strip() for step in steps]
    found = [next(i for i, s in enumerate(shown) if s.startswith(step)) for step in order]
    assert found == sorted(found), shown
    tee_hub.wait_until("bob", ready=False)  # his hostile host is caught again at the next poll
    with chromium(tmp_path / "carol") as context:
        page = context.new_page()
        page.set_default_timeout(60_000)
        build_server_image(hub.root)
        _sign_in(page, hub, "carol")
        log = page.locator("#progress-log")
        expect(log).to_contain_text("Evidence received", timeout=WAIT_SECONDS * 1000)
        expect(log).to_contain_text("Attestation refused by policy user:carol", timeout=WAIT_SECONDS * 1000)
        expect(page.locator("#progress-bar")).to_have_class(re.compile("bg-danger"))
        page.screenshot(path=str(ARTIFACTS / "hub-tee-spawner-refused.png"))
        page.goto(f"{hub.url}/services/teelab-kbs/")
        table = page.locator("#teelab-servers")
        alice_row = table.locator("tr.teelab-server", has_text="alice")
        expect(alice_row).to_contain_text("attested")
        expect(alice_row).to_contain_text(tee_hub.verdict("alice")["tls_spki_sha256"])
        expect(table.locator("tr.teelab-server", has_text="carol")).to_contain_text("refused")
        expect(table.locator("tr.teelab-server", has_text="bob")).to_contain_text("key-changed")
        page.screenshot(path=str(ARTIFACTS / "hub-tee-spawner-verdicts.png"), full_page=True)


def test_a_policy_that_no_longer_allows_a_running_server_stops_it(
    tee_hub: TeeHub, alice: list[dict[str, Any]]
) -> None:
    """Last (it stops alice's server): the operator drops the measurement from the policy; the next
    re-challenge, judged by the policy as it is now, fails and the server is stopped."""
    _wrong_policy(
        tee_hub.hub.root / "policies" / "hub-server.toml", tee_hub.hub.root / "policies" / "revoked.toml"
    )
    (tee_hub.hub.root / "policies" / "revoked.toml").replace(
        tee_hub.hub.root / "policies" / "hub-server.toml"
    )
    tee_hub.wait_until("alice", ready=False)
    verdict = tee_hub.verdict("alice")
    assert verdict["status"] == "refused" and verdict["ok"] is False
    assert "policy.mrenclave" in verdict["reason"]
    assert "/user/alice" not in tee_hub.routes()
