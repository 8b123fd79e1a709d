"""Bearer tokens for the key broker's callers: the admin and the gateway.

Each token is 32 random bytes (base64url) in a 0600 file in the state folder, created on first start:
``admin-token`` and ``gateway-token``. A request carries one in the gRPC metadata ``authorization: Bearer
<token>``. Comparison is constant time over SHA-256 digests (so neither content nor length leaks through
timing). Tokens are never logged; the server prints where they are stored, not what they are.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from filelock import FileLock

from teelab.errors import ConfigError
from teelab.files import write_private
from teelab.sealed_store.kbs.crypto import private_dir, read_secret

# File names, not tokens: the tokens are random and created on first start.
ADMIN_TOKEN_FILE = "admin-token"  # noqa: S105
GATEWAY_TOKEN_FILE = "gateway-token"  # noqa: S105
AUTHORIZATION = "authorization"
_BEARER = "bearer "


class Role(StrEnum):
    ADMIN = "admin"
    GATEWAY = "gateway"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class AccessTokens:
    admin_digest: bytes = field(repr=False)
    gateway_digest: bytes = field(repr=False)

    @classmethod
    def load_or_create(cls, state_dir: Path) -> AccessTokens:
        private_dir(state_dir)
        with FileLock(str(state_dir / ".keys.lock")):
            for name in (ADMIN_TOKEN_FILE, GATEWAY_TOKEN_FILE):
                if not (state_dir / name).exists():
                    write_private(state_dir / name, (secrets.token_urlsafe(32) + "\n").encode())
        return cls(
            _digest(read_token(state_dir / ADMIN_TOKEN_FILE)),
            _digest(read_token(state_dir / GATEWAY_TOKEN_FILE)),
        )

    def role_of(self, metadata: Iterable[tuple[str, str | bytes]]) -> Role | None:
        """The role the request's bearer token proves, or None (no, several or an unknown token)."""
        values = [value for key, value in metadata if key.lower() == AUTHORIZATION]
        if len(values) != 1 or not isinstance(values[0], str):
            return None
        header = values[0]
        if header[: len(_BEARER)].lower() != _BEARER:
            return None
        digest = _digest(header[len(_BEARER) :].strip())
        # Both comparisons always run: which token matched must not show in the timing either.
        is_admin = hmac.compare_digest(digest, self.admin_digest)
        is_gateway = hmac.compare_digest(digest, self.gateway_digest)
        if is_admin:
            return Role.ADMIN
        if is_gateway:
            return Role.GATEWAY
        return None


def read_token(path: Path) -> str:
    token = read_secret(path).decode("ascii", "replace").strip()
    if not token:
        raise ConfigError(f"the token file {path} is empty")
    return token
