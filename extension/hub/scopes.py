"""teelab's custom JupyterHub scopes, the names every part (hub config, authorizer, service) shares."""

from __future__ import annotations

SERVICE_NAME = "teelab-kbs"

DATASETS_READ = "custom:teelab:datasets:read"
DATASETS_ADMIN = "custom:teelab:datasets:admin"
KBS_OPERATE = "custom:teelab:kbs:operate"

CUSTOM_SCOPES: dict[str, dict[str, object]] = {
    DATASETS_READ: {
        "description": "List teelab datasets and read the ones granted to you in an attested kernel.",
    },
    DATASETS_ADMIN: {
        "description": "Upload your teelab datasets and grant, revoke, delete or re-policy them.",
        "subscopes": [DATASETS_READ],
    },
    KBS_OPERATE: {
        "description": "Operate teelab's key broker: every kernel's attestation verdict across users (never "
        "their data), groups and the whole audit log.",
    },
}


def on_server(scope: str, user: str, server: str = "") -> str:
    """``scope`` restricted to one server (JupyterHub's ``!server=<user>/<name>`` filter; a user's own
    ``!user`` scope covers it, a browser token's ``!server`` scope for that server too)."""
    return f"{scope}!server={user}/{server}"
