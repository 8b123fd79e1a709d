"""The system configuration of every single-user server a teelab hub spawns.

Loaded with ``--config=<this package>/singleuser_config.py`` (``configure_hub`` puts it in ``Spawner.args``);
the hub also sets ``JUPYTERHUB_DISABLE_USER_CONFIG``, so nothing in the user's home folder is configuration.
The values come from the environment the hub gives the server (``Spawner.environment``), which the user
cannot change before the server starts.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from teelab.errors import ConfigError

_USER = re.compile(r"[A-Za-z0-9._@+-]{1,255}")


def gateway_identity_file(gateways: Path, user: str) -> Path:
    """One gateway identity key per single-user server: a gateway sharing a key could control the others'
    kernels (the controller rule)."""
    if not _USER.fullmatch(user) or user in (".", ".."):
        raise ConfigError(f"cannot name a gateway key folder after hub user {user!r}")
    folder = gateways / user
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder / "gateway-identity.pem"


def configure_server(c: Any, environ: dict[str, str] | None = None) -> None:
    from teelab.extension.hub.grants import HubGrants

    env = dict(os.environ if environ is None else environ)
    user = env["JUPYTERHUB_USER"]
    c.ServerApp.authorizer_class = "teelab.extension.hub.authorizer.TeelabHubAuthorizer"
    # Only the operator's policy: never one from the user's configuration folder, never a kernelspec's.
    c.TeeProvisioner.allow_user_policies = False
    c.TeeProvisioner.policy_file = env["TEELAB_HUB_POLICY_FILE"]
    c.TeeProvisioner.kbs_address = env["TEELAB_KBS"]
    c.TeeProvisioner.kbs_user = user
    if env.get("TEELAB_KBS_CA"):
        c.TeeProvisioner.kbs_ca_file = env["TEELAB_KBS_CA"]
    if env.get("TEELAB_STORE"):
        c.TeeProvisioner.dataset_store = env["TEELAB_STORE"]
    c.TeeProvisioner.identity_file = str(gateway_identity_file(Path(env["TEELAB_HUB_GATEWAYS"]), user))
    c.TeeProvisioner.grant_issuer = HubGrants(
        env["TEELAB_KBS"], user, env.get("TEELAB_KBS_CA") or None, env.get("TEELAB_STORE") or None
    )
    c.TeelabExtensionApp.release_policy_kernel = env.get("TEELAB_HUB_KERNEL", "teelab-sim")
