"""Enclave signing keys and the signature structure, modelled on SGX's SIGSTRUCT.

An enclave author signs (MRENCLAVE, ISV product id, ISV SVN, attributes) with an RSA-3072 key of public
exponent 3; MRSIGNER is the SHA-256 of the key's modulus in little-endian order, as on SGX. The default key
is per user (``<data dir>/enclave-signing-key.pem``, created on first use, 0600), like Gramine's
``enclave-key.pem``; production images are signed with the author's own key (``--signing-key``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from teelab.errors import EnclaveError
from teelab.files import write_private
from teelab.paths import data_dir
from teelab.timeutil import isoformat, utcnow

SIGSTRUCT_FORMAT = "teelab/sigstruct/v1"
ATTRIBUTE_DEBUG = 0x02


def default_key_path() -> Path:
    return data_dir() / "enclave-signing-key.pem"


def load_or_create_key(path: Path | None = None) -> rsa.RSAPrivateKey:
    path = path or default_key_path()
    if not path.exists() and path == default_key_path():
        key = rsa.generate_private_key(public_exponent=3, key_size=3072)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        try:
            write_private(path, pem)
        except FileExistsError:
            pass  # another process made one first; use theirs so both sign with the same key
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise EnclaveError(f"signing key {path} does not exist") from None
    except ValueError as error:
        raise EnclaveError(f"signing key {path} is not a PEM private key: {error}") from None
    if not isinstance(loaded, rsa.RSAPrivateKey) or loaded.key_size != 3072:
        raise EnclaveError(f"signing key {path} must be an RSA-3072 key, as SGX requires")
    return loaded


def mrsigner_of(public_key: rsa.RSAPublicKey) -> bytes:
    from hashlib import sha256

    return sha256(public_key.public_numbers().n.to_bytes(384, "little")).digest()


@dataclass(frozen=True)
class Sigstruct:
    mrenclave: bytes
    mrsigner: bytes
    isv_prod_id: int
    isv_svn: int
    attributes: int
    date: str
    modulus: bytes  # big-endian, 384 bytes
    signature: bytes

    @property
    def debug(self) -> bool:
        return bool(self.attributes & ATTRIBUTE_DEBUG)

    def _signed(self) -> bytes:
        return json.dumps(
            {
                "format": SIGSTRUCT_FORMAT,
                "mrenclave": self.mrenclave.hex(),
                "isv_prod_id": self.isv_prod_id,
                "isv_svn": self.isv_svn,
                "attributes": self.attributes,
                "date": self.date,
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()

    def to_json(self) -> dict[str, object]:
        return {
            "format": SIGSTRUCT_FORMAT,
            "mrenclave": self.mrenclave.hex(),
            "mrsigner": self.mrsigner.hex(),
            "isv_prod_id": self.isv_prod_id,
            "isv_svn": self.isv_svn,
            "attributes": self.attributes,
            "debug": self.debug,
            "date": self.date,
            "modulus": self.modulus.hex(),
            "signature": self.signature.hex(),
        }

    @classmethod
    def from_json(cls, data: dict[str, object], *, source: str) -> Sigstruct:
        try:
            if data["format"] != SIGSTRUCT_FORMAT:
                raise ValueError(f"unknown format {data['format']!r}")
            value = cls(
                mrenclave=bytes.fromhex(str(data["mrenclave"])),
                mrsigner=bytes.fromhex(str(data["mrsigner"])),
                isv_prod_id=int(str(data["isv_prod_id"])),
                isv_svn=int(str(data["isv_svn"])),
                attributes=int(str(data["attributes"])),
                date=str(data["date"]),
                modulus=bytes.fromhex(str(data["modulus"])),
                signature=bytes.fromhex(str(data["signature"])),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise EnclaveError(f"{source} is not a valid signature structure: {error}") from None
        value.verify(source=source)
        return value

    def verify(self, *, source: str) -> None:
        public = rsa.RSAPublicNumbers(3, int.from_bytes(self.modulus, "big")).public_key()
        if mrsigner_of(public) != self.mrsigner:
            raise EnclaveError(f"{source}: MRSIGNER does not match the signing key")
        try:
            public.verify(self.signature, self._signed(), padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise EnclaveError(f"{source}: the enclave signature does not verify") from None


def sign(
    key: rsa.RSAPrivateKey, *, mrenclave: bytes, isv_prod_id: int, isv_svn: int, debug: bool
) -> Sigstruct:
    public = key.public_key()
    # A fixed date makes a re-signed image byte-identical (Gramine's `--date 0000-00-00` does the same).
    date = os.environ.get("TEELAB_SIGSTRUCT_DATE", isoformat(utcnow())[:10])
    unsigned = Sigstruct(
        mrenclave=mrenclave,
        mrsigner=mrsigner_of(public),
        isv_prod_id=isv_prod_id,
        isv_svn=isv_svn,
        attributes=0x05 | (ATTRIBUTE_DEBUG if debug else 0),  # INIT | MODE64BIT (| DEBUG)
        date=date,
        modulus=public.public_numbers().n.to_bytes(384, "big"),
        signature=b"",
    )
    signature = key.sign(unsigned._signed(), padding.PKCS1v15(), hashes.SHA256())
    return Sigstruct(**{**unsigned.__dict__, "signature": signature})
