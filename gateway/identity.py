"""The gateway's identity key ``G`` (ARCHITECTURE §3, the controller rule).

Every kernel obeys exactly one controller: the gateway that launched it. ``G`` is an Ed25519 key kept in the
user's trust domain — per user on a single machine (a 0600 file in the user's teelab data folder), per
single-user server under JupyterHub (``c.TeeProvisioner.identity_file``). Only ``G.pub`` ever leaves it: named
in the boot request, bound by the platform into every evidence the kernel produces as the *controller hash*
``SHA-256(G.pub)``, and the key that authenticates the session bundle (:func:`sign_bundle`), which the boot
refuses from anyone else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from teelab.errors import ConfigError
from teelab.files import replace_atomically
from teelab.paths import data_dir
from teelab.protocols.session import controller_hash, sign_bundle

IDENTITY_FILE = "gateway-identity.pem"


def default_identity_file() -> Path:
    return data_dir() / IDENTITY_FILE


@dataclass(frozen=True)
class GatewayIdentity:
    secret: Ed25519PrivateKey

    @property
    def public(self) -> bytes:
        """``G.pub``: 32 raw bytes, the only part of ``G`` that is ever sent anywhere."""
        return self.secret.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def controller(self) -> bytes:
        """``SHA-256(G.pub)``: what the platform binds into the kernel's evidence at launch."""
        return controller_hash(self.public)

    def sign_bundle(self, sealed: bytes, nonce: bytes, enclave_key: bytes) -> bytes:
        return sign_bundle(self.secret, sealed, nonce, enclave_key)

    @classmethod
    def generate(cls) -> GatewayIdentity:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, path: Path | None = None) -> GatewayIdentity:
        """The identity in ``path`` (default: the user's data folder), created 0600 on first use."""
        path = path or default_identity_file()
        try:
            if not path.exists():
                cls._create(path)
            data = path.read_bytes()
        except OSError as error:
            raise ConfigError(
                f"cannot read the gateway identity key {path}: {error.strerror or error}"
            ) from None
        if os.stat(path).st_mode & 0o077:
            raise ConfigError(
                f"the gateway identity key {path} is readable by other users",
                hint=f"chmod 600 {path} (or delete it to make a new one; running kernels then stop obeying)",
            )
        try:
            secret = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise ConfigError(f"{path} is not a PEM private key") from None
        if not isinstance(secret, Ed25519PrivateKey):
            raise ConfigError(f"{path} is not an Ed25519 key (the gateway identity is Ed25519)")
        return cls(secret)

    @classmethod
    def _create(cls, path: Path) -> None:
        """Write a new key to ``path`` unless another process got there first (then theirs is the identity)."""
        pem = cls.generate().secret.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        staged = path.with_name(f".{path.name}.{os.getpid()}.new")
        replace_atomically(staged, pem, mode=0o600)
        try:
            os.link(staged, path)  # fails if the file exists: never replace an identity kernels may obey
        except FileExistsError:
            pass
        finally:
            staged.unlink(missing_ok=True)
