"""The identity the simulated loader gives a launched enclave, and its sealing identities.

On hardware the CPU records MRENCLAVE/MRSIGNER/attributes in the enclave's SECS at load time; the simulated
loader checks the image's trusted files while the process starts and then writes the identity to a pipe the
process inherited (its number in ``TEELAB_SIM_IDENTITY_FD``). Until then the process cannot produce
evidence; if a trusted file does not match, it is killed without ever getting an identity.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from teelab.enclave_runtime.backend import SealPolicy
from teelab.errors import EvidenceError

IDENTITY_FD_ENV = "TEELAB_SIM_IDENTITY_FD"
ATTRIBUTE_DEBUG = 0x02


@dataclass(frozen=True)
class SimIdentity:
    platform: Path
    mrenclave: bytes
    mrsigner: bytes
    isv_prod_id: int
    isv_svn: int
    attributes: int
    # SGX KSS CONFIGID: on hardware the launcher sets it in SECS at EINIT and the CPU puts it in every report;
    # here the loader sets it, and the runtime reads it once at start-up (a model of what the platform
    # enforces: the simulated TEE is not confidential, so nothing stops the process from lying about it).
    config_id: bytes = bytes(64)

    @property
    def debug(self) -> bool:
        return bool(self.attributes & ATTRIBUTE_DEBUG)

    def to_env(self) -> str:
        return json.dumps(
            {
                "platform": str(self.platform),
                "mrenclave": self.mrenclave.hex(),
                "mrsigner": self.mrsigner.hex(),
                "isv_prod_id": self.isv_prod_id,
                "isv_svn": self.isv_svn,
                "attributes": self.attributes,
                "config_id": self.config_id.hex(),
            }
        )

    @classmethod
    def from_loader(cls, fd_text: str | None) -> SimIdentity:
        """Read the identity the loader writes once the image checked out (blocks until then)."""
        if not fd_text:
            raise EvidenceError(
                "this process was not launched by the simulated TEE backend",
                hint="start it with `SimBackend.launch` (the teelab-sim kernel does this for you)",
            )
        try:
            with os.fdopen(int(fd_text), "r") as pipe:
                value = pipe.read()
        except (OSError, ValueError) as error:
            raise EvidenceError(f"cannot read the enclave identity from the loader: {error}") from None
        if not value:
            raise EvidenceError("the loader gave this enclave no identity (its image did not check out)")
        return cls.from_text(value)

    @classmethod
    def from_text(cls, value: str) -> SimIdentity:
        try:
            data = json.loads(value)
            identity = cls(
                platform=Path(data["platform"]),
                mrenclave=bytes.fromhex(data["mrenclave"]),
                mrsigner=bytes.fromhex(data["mrsigner"]),
                isv_prod_id=int(data["isv_prod_id"]),
                isv_svn=int(data["isv_svn"]),
                attributes=int(data["attributes"]),
                config_id=bytes.fromhex(data["config_id"]),
            )
        except (ValueError, KeyError, TypeError) as error:
            raise EvidenceError(f"malformed enclave identity: {error}") from None
        if len(identity.config_id) != 64:
            raise EvidenceError("malformed enclave identity: CONFIGID is not 64 bytes")
        return identity

    def sealing_identity(self, policy: SealPolicy) -> bytes:
        """The bytes a sealing key is bound to; the DEBUG attribute is always part of it, as on SGX."""
        debug = struct.pack("<B", self.attributes & ATTRIBUTE_DEBUG)
        if policy is SealPolicy.MRENCLAVE:
            return b"mrenclave\x00" + self.mrenclave + debug
        return b"mrsigner\x00" + self.mrsigner + struct.pack("<H", self.isv_prod_id) + debug
