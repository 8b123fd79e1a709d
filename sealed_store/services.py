"""Where a data owner's or a gateway's services are, on embedded defaults.

One machine needs no configuration: `teelab kbs serve` writes the address it listens on to
``<data dir>/kbs/endpoint`` and keeps its tokens beside it, and datasets live in ``<data dir>/datasets``.
Beyond one machine, each is an address, a token file and an fsspec URL (flags, or ``TEELAB_KBS`` /
``TEELAB_STORE``).
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


def gateway_token_file(explicit: Path | None = None) -> Path:
    return explicit or kbs_state_dir() / "gateway-token"


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
