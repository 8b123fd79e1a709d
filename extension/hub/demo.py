"""``teelab hub demo`` / ``make hub-demo``: a real JupyterHub on this machine with teelab's multi-tenant setup.

configurable-http-proxy (npm, ``node_modules/.bin`` of the checkout or on PATH), three users alice, bob and
carol with one demo password, groups analysts = {alice, bob} and operators = {carol}, the key broker as the
hub service ``teelab-kbs``, the simulated TEE, and a sample dataset of alice's granted to ``group:analysts``.
:class:`HubProcess` is also what the hub tests run.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from teelab.errors import ConfigError
from teelab.extension.hub.deploy import DEMO_USERS, hub_config_text, write_demo_root

DEMO_PASSWORD = "teelab-demo"  # noqa: S105 (the demo's shared password, printed for the user)
START_SECONDS = 90.0
SETUP_SERVICE = "teelab-demo-setup"


def find_chp() -> Path:
    """configurable-http-proxy: the checkout's ``node_modules`` (``npm ci``), else PATH."""
    for folder in (Path.cwd(), *Path(__file__).resolve().parents):
        candidate = folder / "node_modules" / ".bin" / "configurable-http-proxy"
        if candidate.is_file():
            return candidate
    found = shutil.which("configurable-http-proxy")
    if found is None:
        raise ConfigError(
            "configurable-http-proxy is not installed",
            hint="run scripts/install-system-deps.sh (npm ci in the checkout) or npm install -g configurable-http-proxy",
        )
    return Path(found)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class HubProcess:
    """A JupyterHub subprocess on loopback ports with teelab's configuration, plus a setup-only service
    token that can mint user tokens (used to publish the sample datasets, never to sign anyone in)."""

    root: Path
    port: int = field(default_factory=free_port)
    password: str = DEMO_PASSWORD
    users: tuple[str, ...] = DEMO_USERS
    groups: dict[str, list[str]] | None = None  # None: the demo's (benchmarks/hub_users.py makes its own)
    process: subprocess.Popen[bytes] | None = None
    setup_token: str = field(default_factory=lambda: secrets.token_hex(32))
    kbs_port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def kbs_address(self) -> str:
        return f"127.0.0.1:{self.kbs_port}"

    def prepare(self) -> None:
        write_demo_root(self.root, self.password)
        # In a child: the image is built in the hub's data folder, whatever this process's TEELAB_DATA_DIR is.
        done = subprocess.run(
            [str(Path(sys.executable).with_name("teelab")), "hub", "setup", "--root", str(self.root)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            raise ConfigError(f"teelab hub setup failed: {done.stderr.strip() or done.stdout.strip()}")
        config = hub_config_text(
            self.root,
            port=self.port,
            hub_port=free_port(),
            proxy_api_port=free_port(),
            kbs_port=self.kbs_port,
            service_port=free_port(),
            chp=find_chp(),
            users=self.users,
            groups=self.groups,
        )
        token_file = self.root / "setup-token"
        token_file.touch(mode=0o600)
        token_file.write_text(self.setup_token)
        # A setup-only service: it may create tokens for users (to publish the sample data as its owner).
        config += f"""
c.JupyterHub.services.append({{"name": {SETUP_SERVICE!r}, "api_token": open({str(token_file)!r}).read()}})
c.JupyterHub.load_roles.append({{"name": {SETUP_SERVICE!r}, "scopes": ["tokens", "read:users", "read:servers"],
                                 "services": [{SETUP_SERVICE!r}]}})
"""
        (self.root / "jupyterhub_config.py").write_text(config)

    def start(self, log: Path | None = None) -> None:
        output = (log or self.root / "jupyterhub.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(self.root / "jupyterhub_config.py")],
            cwd=self.root,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._stop_proxy()
                raise ConfigError(
                    f"JupyterHub exited with status {self.process.returncode} (see {output.name})"
                )
            try:
                self.api("GET", "")
                if (self.root / "kbs" / "endpoint").exists():
                    return
            except (OSError, urllib.error.HTTPError):
                pass
            time.sleep(0.3)
        raise ConfigError(f"JupyterHub did not come up within {START_SECONDS:.0f} s (see {output.name})")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._stop_proxy()

    def _stop_proxy(self) -> None:
        """configurable-http-proxy runs in its own session; a hub that died while starting leaves it behind.
        Only the process its pid file names, and only if it still is the proxy."""
        try:
            pid = int((self.root / "jupyterhub-proxy.pid").read_text().strip())
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if b"configurable-http-proxy" in command:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def api(self, method: str, path: str, body: object | None = None, token: str | None = None) -> Any:
        request = urllib.request.Request(  # noqa: S310 (http on loopback)
            f"{self.url}/hub/api/{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={
                "Authorization": f"token {token or self.setup_token}",
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 (loopback http)
            text = answer.read()
        return json.loads(text) if text else None

    def user_token(self, user: str, note: str) -> str:
        """A token of ``user``'s own (setup only: it publishes that user's datasets)."""
        answer = self.api("POST", f"users/{user}/tokens", {"note": note, "expires_in": 3600})
        return str(answer["token"])

    def as_user(self, user: str, *argv: str) -> subprocess.CompletedProcess[str]:
        """``teelab ARGV`` run as the hub user ``user`` (their hub token at the key broker)."""
        env = {
            **os.environ,
            "JUPYTERHUB_API_TOKEN": self.user_token(user, "teelab demo setup"),
            "JUPYTERHUB_USER": user,
            "TEELAB_KBS": self.kbs_address,
            "TEELAB_DATA_DIR": str(self.root / "data"),
        }
        env.pop("TEELAB_KBS_TOKEN_FILE", None)
        return subprocess.run(
            [str(Path(sys.executable).with_name("teelab")), *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    def publish_sample(
        self, owner: str = "alice", name: str = "sample-sales", grant: str = "group:analysts"
    ) -> None:
        with tempfile.TemporaryDirectory() as scratch:
            csv = Path(scratch) / f"{name}.csv"
            rows = ["region,amount"] + [
                f"{('EU', 'US', 'APAC')[i % 3]},{(i * 37) % 500 + 0.5}" for i in range(3000)
            ]
            csv.write_text("\n".join(rows) + "\n")
            policy = self.root / "policies" / "teelab-sim.toml"
            done = self.as_user(
                owner,
                "dataset",
                "upload",
                str(csv),
                "--name",
                name,
                "--policy",
                str(policy),
                "--grant",
                grant,
                "--owner",
                owner,
            )
        if done.returncode != 0:
            raise ConfigError(
                f"publishing {name} as {owner} failed: {done.stderr.strip() or done.stdout.strip()}"
            )


def check(hub: HubProcess) -> None:
    """What a visitor would do, through the hub's login form: bob reads alice's dataset in an attested kernel,
    carol is refused and told why, carol's operator page shows bob's kernel's verdict."""
    from teelab.extension.hub.client import HubUser

    read = "from teelab.sealed_store import read_dataset\nprint('rows', len(read_dataset('sample-sales')))"
    bob, carol = HubUser(hub, "bob"), HubUser(hub, "carol")
    for user in (bob, carol):
        if user.login().status_code != 302:
            raise ConfigError(f"{user.name} could not sign in")
        user.spawn()
    kernel = bob.start_kernel()["id"]
    badge = bob.request("GET", f"teelab/api/kernels/{kernel}/attestation").json()["badge"]
    print(f"bob's kernel   {badge['text']}")
    output, reply = bob.run_cell(kernel, read)
    print(f"bob reads      {output.strip()}")
    if reply.get("status") != "ok":
        raise ConfigError("bob could not read sample-sales")
    output, reply = carol.run_cell(carol.start_kernel()["id"], read)
    refusal = output.strip().splitlines()[-2:] if output.strip() else ["(no output)"]
    print(f"carol refused  {' '.join(line.strip() for line in refusal)}")
    if reply.get("status") == "ok":
        raise ConfigError("carol read a dataset that was not granted to her")
    verdicts = carol.session.get(f"{hub.url}/services/teelab-kbs/api/kernels", timeout=60).json()
    seen = [k["badge"]["level"] for s in verdicts["servers"] if s["user"] == "bob" for k in s["kernels"]]
    print(f"operator view  bob's kernels: {seen}")
    if seen != ["simulated"]:
        raise ConfigError("the operators' page does not show bob's kernel")
    print("hub demo check passed")


def run_demo(root: Path | None, port: int | None, *, check_only: bool = False) -> int:
    from teelab.paths import data_dir

    hub = HubProcess(root or data_dir() / "hub-demo")
    if port:
        hub.port = port
    print(f"teelab hub demo: state in {hub.root}")
    hub.prepare()
    print("starting JupyterHub with configurable-http-proxy and the teelab-kbs service ...")
    hub.start()
    try:
        if hub.as_user("alice", "dataset", "show", "sample-sales").returncode == 0:
            print("sample-sales   already published (alice's, granted to group:analysts)")
        else:
            hub.publish_sample()
            print("sample-sales   published by alice, granted to group:analysts")
        if check_only:
            check(hub)
            return 0
        print(f"""
JupyterHub is up: {hub.url}/hub/login
  users alice, bob, carol — password {hub.password!r} (demo only)
  groups analysts = alice, bob; operators = carol (carol may see every kernel's verdict at
  {hub.url}/services/teelab-kbs/ — never any data)
  alice's dataset sample-sales is granted to group:analysts: bob may read it in an attested kernel, carol not:
      from teelab.sealed_store import read_dataset; read_dataset("sample-sales").head()
Ctrl-C stops the hub, the servers it spawned and the key broker.""")
        if hub.process is not None:
            hub.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        hub.stop()
    return 0
