"""Who is calling the host agent: a gateway presenting a bearer token the operator issued it, or a TLS client
certificate from the operator's CA (:mod:`.certificates`); the operator chooses one of the two per agent.

The tokens file has one ``NAME TOKEN`` per line (``#`` comments), is the operator's and must not be readable
by other users. A caller is known by the name of the token it presented; every look-up compares against every
token in constant time, so timing tells nothing about which prefix matched.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import stat
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from teelab.enclave_runtime.agent.certificates import peer_certificate_identity
from teelab.enclave_runtime.agent.revocation import RevokedCertificates
from teelab.errors import ConfigError

log = logging.getLogger("teelab.host")
MIN_TOKEN_LENGTH = 16


@dataclass(frozen=True)
class GatewayTokens:
    tokens: tuple[tuple[str, bytes], ...]

    @classmethod
    def load(cls, path: Path) -> GatewayTokens:
        try:
            mode = path.stat().st_mode
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"cannot read the gateway tokens file {path}: {error}") from None
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            raise ConfigError(
                f"the gateway tokens file {path} is readable by others", hint=f"chmod 600 {path}"
            )
        entries: list[tuple[str, bytes]] = []
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, _, token = line.partition(" ")
            token = token.strip()
            if not name.isprintable() or len(token) < MIN_TOKEN_LENGTH or " " in token:
                raise ConfigError(
                    f"{path}:{number}: expected 'NAME TOKEN' with a token of at least {MIN_TOKEN_LENGTH} "
                    "characters"
                )
            entries.append((name, token.encode()))
        if not entries:
            raise ConfigError(f"the gateway tokens file {path} names no gateway")
        if len({name for name, _ in entries}) != len(entries):
            raise ConfigError(f"the gateway tokens file {path} names a gateway twice")
        return cls(tuple(entries))

    def caller(self, presented: str | None) -> str | None:
        """The gateway named by ``presented`` (the bearer token), or None."""
        if not presented:
            return None
        given = presented.encode()
        found: str | None = None
        for name, token in self.tokens:
            if hmac.compare_digest(given, token):
                found = name
        return found


@dataclass(frozen=True)
class GatewayAuth:
    """How this agent names its callers: by token (``tokens``) or by verified client certificate."""

    tokens: TokenSource | None = None
    certificates: bool = False
    revoked: RevokedCertificates | None = None  # with certificates only

    def __post_init__(self) -> None:
        if (self.tokens is None) == (not self.certificates):
            raise ConfigError(
                "the host agent authenticates gateways by tokens or by client certificates: give exactly one "
                "of --tokens and --client-ca"
            )
        if self.revoked is not None and not self.certificates:
            raise ConfigError("--revoked lists client certificates: it needs --client-ca")

    @property
    def what(self) -> str:
        return "a gateway client certificate" if self.certificates else "a gateway token"

    def caller(
        self,
        metadata: tuple[tuple[str, str | bytes], ...] | None,
        auth_context: Mapping[str, Iterable[bytes]],
    ) -> str | None:
        """The gateway making a call, or None (the call is refused)."""
        if self.certificates:
            return peer_certificate_identity(auth_context, self.revoked)
        assert self.tokens is not None
        return self.tokens.caller(bearer(metadata))


class TokenFile:
    """The operator's tokens file, re-read whenever it changes: removing a line revokes that token from the next
    call on. A file that cannot be read or parsed admits nobody until it is fixed (fail closed: a half-edited
    file must not keep a removed token alive)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._current: GatewayTokens | None = GatewayTokens.load(path)  # errors at start are the operator's
        self._seen = self._stamp()
        self._lock = threading.Lock()

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            info = self.path.stat()
        except OSError:
            return None
        return (info.st_mtime_ns, info.st_size, info.st_ino)

    def caller(self, presented: str | None) -> str | None:
        with self._lock:
            stamp = self._stamp()
            if stamp != self._seen:
                self._seen = stamp
                try:
                    self._current = GatewayTokens.load(self.path)
                except ConfigError as error:
                    log.error(
                        "teelab host agent: admitting no gateway until the tokens file is fixed: %s", error
                    )
                    self._current = None
            current = self._current
        return current.caller(presented) if current is not None else None


class TokenSource(Protocol):
    def caller(self, presented: str | None) -> str | None: ...


def bearer(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer ") :]
    return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
