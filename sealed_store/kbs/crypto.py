"""The key broker's own secrets, on disk in its state folder, and how data keys are wrapped at rest.

Three keys are created on first start, each in a 0600 file inside the 0700 state folder:

- ``master.key`` (32 bytes): wraps every data key with AES-256-GCM; the database holds only wrapped keys,
  so a copy of the database alone reveals no data key.
- ``hpke.key`` (X25519): owners seal data keys to its public half when they register a dataset version.
- ``signing.key`` (Ed25519, PKCS#8 PEM): signs session grants and every audit entry. Its public half is also
  written to ``signing.pub`` (0644) so ``teelab audit verify`` can pin it without reading a secret.

Creation is serialised with a lock file, so two servers starting at once on one state folder end up with one
set of keys. A replicated deployment gives every replica the same files (e.g. one mounted secret).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from filelock import FileLock

from teelab.errors import ConfigError
from teelab.files import write_private
from teelab.sealed_store.kbs.protocol import DEK_SIZE, PROTOCOL

MASTER_KEY_FILE = "master.key"
HPKE_KEY_FILE = "hpke.key"
SIGNING_KEY_FILE = "signing.key"
SIGNING_PUBLIC_FILE = "signing.pub"
_WRAP_LABEL = PROTOCOL.encode() + b"/wrap"
_GCM_NONCE = 12


def private_dir(path: Path) -> Path:
    """Create ``path`` 0700, or tighten it to 0700 if it exists with wider permissions."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        os.chmod(path, 0o700)
    return path


def read_secret(path: Path, size: int | None = None) -> bytes:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read the key broker key {path}: {error.strerror or error}") from None
    if mode & 0o077:
        raise ConfigError(
            f"the key broker key {path} is readable by others (mode {mode:o})",
            hint=f"chmod 600 {path}",
        )
    if size is not None and len(data) != size:
        raise ConfigError(f"the key broker key {path} is {len(data)} bytes, expected {size}")
    return data


def key_id(public_key: bytes) -> str:
    return hashlib.sha256(public_key).hexdigest()[:16]


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class KbsKeys:
    master_key: bytes = field(repr=False)
    hpke_key: X25519PrivateKey = field(repr=False)
    signing_key: Ed25519PrivateKey = field(repr=False)

    @property
    def hpke_public_key(self) -> bytes:
        return self.hpke_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def signing_public_key(self) -> bytes:
        return raw_public(self.signing_key.public_key())

    @property
    def signing_key_id(self) -> str:
        return key_id(self.signing_public_key)

    @classmethod
    def load_or_create(cls, state_dir: Path) -> KbsKeys:
        private_dir(state_dir)
        with FileLock(str(state_dir / ".keys.lock")):
            if not (state_dir / MASTER_KEY_FILE).exists():
                write_private(state_dir / MASTER_KEY_FILE, secrets.token_bytes(32))
            if not (state_dir / HPKE_KEY_FILE).exists():
                hpke_key = X25519PrivateKey.generate()
                write_private(
                    state_dir / HPKE_KEY_FILE,
                    hpke_key.private_bytes(
                        serialization.Encoding.Raw,
                        serialization.PrivateFormat.Raw,
                        serialization.NoEncryption(),
                    ),
                )
            if not (state_dir / SIGNING_KEY_FILE).exists():
                signing_key = Ed25519PrivateKey.generate()
                write_private(
                    state_dir / SIGNING_KEY_FILE,
                    signing_key.private_bytes(
                        serialization.Encoding.PEM,
                        serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption(),
                    ),
                )
                public = state_dir / SIGNING_PUBLIC_FILE
                public.unlink(missing_ok=True)
                public.write_text(raw_public(signing_key.public_key()).hex() + "\n")
            return cls.load(state_dir)

    @classmethod
    def load(cls, state_dir: Path) -> KbsKeys:
        master = read_secret(state_dir / MASTER_KEY_FILE, 32)
        hpke_key = X25519PrivateKey.from_private_bytes(read_secret(state_dir / HPKE_KEY_FILE, 32))
        pem = read_secret(state_dir / SIGNING_KEY_FILE)
        try:
            signing_key = serialization.load_pem_private_key(pem, password=None)
        except ValueError as error:
            raise ConfigError(f"{state_dir / SIGNING_KEY_FILE} is not a PEM private key ({error})") from None
        if not isinstance(signing_key, Ed25519PrivateKey):
            raise ConfigError(f"{state_dir / SIGNING_KEY_FILE} is not an Ed25519 key")
        return cls(master, hpke_key, signing_key)

    # -- data keys at rest ---------------------------------------------------------------------------

    def wrap_dek(self, dataset: str, version: int, dek: bytes) -> bytes:
        """AES-256-GCM under the master key; the AAD names the dataset version, so a wrapped key moved to
        another row of the database does not unwrap."""
        if len(dek) != DEK_SIZE:
            raise ValueError(f"a data key is {DEK_SIZE} bytes")
        nonce = secrets.token_bytes(_GCM_NONCE)
        return nonce + AESGCM(self.master_key).encrypt(nonce, dek, _wrap_aad(dataset, version))

    def unwrap_dek(self, dataset: str, version: int, wrapped: bytes) -> bytes:
        try:
            return AESGCM(self.master_key).decrypt(
                wrapped[:_GCM_NONCE], wrapped[_GCM_NONCE:], _wrap_aad(dataset, version)
            )
        except (InvalidTag, ValueError):
            # The database row was edited or moved, or the master key is not the one that wrapped it.
            raise ConfigError(
                f"the stored data key of {dataset} version {version} does not unwrap with this master key"
            ) from None


def _wrap_aad(dataset: str, version: int) -> bytes:
    return _WRAP_LABEL + b"\x00" + dataset.encode() + b"\x00" + struct.pack(">I", version)


def load_signing_public_key(path: Path) -> bytes:
    """A pinned audit/grant public key: ``signing.pub`` (hex) or raw 32 bytes."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read the public key {path}: {error.strerror or error}") from None
    if len(data) == 32:
        return data
    try:
        key = bytes.fromhex(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise ConfigError(f"{path} is not a hex Ed25519 public key") from None
    if len(key) != 32:
        raise ConfigError(f"{path} holds {len(key)} bytes, an Ed25519 public key is 32")
    return key
