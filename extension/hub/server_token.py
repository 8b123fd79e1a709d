"""The attested single-user server's hub API token, in its process's memory only.

The boot (:mod:`~teelab.extension.hub.server_boot`) keeps it here instead of in ``os.environ``: every kernel and
terminal jupyter-server starts inherits ``os.environ``, and the token (also the server's OAuth client secret)
is the server's, not its user code's. In-process readers (the key broker client,
:class:`~teelab.extension.hub.grants.HubGrants`) ask :func:`hub_token`; outside a TeeSpawner server it is the
environment's ``JUPYTERHUB_API_TOKEN``, as stock JupyterHub sets it.
"""

from __future__ import annotations

import os

_held: list[str] = []


def keep(token: str) -> None:
    """Called once by the boot, with the token from the sealed bundle."""
    _held[:] = [token]


def held() -> bool:
    return bool(_held)


def hub_token() -> str:
    """This server's hub token: the boot's, else the environment's (a server spawned without TeeSpawner)."""
    return _held[0] if _held else os.environ.get("JUPYTERHUB_API_TOKEN", "")
