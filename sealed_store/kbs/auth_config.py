"""The ``[auth]`` section of the key broker's config file (``kbs.toml``): which identity providers it trusts.

With no file the broker trusts its admin token and the local per-user tokens it issues (one machine, no
set-up). Examples (docs/protocols/kbs.md §2 has the full text)::

    [auth]
    providers = ["local"]            # any of "local", "oidc", "jupyterhub", tried in this order
    admin_users = ["olivia"]          # the KBS admin role, besides the operator's admin-token
    admin_groups = ["kbs-admins"]

    [auth.oidc]
    issuer = "https://id.example.org/realms/lab"
    audience = "teelab-kbs"
    jwks_url = "https://id.example.org/realms/lab/protocol/openid-connect/certs"
    username_claim = "preferred_username"
    groups_claim = "groups"

    [auth.jupyterhub]
    api_url = "http://127.0.0.1:8081/hub/api"
    cache_seconds = 60
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from teelab.errors import ConfigError
from teelab.sealed_store.kbs.identity import HubSettings, OidcSettings

PROVIDERS = ("local", "oidc", "jupyterhub")
CONFIG_FILE = "kbs.toml"


@dataclass(frozen=True)
class AuthConfig:
    providers: tuple[str, ...] = ("local",)
    admin_users: frozenset[str] = frozenset()
    admin_groups: frozenset[str] = frozenset()
    oidc: OidcSettings | None = None
    jupyterhub: HubSettings | None = None
    # Requests failing authentication or framing, per peer: a burst, then this many per second.
    junk_burst: int = 20
    junk_per_second: float = 5.0


def load_auth_config(path: Path) -> AuthConfig:
    """``[auth]`` of the TOML file at ``path``; a clear ``ConfigError`` for anything wrong in it."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as error:
        raise ConfigError(f"cannot read the key broker config {path}: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from None
    return parse_auth(data.get("auth", {}), str(path))


def parse_auth(section: object, source: str = "kbs.toml") -> AuthConfig:
    if not isinstance(section, dict):
        raise ConfigError(f"{source}: [auth] must be a table")
    known = {
        "providers",
        "admin_users",
        "admin_groups",
        "oidc",
        "jupyterhub",
        "junk_burst",
        "junk_per_second",
    }
    unknown = sorted(set(section) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown [auth] keys {unknown}", hint=f"known: {sorted(known)}")
    providers = tuple(_strings(section.get("providers", ["local"]), "providers", source))
    for name in providers:
        if name not in PROVIDERS:
            raise ConfigError(f"{source}: unknown identity provider {name!r}", hint=f"one of {PROVIDERS}")
    oidc = _oidc(section.get("oidc"), source) if "oidc" in providers else None
    hub = _hub(section.get("jupyterhub"), source) if "jupyterhub" in providers else None
    burst, rate = section.get("junk_burst", 20), section.get("junk_per_second", 5.0)
    if not isinstance(burst, int) or burst < 1 or not isinstance(rate, int | float) or rate <= 0:
        raise ConfigError(f"{source}: junk_burst must be a positive integer and junk_per_second positive")
    return AuthConfig(
        providers=providers,
        admin_users=frozenset(_strings(section.get("admin_users", []), "admin_users", source)),
        admin_groups=frozenset(_strings(section.get("admin_groups", []), "admin_groups", source)),
        oidc=oidc,
        jupyterhub=hub,
        junk_burst=burst,
        junk_per_second=float(rate),
    )


def _strings(value: object, name: str, source: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{source}: [auth] {name} must be a list of names")
    return list(value)


def _table(value: object, name: str, source: str, required: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: the provider {name!r} needs an [auth.{name}] table")
    missing = [key for key in required if not isinstance(value.get(key), str) or not value[key]]
    if missing:
        raise ConfigError(f"{source}: [auth.{name}] lacks {missing}")
    return value


def _oidc(value: object, source: str) -> OidcSettings:
    table = _table(value, "oidc", source, ("issuer", "audience", "jwks_url"))
    if not table["jwks_url"].startswith(("http://", "https://")):
        raise ConfigError(f"{source}: [auth.oidc] jwks_url must be an http(s) URL")
    try:
        return OidcSettings(
            issuer=table["issuer"],
            audience=table["audience"],
            jwks_url=table["jwks_url"],
            username_claim=str(table.get("username_claim", "preferred_username")),
            groups_claim=str(table.get("groups_claim", "groups")),
            algorithms=tuple(
                _strings(table.get("algorithms", ["RS256", "ES256", "EdDSA"]), "algorithms", source)
            ),
            jwks_cache_seconds=int(table.get("jwks_cache_seconds", 300)),
            jwks_refresh_cooldown_seconds=float(table.get("jwks_refresh_cooldown_seconds", 30.0)),
            leeway_seconds=int(table.get("leeway_seconds", 30)),
        )
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{source}: [auth.oidc] {error}") from None


def _hub(value: object, source: str) -> HubSettings:
    table = _table(value, "jupyterhub", source, ("api_url",))
    if not table["api_url"].startswith(("http://", "https://")):
        raise ConfigError(f"{source}: [auth.jupyterhub] api_url must be an http(s) URL")
    try:
        return HubSettings(
            api_url=table["api_url"],
            cache_seconds=int(table.get("cache_seconds", 60)),
            timeout_seconds=float(table.get("timeout_seconds", 10.0)),
        )
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{source}: [auth.jupyterhub] {error}") from None
