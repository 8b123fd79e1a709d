"""One TLS connection to a hub, used for every request of a ``teelab hub verify`` run.

The peer's key is read from this connection's handshake (:attr:`HubChannel.tls_spki_sha256`); every request
afterwards travels over the same connection, and the channel refuses to open a second one (``http.client``
would silently reconnect after the server closed, and the new connection's key would be unverified).
The certificate is not checked against any CA: what makes the key trustworthy is the attestation evidence
bound to it (or, with ``--cafile``, also a CA the user names).
"""

from __future__ import annotations

import http.client
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from teelab.errors import UsageError
from teelab.extension.hub.front_door_protocol import MAX_REPLY_BYTES, FrontDoorError, spki_sha256

TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class HubAddress:
    host: str
    port: int

    @property
    def origin(self) -> str:
        """``https://host:port``: the key of this hub in the pin file."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    @classmethod
    def parse(cls, url: str) -> HubAddress:
        parts = urlsplit(url if "://" in url else f"https://{url}")
        if parts.scheme != "https" or not parts.hostname:
            raise UsageError(
                f"{url!r} is not an https:// URL", hint="e.g. teelab hub verify https://hub.example.org"
            )
        try:
            port = parts.port or 443
        except ValueError:
            raise UsageError(f"{url!r} has an invalid port") from None
        return cls(parts.hostname, port)


def client_context(cafile: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cafile) if cafile else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if not cafile:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the attestation binding, not a CA, vouches for the key
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class _OneConnection(http.client.HTTPSConnection):
    """An HTTPS connection that connects once: a reconnect would be a connection nobody verified."""

    _connected_once = False

    def connect(self) -> None:
        if self._connected_once:
            raise FrontDoorError(
                "the hub closed the verified connection; refusing to continue on a new, unverified one",
                hint="run teelab hub verify again",
            )
        self._connected_once = True
        super().connect()


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    retry_after: str | None = None  # the Retry-After header of a 429 or 503, as sent (untrusted)


class HubChannel:
    """A TLS connection to ``address`` and HTTP/1.1 requests over it (keep-alive)."""

    def __init__(self, address: HubAddress, *, cafile: str | None = None) -> None:
        self.address = address
        self._connection = _OneConnection(
            address.host, address.port, context=client_context(cafile), timeout=TIMEOUT_SECONDS
        )
        try:
            self._connection.connect()
        except (OSError, ssl.SSLError) as error:
            raise FrontDoorError(f"cannot open TLS to {address.origin}: {error}") from None
        sock = self._connection.sock
        assert isinstance(sock, ssl.SSLSocket)
        self._socket = sock
        certificate = sock.getpeercert(binary_form=True)
        if not certificate:
            raise FrontDoorError(f"{address.origin} presented no TLS certificate")
        self.tls_spki_sha256 = spki_sha256(certificate)
        self.tls_version = sock.version() or "TLS"

    def get(self, path: str, headers: dict[str, str] | None = None) -> Reply:
        try:
            self._connection.request("GET", path, headers=headers or {})
            response = self._connection.getresponse()
            body = response.read(MAX_REPLY_BYTES + 1)
        except FrontDoorError:
            raise
        except (OSError, http.client.HTTPException, ssl.SSLError, ValueError) as error:
            raise FrontDoorError(f"GET {path} over the verified connection failed: {error}") from None
        if len(body) > MAX_REPLY_BYTES:
            raise FrontDoorError(f"the reply to GET {path} is larger than {MAX_REPLY_BYTES} bytes")
        if self._connection.sock is not self._socket:
            raise FrontDoorError(
                "the verified connection was replaced"
            )  # belt and braces over _OneConnection
        return Reply(response.status, body, response.getheader("Retry-After"))

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> HubChannel:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


__all__ = ["HubAddress", "HubChannel", "Reply", "client_context"]
