"""``configure_tee_spawner(c, root=...)``: every single-user server in a TEE, attested before it is routed
(``configure_hub(c, ..., tee_spawner=True)`` calls it; docs/hosted-hub.md).

Paths under ``root``: ``hub/spawner-identity.pem`` the spawner's controller key ``G_s`` (made 0600 on first
use; only the hub reads it), ``images/hub-server/<backend>`` the server image, ``policies/hub-server.toml``
the default server policy (``python -m teelab.extension.hub.spawner_image ROOT`` writes both).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from teelab.extension.hub.scopes import SERVICE_NAME
from teelab.extension.hub.spawner_image import POLICY_NAME, image_folder

SPAWNER_CLASS = "teelab.extension.hub.tee_spawner.TeeLocalProcessSpawner"
# The teelab-kbs service reads each server's verdict from its spawner state (GET /hub/api/users/<name>).
STATE_SCOPE = "admin:server_state"


def configure_tee_spawner(
    c: Any,
    *,
    root: str | os.PathLike[str],
    backend: str = "sim",
    policy_for: Mapping[str, str] | None = None,
    spawner_class: str = SPAWNER_CLASS,
) -> None:
    base = Path(root)
    c.JupyterHub.spawner_class = spawner_class
    c.TeeSpawner.tee_backend = backend
    if backend == "sim":
        c.TeeSpawner.sim_platform = str(base / "data" / "sim-platform")
    c.TeeSpawner.image_dir = str(image_folder(base, backend))
    c.TeeSpawner.identity_file = str(base / "hub" / "spawner-identity.pem")
    c.TeeSpawner.policy_for = dict(policy_for or {"*": str(base / "policies" / f"{POLICY_NAME}.toml")})
    roles = list(c.JupyterHub.load_roles) if "load_roles" in c.JupyterHub else []
    for role in roles:
        if SERVICE_NAME in role.get("services", []) and STATE_SCOPE not in role["scopes"]:
            role["scopes"] = [*role["scopes"], STATE_SCOPE]
    c.JupyterHub.load_roles = roles
