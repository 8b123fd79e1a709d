"""What a teelab hub needs on disk before it starts (``teelab hub setup``), and the demo's hub configuration.

``setup(root)`` builds the kernel's enclave image in the servers' data folder ``<root>/data``, writes the
operator's policy ``<root>/policies/<kernel>.toml`` and installs the kernelspec into the system folder
``<root>/share/jupyter/kernels`` (never a user's home: a user may edit those, and the hub ignores them).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from teelab.errors import ConfigError
from teelab.extension.hub.config import layout

DEMO_USERS = ("alice", "bob", "carol")
DEMO_GROUPS = {"analysts": ["alice", "bob"], "operators": ["carol"]}


@dataclass(frozen=True)
class SetupResult:
    kernelspec_dir: Path
    policy_file: Path
    mrenclave: str


def setup(root: Path, *, kernel: str = "teelab-sim", policy: Path | None = None) -> SetupResult:
    """Image, operator policy and system kernelspec for ``kernel`` (``teelab-<backend>``) under ``root``."""
    from teelab.files import replace_atomically
    from teelab.kernel.kernelspec import build_kernel_image, check_kernel_name, kernel_json

    paths = layout(root)
    if Path(os.environ.get("TEELAB_DATA_DIR", "")).resolve() != paths["data"].resolve():
        raise ConfigError(f"teelab hub setup must run with TEELAB_DATA_DIR={paths['data']}")
    name = check_kernel_name(kernel)
    backend = name.removeprefix("teelab-")
    # The same build and checks as `teelab kernel install`: a real TEE's policy must pin the image.
    built = build_kernel_image(backend, name, policy=policy)
    image, text = built.image, built.policy_text
    paths["policies"].mkdir(parents=True, exist_ok=True)
    policy_file = paths["policies"] / f"{name}.toml"
    replace_atomically(policy_file, text.encode(), mode=0o644)
    spec_dir = paths["jupyter"] / "kernels" / name
    spec_dir.mkdir(parents=True, exist_ok=True)
    (spec_dir / "kernel.json").write_text(json.dumps(kernel_json(name, backend, None), indent=1))
    return SetupResult(spec_dir, policy_file, image.mrenclave.hex())


def hub_config_text(
    root: Path,
    *,
    port: int,
    hub_port: int,
    proxy_api_port: int,
    kbs_port: int,
    service_port: int,
    chp: Path,
    users: tuple[str, ...] = DEMO_USERS,
    groups: dict[str, list[str]] | None = None,
    operators_group: str = "operators",
) -> str:
    """A complete ``jupyterhub_config.py`` for one machine: loopback ports, SQLite in ``root``, the shared
    demo password (SharedPasswordAuthenticator: no PAM, no system accounts), each user's home under
    ``root/home``. The demo and the hub tests run exactly this file."""
    groups = DEMO_GROUPS if groups is None else groups
    allow_root = os.geteuid() == 0
    return f"""\
# Written by teelab (teelab.extension.hub.deploy.hub_config_text): a one-machine teelab hub.
import sys
from teelab.extension.hub import configure_hub

c = get_config()  # noqa: F821
c.JupyterHub.bind_url = "http://127.0.0.1:{port}"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{hub_port}"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.command = [{str(chp)!r}]
c.JupyterHub.db_url = "sqlite:///{root / "jupyterhub.sqlite"}"
c.JupyterHub.cookie_secret_file = "{root / "jupyterhub_cookie_secret"}"
c.ConfigurableHTTPProxy.pid_file = "{root / "jupyterhub-proxy.pid"}"
c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = open({str(root / "demo-password")!r}).read().strip()
c.Authenticator.allowed_users = set({list(users)!r})
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = "{root / "home" / "{username}"}"
c.Spawner.cmd = [sys.executable, "-m", "jupyterhub.singleuser"]
c.Spawner.args = {["--allow-root"] if allow_root else []!r}
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120
configure_hub(
    c,
    root={str(root)!r},
    public_url="http://127.0.0.1:{port}",
    groups={groups!r},
    operator_groups=[{operators_group!r}],
    kbs_listen="127.0.0.1:{kbs_port}",
    service_port={service_port},
)
"""


def write_demo_root(root: Path, password: str) -> None:
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    secret = root / "demo-password"
    secret.touch(mode=0o600)
    secret.write_text(password + "\n")


def hub_pod_config_text(
    root: Path,
    *,
    users: tuple[str, ...] = DEMO_USERS,
    groups: dict[str, list[str]] | None = None,
    operators_group: str = "operators",
    tee_spawner: bool = False,
) -> str:
    """The hub pod's ``jupyterhub_config.py`` (a measured file of its image): the demo's users and groups,
        the shared demo password from ``root/demo-password``, SimpleLocalProcessSpawner homes under
        ``root/home`` (or, with ``tee_spawner``, TeeSpawner: each server in a TEE of its own, set up by
    ``teelab hub setup`` and ``spawner_image``); ports, secrets, the database and the service come from the pod
    (``configure_hub_pod``)."""
    groups = DEMO_GROUPS if groups is None else groups
    allow_root = os.geteuid() == 0
    return f"""\
# Written by teelab (teelab.extension.hub.deploy.hub_pod_config_text): the hub pod's measured configuration.
import sys
from teelab.extension.hub.hub_pod_config import configure_hub_pod

c = get_config()  # noqa: F821
c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = open({str(root / "demo-password")!r}).read().strip()
c.Authenticator.allowed_users = set({list(users)!r})
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = "{root / "home" / "{username}"}"
c.Spawner.cmd = [sys.executable, "-m", "jupyterhub.singleuser"]
c.Spawner.args = {["--allow-root"] if allow_root else []!r}
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120
configure_hub_pod(
    c,
    root={str(root)!r},
    groups={groups!r},
    operator_groups=[{operators_group!r}],
    tee_spawner={tee_spawner!r},
)
"""
