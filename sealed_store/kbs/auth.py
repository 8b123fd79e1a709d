"""The operator's admin token, and the key broker's authentication assembled from its configuration.

The admin token is 32 random bytes (base64url) in the 0600 file ``admin-token`` of the state folder, created on
first start: the KBS admin role, for the operator only (never handed to a Jupyter server). Users authenticate
through the identity providers of ``identity.py``. A request carries its credential in the gRPC metadata
``authorization: Bearer <credential>``. Tokens are never logged; the server prints where they are stored.
"""

from __future__ import annotations

import getpass
import hashlib
import secrets
from pathlib import Path

from filelock import FileLock

from teelab.errors import ConfigError
from teelab.files import write_private
from teelab.sealed_store.kbs.auth_config import AuthConfig
from teelab.sealed_store.kbs.crypto import private_dir, read_secret
from teelab.sealed_store.kbs.identity import (
    Authentication,
    Authenticator,
    Clock,
    HubTokens,
    LocalUsers,
    OidcTokens,
    issue_local_token,
)
from teelab.sealed_store.kbs.validation import USER_NAME

# A file name, not a token: the token is random and created on first start.
ADMIN_TOKEN_FILE = "admin-token"  # noqa: S105
AUTHORIZATION = "authorization"


def admin_token_digest(state_dir: Path) -> bytes:
    """SHA-256 of the admin token, creating the token file on first start."""
    private_dir(state_dir)
    with FileLock(str(state_dir / ".keys.lock")):
        if not (state_dir / ADMIN_TOKEN_FILE).exists():
            write_private(state_dir / ADMIN_TOKEN_FILE, (secrets.token_urlsafe(32) + "\n").encode())
    return hashlib.sha256(read_token(state_dir / ADMIN_TOKEN_FILE).encode()).digest()


def build_authentication(state_dir: Path, config: AuthConfig, *, clock: Clock) -> Authentication:
    """The admin token and the configured providers; with ``local``, a token for the serving login user."""
    providers: list[Authenticator] = []
    for name in config.providers:
        if name == "local":
            # One machine, no set-up: the user who runs the broker gets a token beside its state.
            login = login_name()
            if login is not None:
                issue_local_token(state_dir, login)
            providers.append(LocalUsers(state_dir))
        elif name == "oidc" and config.oidc is not None:
            providers.append(OidcTokens(config.oidc, clock=clock))
        elif name == "jupyterhub" and config.jupyterhub is not None:
            providers.append(HubTokens(config.jupyterhub, clock=clock))
    return Authentication(
        admin_digest=admin_token_digest(state_dir),
        providers=tuple(providers),
        admin_users=config.admin_users,
        admin_groups=config.admin_groups,
    )


def login_name() -> str | None:
    """The serving user's name, if it has one that is a valid user name (a container may have neither)."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        return None
    return name if USER_NAME.fullmatch(name) else None


def read_token(path: Path) -> str:
    token = read_secret(path).decode("ascii", "replace").strip()
    if not token:
        raise ConfigError(f"the token file {path} is empty")
    return token
