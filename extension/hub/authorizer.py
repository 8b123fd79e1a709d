"""The granular authorizer of ``/teelab/api/`` in a single-user server: the hub scopes decide.

JupyterHub's own authorizer checks only that the caller may access the server at all. This one also requires,
for teelab's dataset API, the owner-filtered custom scope: reading (``GET``) needs
``custom:teelab:datasets:read!server=<owner>/<server>``, changing anything (upload, grant, revoke, delete,
re-policy) ``custom:teelab:datasets:admin!server=<owner>/<server>`` (the owner's own ``!user`` scope covers
both). The kernels' attestation records, the policy view and health
stay readable by whoever may access the server (they carry no data). Everything else is JupyterHub's rule.
The key broker decides again on its side: this gate only keeps a token without the scope from asking.
"""

from __future__ import annotations

import os
from typing import Any

from jupyterhub.singleuser.extension import JupyterHubAuthorizer

from teelab.extension.base import AUTH_RESOURCE
from teelab.extension.hub.scopes import DATASETS_ADMIN, DATASETS_READ, on_server

DATASETS_PATH = "/teelab/api/datasets"


def required_scope(path: str, action: str, owner: str, server: str = "") -> str | None:
    """The custom scope a teelab request needs beyond server access (None: server access is enough)."""
    base = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/").rstrip("/")
    relative = path[len(base) :] if path.startswith(base) else path
    if relative != DATASETS_PATH and not relative.startswith(DATASETS_PATH + "/"):
        return None
    return on_server(DATASETS_READ if action == "read" else DATASETS_ADMIN, owner, server)


class TeelabHubAuthorizer(JupyterHubAuthorizer):  # type: ignore[misc]
    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        if not super().is_authorized(handler, user, action, resource):
            return False
        if resource != AUTH_RESOURCE:
            return True
        owner = os.environ.get("JUPYTERHUB_USER", "")
        server = os.environ.get("JUPYTERHUB_SERVER_NAME", "")
        needed = required_scope(handler.request.path, action, owner, server)
        if needed is None:
            return True
        allowed = bool(self.hub_auth.check_scopes({needed}, user.hub_user))
        if not allowed:
            self.log.warning(
                "teelab: %s lacks %s for %s %s", user.username, needed, action, handler.request.path
            )
        return allowed
