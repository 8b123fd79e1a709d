"""How a key broker is addressed and reached: ``HOST:PORT`` (plaintext gRPC) or ``grpcs://HOST:PORT`` (TLS).

The protocol's secrets never depend on the transport (data keys and session grants travel HPKE-sealed), but
the admin and gateway bearer tokens do: a client refuses to send one in plaintext anywhere but loopback.
TLS trusts the system's roots, or the CA certificate in the PEM file named by ``TEELAB_KBS_CA`` (a private
CA), or one given explicitly.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from teelab.errors import ConfigError

TLS_SCHEME = "grpcs://"
PLAIN_SCHEME = "grpc://"
CA_ENV = "TEELAB_KBS_CA"
_ADDRESS_HINT = "write the key broker's address as HOST:PORT, or grpcs://HOST:PORT for TLS"


@dataclass(frozen=True)
class KbsTarget:
    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, text: str) -> KbsTarget:
        """``HOST:PORT``, ``grpc://HOST:PORT`` or ``grpcs://HOST:PORT`` (IPv6 hosts in brackets)."""
        rest, tls = text.strip(), False
        if rest.startswith(TLS_SCHEME):
            rest, tls = rest[len(TLS_SCHEME) :], True
        elif rest.startswith(PLAIN_SCHEME):
            rest = rest[len(PLAIN_SCHEME) :]
        elif "://" in rest:
            raise ConfigError(f"unknown scheme in the key broker address {text!r}", hint=_ADDRESS_HINT)
        host, colon, port_text = rest.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not colon or not host or not port_text.isdigit() or "/" in host or any(c.isspace() for c in host):
            raise ConfigError(f"the key broker address {text!r} is not HOST:PORT", hint=_ADDRESS_HINT)
        port = int(port_text)
        if port > 65535:
            raise ConfigError(
                f"the port in the key broker address {text!r} is above 65535", hint=_ADDRESS_HINT
            )
        return cls(host, port, tls)

    @property
    def address(self) -> str:
        """``host:port`` as gRPC wants it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        return f"{TLS_SCHEME}{self.address}" if self.tls else self.address


def read_ca(path: Path) -> bytes:
    """A PEM file of CA certificates, checked to parse (a clear error instead of a failed handshake later)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read the key broker CA file {path}: {error.strerror}") from None
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigError(f"{path} holds no PEM certificate", hint="give the CA certificate in PEM") from None
    return data


def ca_from_environment() -> bytes | None:
    """The CA in ``$TEELAB_KBS_CA``, if set; None: the system's roots."""
    path = os.environ.get(CA_ENV)
    return read_ca(Path(path)) if path else None


@dataclass(frozen=True)
class ServerTls:
    """The broker's certificate chain and private key, read and checked to belong together."""

    certificate_chain: bytes
    private_key: bytes

    @classmethod
    def load(cls, certificate: Path, key: Path) -> ServerTls:
        try:
            chain = certificate.read_bytes()
        except OSError as error:
            raise ConfigError(f"cannot read the TLS certificate {certificate}: {error.strerror}") from None
        try:
            leaf = x509.load_pem_x509_certificates(chain)[0]
        except ValueError:
            raise ConfigError(f"{certificate} holds no PEM certificate") from None
        try:
            mode = key.stat().st_mode
            key_bytes = key.read_bytes()
        except OSError as error:
            raise ConfigError(f"cannot read the TLS private key {key}: {error.strerror}") from None
        if mode & stat.S_IROTH:
            raise ConfigError(f"the TLS private key {key} is readable by every user", hint=f"chmod 600 {key}")
        try:
            private = serialization.load_pem_private_key(key_bytes, password=None)
        except (ValueError, TypeError):
            raise ConfigError(
                f"{key} holds no unencrypted PEM private key",
                hint="give the key in PEM, without a passphrase",
            ) from None
        public = serialization.PublicFormat.SubjectPublicKeyInfo
        if private.public_key().public_bytes(
            serialization.Encoding.DER, public
        ) != leaf.public_key().public_bytes(serialization.Encoding.DER, public):
            raise ConfigError(f"the TLS private key {key} does not belong to the certificate {certificate}")
        return cls(chain, key_bytes)
