"""teelab under JupyterHub: hub users and groups are the tenants (docs/jupyterhub.md).

- :func:`configure_hub` (``jupyterhub_config.py``): the key broker as a hub-managed service, teelab's custom
  scopes and roles, groups, and the single-user servers' environment and system configuration;
- :mod:`~teelab.extension.hub.authorizer`: the granular authorizer of ``/teelab/api/`` in each single-user
  server, gated by the hub scopes;
- :mod:`~teelab.extension.hub.service`: the managed service itself (the key broker plus the operators' page of
  every kernel's attestation verdict across users);
- :mod:`~teelab.extension.hub.demo`: ``teelab hub demo``.

Importing this package loads neither JupyterHub nor jupyter_server.
"""

from __future__ import annotations

from teelab.extension.hub.config import configure_hub

__all__ = ["configure_hub"]
