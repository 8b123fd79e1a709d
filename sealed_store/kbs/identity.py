"""Who is asking: the identity a key broker call authenticates as, and the providers that establish it.

Every call but the public ones (``GetInfo``, ``Challenge``, ``Release``: the kernel's session grant authorizes a
release) carries ``authorization: Bearer <credential>``. The broker tries, in order:

1. the operator's admin token (``admin-token`` in the state folder): the KBS admin role, no user;
2. each configured identity provider (``[auth] providers`` in ``kbs.toml``, see ``auth_config.py``):

   - ``local``: per-user tokens ``teelab kbs serve`` issues on one machine (``users/<name>.token``, 0600);
   - ``oidc``: a JWT from one issuer, checked against its JWKS (fetched and cached), ``aud``, ``exp``, ``iss``;
     the user from a configured claim, the groups from another;
   - ``jupyterhub``: a hub API/OAuth token, checked by asking the hub who owns it (``GET /hub/api/user``),
     giving the user's name, groups and ``custom:teelab:*`` scopes.

A credential that none accepts is refused (``unauthenticated``). The result is an :class:`Identity`; what it
may do is the broker's decision (``broker.py``), never the provider's.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import jwt

from teelab.errors import ConfigError, KeyBrokerError
from teelab.files import replace_atomically, write_private
from teelab.sealed_store.kbs import validation
from teelab.sealed_store.kbs.crypto import private_dir, read_secret

USERS_DIR = "users"
TOKEN_SUFFIX = ".token"  # noqa: S105 (a file name suffix, not a token)
MAX_CREDENTIAL_CHARS = 8192
Clock = Callable[[], datetime]


@dataclass(frozen=True)
class Identity:
    """An authenticated caller. ``user`` None: the operator's admin token (no user, KBS admin role)."""

    user: str | None
    groups: frozenset[str] = frozenset()
    admin: bool = False
    provider: str = "admin-token"
    scopes: frozenset[str] = frozenset()

    @property
    def actor(self) -> str:
        """How the audit log names the caller."""
        return f"user:{self.user}" if self.user is not None else "admin"

    def in_group(self, group: str) -> bool:
        return group in self.groups


OPERATOR = Identity(None, admin=True)


class Authenticator(Protocol):
    """One identity provider: the identity a bearer credential proves, or None when it is not its kind."""

    name: str

    def authenticate(self, credential: str) -> Identity | None: ...


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


# -- local per-user tokens --------------------------------------------------------------------------------


class LocalUsers:
    """Per-user tokens on one machine: ``<state>/users/<name>.token`` (0600), issued by ``teelab kbs serve``.

    A token file's name is its user. The folder is read again when it changes (a new ``teelab kbs user add``
    takes effect without a restart; a deleted file revokes the token). Lookup is by SHA-256 of the token.
    """

    name = "local"

    def __init__(self, state_dir: Path) -> None:
        self.folder = state_dir / USERS_DIR
        self._lock = threading.Lock()
        self._seen: tuple[int, int] | None = None
        self._users: dict[bytes, str] = {}

    def authenticate(self, credential: str) -> Identity | None:
        user = self._lookup(_digest(credential))
        return Identity(user, provider=self.name) if user is not None else None

    def _lookup(self, digest: bytes) -> str | None:
        with self._lock:
            try:
                stat = self.folder.stat()
                seen = (stat.st_mtime_ns, stat.st_ino)
            except OSError:
                return None
            if seen != self._seen:
                self._users = self._load()
                self._seen = seen
            return self._users.get(digest)

    def _load(self) -> dict[bytes, str]:
        users: dict[bytes, str] = {}
        for path in sorted(self.folder.glob(f"*{TOKEN_SUFFIX}")):
            name = path.name.removesuffix(TOKEN_SUFFIX)
            try:
                token = read_secret(path).decode("ascii").strip()
                validation.user_name(name)
            except (ConfigError, KeyBrokerError, UnicodeDecodeError, OSError):
                continue  # not a token file of ours: ignored, never fatal to the broker
            if token:
                users[_digest(token)] = name
        return users


def issue_local_token(state_dir: Path, user: str, *, replace: bool = False) -> Path:
    """Create ``users/<user>.token`` (a new random token, 0600) unless it exists; its path."""
    user = validation.user_name(user)
    folder = private_dir(state_dir / USERS_DIR)
    path = folder / f"{user}{TOKEN_SUFFIX}"
    token = (secrets.token_urlsafe(32) + "\n").encode()
    if replace and path.exists():
        replace_atomically(path, token, mode=0o600)
    elif not path.exists():
        write_private(path, token)
        # The folder's mtime tells a running broker to re-read it (a replaced file keeps the folder's).
        folder.touch()
    return path


def local_token_file(state_dir: Path, user: str) -> Path:
    return state_dir / USERS_DIR / f"{user}{TOKEN_SUFFIX}"


# -- OIDC ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OidcSettings:
    issuer: str
    audience: str
    jwks_url: str
    username_claim: str = "preferred_username"
    groups_claim: str = "groups"
    algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA")
    jwks_cache_seconds: int = 300
    # An unknown key id refetches the JWKS (key rotation), at most this often: junk kids cannot make the
    # broker hammer the issuer.
    jwks_refresh_cooldown_seconds: float = 30.0
    leeway_seconds: int = 30


class OidcTokens:
    """JWTs from one OIDC issuer. The JWKS is fetched on first use and cached; an unknown ``kid`` refetches
    it (key rotation). Expiry is judged against the broker's clock, not the library's."""

    name = "oidc"

    def __init__(self, settings: OidcSettings, *, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self._jwks = jwt.PyJWKClient(
            settings.jwks_url, cache_keys=True, lifespan=settings.jwks_cache_seconds, timeout=10
        )
        if hasattr(self._jwks, "cooldown_duration"):  # PyJWT >= 2.10
            self._jwks.cooldown_duration = settings.jwks_refresh_cooldown_seconds

    def authenticate(self, credential: str) -> Identity | None:
        if credential.count(".") != 2:
            return None  # not a JWT: another provider's kind of token
        try:
            key = self._jwks.get_signing_key_from_jwt(credential)
            claims: dict[str, Any] = jwt.decode(
                credential,
                key.key,
                algorithms=list(self.settings.algorithms),
                audience=self.settings.audience,
                issuer=self.settings.issuer,
                options={"verify_exp": False, "verify_iat": False, "verify_nbf": False, "require": ["exp"]},
            )
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            return None
        now = self.clock().timestamp()
        leeway = self.settings.leeway_seconds
        expires = claims.get("exp")
        if not isinstance(expires, int | float) or isinstance(expires, bool) or now >= expires + leeway:
            return None
        not_before = claims.get("nbf")
        if isinstance(not_before, int | float) and now + leeway < not_before:
            return None
        try:
            user = validation.user_name(
                claims.get(self.settings.username_claim), self.settings.username_claim
            )
        except KeyBrokerError:
            return None
        return Identity(user, _groups(claims.get(self.settings.groups_claim)), provider=self.name)


def _groups(value: object) -> frozenset[str]:
    """Group names from a claim or an API answer; anything that is not a valid group name is dropped."""
    if not isinstance(value, list):
        return frozenset()
    names = set()
    for item in value:
        try:
            names.add(validation.group_name(item.lstrip("/") if isinstance(item, str) else item))
        except KeyBrokerError:
            continue
    return frozenset(names)


# -- JupyterHub -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HubSettings:
    api_url: str  # e.g. http://127.0.0.1:8081/hub/api
    cache_seconds: int = 60
    timeout_seconds: float = 10.0


class HubTokens:
    """Hub API and OAuth tokens, checked by asking the hub who owns them (``GET <api_url>/user``).

    Answers are cached for ``cache_seconds`` per token (a revoked hub token stops working within that time);
    refusals are not cached, so a token just issued works at once.
    """

    name = "jupyterhub"

    def __init__(self, settings: HubSettings, *, clock: Clock, size: int = 4096) -> None:
        self.settings = settings
        self.clock = clock
        self._size = size
        self._cache: OrderedDict[bytes, tuple[datetime, Identity]] = OrderedDict()
        self._lock = threading.Lock()

    def authenticate(self, credential: str) -> Identity | None:
        digest = _digest(credential)
        now = self.clock()
        with self._lock:
            cached = self._cache.get(digest)
        if cached is not None and now < cached[0]:
            return cached[1]
        identity = self._ask_hub(credential)
        if identity is not None:
            with self._lock:
                self._cache[digest] = (now + timedelta(seconds=self.settings.cache_seconds), identity)
                while len(self._cache) > self._size:
                    self._cache.popitem(last=False)
        return identity

    def _ask_hub(self, credential: str) -> Identity | None:
        # The scheme is http(s), checked when the config was read (auth_config._hub).
        request = urllib.request.Request(  # noqa: S310
            self.settings.api_url.rstrip("/") + "/user",
            headers={"Authorization": f"token {credential}", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.settings.timeout_seconds) as answer:  # noqa: S310
                model = json.loads(answer.read(1024 * 1024))
        except urllib.error.HTTPError:
            return None  # 403/404: the hub does not know the token
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise KeyBrokerError("unavailable", f"cannot ask the hub who owns the token: {error}") from None
        if not isinstance(model, dict) or model.get("kind", "user") != "user":
            return None  # a service's token: not a user
        try:
            user = validation.user_name(model.get("name"), "name")
        except KeyBrokerError:
            return None
        scopes = model.get("scopes")
        teelab_scopes = (
            frozenset(s for s in scopes if isinstance(s, str) and s.startswith("custom:teelab:"))
            if isinstance(scopes, list)
            else frozenset()
        )
        return Identity(user, _groups(model.get("groups")), provider=self.name, scopes=teelab_scopes)


# -- the chain --------------------------------------------------------------------------------------------


@dataclass
class Authentication:
    """The admin token, then each provider in order; plus who holds the KBS admin role by name or group."""

    admin_digest: bytes = field(repr=False)
    providers: Sequence[Authenticator] = ()
    admin_users: frozenset[str] = frozenset()
    admin_groups: frozenset[str] = frozenset()

    def identify(self, credential: str) -> Identity | None:
        if not credential or len(credential) > MAX_CREDENTIAL_CHARS or not credential.isascii():
            return None
        if secrets.compare_digest(_digest(credential), self.admin_digest):
            return OPERATOR
        for provider in self.providers:
            identity = provider.authenticate(credential)
            if identity is not None:
                return self._with_role(identity)
        return None

    def _with_role(self, identity: Identity) -> Identity:
        admin = identity.user in self.admin_users or bool(identity.groups & self.admin_groups)
        if not admin:
            return identity
        return Identity(identity.user, identity.groups, True, identity.provider, identity.scopes)


def bearer(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    """The one bearer credential in a call's metadata, or None (none, several, or not a bearer header)."""
    values = [value for key, value in metadata if key.lower() == "authorization"]
    if len(values) != 1 or not isinstance(values[0], str):
        return None
    scheme, _, credential = values[0].partition(" ")
    if scheme.lower() not in ("bearer", "token"):
        return None
    return credential.strip() or None
