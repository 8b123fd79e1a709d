"""``configure_hub(c, ...)``: teelab's part of an operator's ``jupyterhub_config.py`` (docs/jupyterhub.md).

What it sets, and why:

- the key broker as a **hub-managed service** ``teelab-kbs`` (the hub starts and stops it; its page and API
  at ``/services/teelab-kbs/``, the broker itself on gRPC as everywhere else), authenticating users by their
  hub tokens (``[auth] providers = ["jupyterhub"]``);
- teelab's **custom scopes** (:mod:`~teelab.extension.hub.scopes`) and the **roles** that hand them out:
  every user reads and administers their own datasets (or only ``dataset_admin_groups``), ``operators``
  operate the broker; the **groups** given;
- the **single-user servers**: the hub disables user configuration (nothing in the home folder is loaded:
  ``~/.jupyter``, kernelspecs under ``~/.local/share/jupyter``), every server loads teelab's system
  configuration (:mod:`~teelab.extension.hub.singleuser_config`: the granular authorizer, no user policies,
  the operator's policy file, its own gateway identity key), and finds the kernelspecs in the system folder
  ``<root>/share/jupyter`` (written by ``teelab hub setup``).

Paths under ``root`` (default ``/srv/teelab``): ``kbs/`` the broker's state (only the service reads it),
``data/`` the teelab data folder of the servers (simulated platform, images, sealed datasets),
``gateways/<user>/`` each server's gateway identity key, ``policies/`` the operator's policies,
``share/jupyter/kernels/`` the kernelspecs.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from teelab.extension.hub.scopes import (
    CUSTOM_SCOPES,
    DATASETS_ADMIN,
    DATASETS_READ,
    KBS_OPERATE,
    SERVICE_NAME,
)

SINGLEUSER_CONFIG = Path(__file__).with_name("singleuser_config.py")
# What a server may do with the hub on its user's behalf: its token reaches the key broker (datasets) and the
# hub (activity); a browser's token is limited to the same teelab scopes.
SERVER_TOKEN_SCOPES = ["users:activity!user", "access:servers!server", f"{DATASETS_READ}!user"]
# The service lists the users' servers and asks each for its kernels' verdicts (never their data).
SERVICE_SCOPES = ["list:users", "read:users:name", "read:users:groups", "read:servers", "access:servers"]


def _set(section: Any, name: str, default: Any) -> Any:
    """What the operator's config already set (an unset traitlets value is a lazy placeholder, not empty)."""
    return section[name] if name in section else default


def layout(root: Path) -> dict[str, Path]:
    return {
        "kbs": root / "kbs",
        "data": root / "data",
        "gateways": root / "gateways",
        "policies": root / "policies",
        "jupyter": root / "share" / "jupyter",
    }


def configure_hub(
    c: Any,
    *,
    root: str | os.PathLike[str] = "/srv/teelab",
    public_url: str = "http://127.0.0.1:8000",
    groups: Mapping[str, Sequence[str]] | None = None,
    operators: Sequence[str] = (),
    operator_groups: Sequence[str] = (),
    dataset_admin_groups: Sequence[str] | None = None,
    kbs_admin_users: Sequence[str] = (),
    kbs_admin_groups: Sequence[str] = (),
    kbs_listen: str = "127.0.0.1:7443",
    kbs_db: str | None = None,
    kbs_tls_cert: str | None = None,
    kbs_tls_key: str | None = None,
    kbs_ca: str | None = None,
    kbs_collateral: str = "sim",
    dataset_store: str | None = None,
    kernel: str = "teelab-sim",
    service_port: int = 10101,
    python: str = sys.executable,
    tee_spawner: bool = False,
) -> None:
    """Configure the JupyterHub config object ``c`` for teelab (see the module docstring).

    ``public_url`` is where the proxy serves the hub (the service reaches the users' servers there);
    ``operators``/``operator_groups`` get ``custom:teelab:kbs:operate``: every kernel's verdict, never data.
    ``kbs_admin_users``/``kbs_admin_groups`` get the broker's admin role (groups, the whole audit log, and
    administration of *every* dataset — re-policy, grant — so give it to nobody who must not read data; by
    default nobody but the holder of the broker's admin-token).
    ``kbs_listen`` the broker's gRPC address (``grpcs://`` for clients when ``kbs_tls_cert`` is given, with
    ``kbs_ca`` the private CA the servers trust); ``kernel`` the kernelspec whose policy file
    ``<root>/policies/<kernel>.toml`` judges every teelab kernel of every server.
    ``tee_spawner``: every single-user server runs in a TEE and is attested before the proxy routes to it
    (:func:`~teelab.extension.hub.spawner_config.configure_tee_spawner`, docs/hosted-hub.md).
    """
    paths = layout(Path(root))
    kbs_address = f"grpcs://{kbs_listen}" if kbs_tls_cert else kbs_listen
    _scopes_and_roles(c, groups or {}, operators, operator_groups, dataset_admin_groups)
    _service(
        c,
        paths,
        public_url,
        kbs_admin_users,
        kbs_admin_groups,
        kbs_listen,
        service_port,
        python,
        kbs_options={
            "db": kbs_db,
            "tls_cert": kbs_tls_cert,
            "tls_key": kbs_tls_key,
            "collateral": kbs_collateral,
        },
    )
    _spawner(c, paths, kbs_address, kbs_ca, dataset_store, kernel)
    if tee_spawner:
        from teelab.extension.hub.spawner_config import configure_tee_spawner

        configure_tee_spawner(c, root=root)


def _scopes_and_roles(
    c: Any,
    groups: Mapping[str, Sequence[str]],
    operators: Sequence[str],
    operator_groups: Sequence[str],
    dataset_admin_groups: Sequence[str] | None,
) -> None:
    c.JupyterHub.custom_scopes = {**dict(_set(c.JupyterHub, "custom_scopes", {})), **CUSTOM_SCOPES}
    load_groups = dict(_set(c.JupyterHub, "load_groups", {}))
    for name, members in groups.items():
        load_groups[name] = {"users": list(members)}
    c.JupyterHub.load_groups = load_groups
    # Every user may use the service (to be told they are not an operator) and read what was granted to them.
    every_user = [f"{DATASETS_READ}!user", f"access:services!service={SERVICE_NAME}"]
    roles = list(_set(c.JupyterHub, "load_roles", []))
    if dataset_admin_groups is None:
        every_user.append(f"{DATASETS_ADMIN}!user")
    else:
        roles.append(
            {
                "name": "teelab-dataset-admin",
                "description": "Upload and administer one's own teelab datasets",
                "scopes": [f"{DATASETS_ADMIN}!user"],
                "groups": list(dataset_admin_groups),
            }
        )
    c.JupyterHub.extra_user_scopes = [*list(_set(c.JupyterHub, "extra_user_scopes", [])), *every_user]
    roles.append(
        {
            "name": "teelab-operator",
            "description": "Operate teelab's key broker: attestation verdicts of every kernel, never data",
            "scopes": [KBS_OPERATE, f"access:services!service={SERVICE_NAME}"],
            "users": list(operators),
            "groups": list(operator_groups),
        }
    )
    roles.append(
        {
            "name": "teelab-kbs-service",
            "description": "teelab's key broker service: finds the users' servers and their kernels' verdicts",
            "scopes": SERVICE_SCOPES,
            "services": [SERVICE_NAME],
        }
    )
    c.JupyterHub.load_roles = roles


def _service(
    c: Any,
    paths: Mapping[str, Path],
    public_url: str,
    kbs_admin_users: Sequence[str],
    kbs_admin_groups: Sequence[str],
    kbs_listen: str,
    port: int,
    python: str,
    *,
    kbs_options: Mapping[str, str | None],
) -> None:
    environment = {
        "TEELAB_DATA_DIR": str(paths["data"]),
        "TEELAB_HUB_KBS_STATE": str(paths["kbs"]),
        "TEELAB_HUB_KBS_LISTEN": kbs_listen,
        "TEELAB_HUB_KBS_OPTIONS": json.dumps({k: v for k, v in kbs_options.items() if v}),
        "TEELAB_HUB_KBS_ADMINS": json.dumps(
            {"users": list(kbs_admin_users), "groups": list(kbs_admin_groups)}
        ),
        "TEELAB_HUB_PUBLIC_URL": public_url,
        "PYTHONUNBUFFERED": "1",
    }
    services = [s for s in (_set(c.JupyterHub, "services", [])) if s.get("name") != SERVICE_NAME]
    services.append(
        {
            "name": SERVICE_NAME,
            "url": f"http://127.0.0.1:{port}",
            "command": [python, "-m", "teelab.extension.hub.service"],
            "environment": environment,
            # The operators' page: a browser token that may carry the operate scope, without a consent page.
            "oauth_client_allowed_scopes": [KBS_OPERATE],
            "oauth_no_confirm": True,
            "display": True,
            "info": {"what": "teelab key broker", "grpc": kbs_listen},
        }
    )
    c.JupyterHub.services = services


def _spawner(
    c: Any,
    paths: Mapping[str, Path],
    kbs_address: str,
    kbs_ca: str | None,
    dataset_store: str | None,
    kernel: str,
) -> None:
    # Home-folder configuration (~/.jupyter, ~/.local/share/jupyter/kernels, user site-packages) is ignored:
    # what judges a user's kernels is the operator's, not the user's.
    c.Spawner.disable_user_config = True
    environment = dict(_set(c.Spawner, "environment", {}))
    environment.update(
        {
            "TEELAB_DATA_DIR": str(paths["data"]),
            "TEELAB_KBS": kbs_address,
            "TEELAB_HUB_POLICY_FILE": str(paths["policies"] / f"{kernel}.toml"),
            "TEELAB_HUB_KERNEL": kernel,
            "TEELAB_HUB_GATEWAYS": str(paths["gateways"]),
            "JUPYTER_PATH": str(paths["jupyter"]),
        }
    )
    if kbs_ca:
        environment["TEELAB_KBS_CA"] = kbs_ca
    if dataset_store:
        environment["TEELAB_STORE"] = dataset_store
    c.Spawner.environment = environment
    c.Spawner.args = [*list(_set(c.Spawner, "args", [])), f"--config={SINGLEUSER_CONFIG}"]
    c.Spawner.server_token_scopes = [*SERVER_TOKEN_SCOPES, f"{DATASETS_ADMIN}!user"]
    # What a browser's token for a server may carry: the teelab dataset scopes on that server (the hub keeps
    # only those the signed-in user holds). A list, not a callable: the hub passes it on as JSON.
    c.Spawner.oauth_client_allowed_scopes = [f"{DATASETS_READ}!server", f"{DATASETS_ADMIN}!server"]
    if "default_url" not in c.Spawner:
        c.Spawner.default_url = "/lab"
