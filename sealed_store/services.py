"""Where a data owner's or a gateway's services are, on embedded defaults.

One machine needs no configuration: `teelab kbs serve` writes the address it listens on to
``<data dir>/kbs/endpoint`` and keeps the tokens it issues beside it — the operator's ``admin-token`` and one
per user, ``users/<name>.token`` — and datasets live in ``<data dir>/datasets``. Beyond one machine, each is an
address, a credential and an fsspec URL (flags, or ``TEELAB_KBS`` / ``TEELAB_KBS_TOKEN_FILE`` /
``TEELAB_STORE``); under JupyterHub the user's own hub token (``$JUPYTERHUB_API_TOKEN``) is the credential.
"""

from __future__ import annotations

import os
from pathlib import Path

from teelab.paths import data_dir

DEFAULT_KBS_ADDRESS = "127.0.0.1:7443"
ENDPOINT_FILE = "endpoint"


def kbs_state_dir() -> Path:
    return data_dir() / "kbs"


def kbs_address(explicit: str | None = None) -> str:
    """The key broker to talk to: the flag, ``TEELAB_KBS``, the local broker's endpoint file, the default."""
    if explicit:
        return explicit
    if env := os.environ.get("TEELAB_KBS"):
        return env
    try:
        recorded = (kbs_state_dir() / ENDPOINT_FILE).read_text().strip()
    except OSError:
        recorded = ""
    return recorded or DEFAULT_KBS_ADDRESS


def local_kbs_running() -> bool:
    return (kbs_state_dir() / ENDPOINT_FILE).is_file()


def admin_token_file(explicit: Path | None = None) -> Path:
    return explicit or kbs_state_dir() / "admin-token"


def user_token_file(explicit: Path | None = None, user: str | None = None) -> Path:
    """The credential a user's own tools (the gateway's grant requests, `teelab dataset`, the extension)
    present: the flag, ``$TEELAB_KBS_TOKEN_FILE``, or the local broker's token for this login user."""
    import getpass

    if explicit:
        return explicit
    if env := os.environ.get("TEELAB_KBS_TOKEN_FILE"):
        return Path(env)
    return kbs_state_dir() / "users" / f"{user or getpass.getuser()}.token"


def user_credential(explicit: Path | None = None) -> str | None:
    """The user's key broker credential: a token file (see ``user_token_file``) when one is given or exists,
    else the hub token of this Jupyter server's user (``$JUPYTERHUB_API_TOKEN``), else None."""
    from teelab.sealed_store.kbs.auth import read_token

    path = user_token_file(explicit)
    if explicit or os.environ.get("TEELAB_KBS_TOKEN_FILE") or path.is_file():
        return read_token(path)
    return os.environ.get("JUPYTERHUB_API_TOKEN") or None


def gateway_token_file(explicit: Path | None = None) -> Path:
    """Where the gateway finds the credential it asks for session grants with: the user's own (there is no
    token that can mint a grant for another user). Kept for callers of the former gateway token."""
    return user_token_file(explicit)


def store_url(explicit: str | None = None) -> str:
    if explicit:
        return explicit
    if env := os.environ.get("TEELAB_STORE"):
        return env
    from teelab.sealed_store.storage import default_store_url

    return default_store_url()


def session_user(configured: str | None = None) -> str:
    """Whom a Jupyter server's sessions act for: configured, else the hub user, else the login name."""
    import getpass

    return configured or os.environ.get("JUPYTERHUB_USER") or getpass.getuser()
