"""What the key broker's API returns: plain, immutable values shared by the server, the client and the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


class Unset:
    """Marks "leave as it is" where ``None`` already means "no value" (e.g. no release expiry)."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET = Unset()


@dataclass(frozen=True)
class VersionInfo:
    version: int
    manifest_sha256: str
    registered_at: datetime
    # Deleted versions stay as tombstones (their data key erased) so a version number is never reused.
    deleted_at: datetime | None = None

    @property
    def deleted(self) -> bool:
        return self.deleted_at is not None


@dataclass(frozen=True)
class GrantInfo:
    dataset: str
    principal: str  # "user:<name>" or "group:<name>"
    granted_at: datetime
    expires_at: datetime | None = None

    def active_at(self, at: datetime) -> bool:
        return self.expires_at is None or at < self.expires_at


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    owner: str
    # The highest registered, non-deleted version; None when every version is deleted.
    current_version: int | None
    versions: tuple[VersionInfo, ...]
    policy_id: str
    policy_sha256: str
    created_at: datetime
    release_expires_at: datetime | None = None
    grants: tuple[GrantInfo, ...] = ()
    # Only GetDataset (admin) carries the policy text.
    release_policy_toml: str | None = None

    def version(self, number: int) -> VersionInfo | None:
        return next((v for v in self.versions if v.version == number), None)


@dataclass(frozen=True)
class GroupInfo:
    name: str
    members: tuple[str, ...]


@dataclass(frozen=True)
class Challenge:
    nonce: bytes
    expires_at: datetime


@dataclass(frozen=True)
class IssuedGrant:
    """A session grant as the gateway receives it; ``token`` goes into the sealed session bundle."""

    token: str
    grant_id: str
    user: str
    enclave_key_sha256: str
    issued_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class ReleasedKey:
    dataset: str
    version: int
    manifest_sha256: str
    dek: bytes = field(repr=False)  # never in a repr, a log line or a traceback


@dataclass(frozen=True)
class KbsInfo:
    protocol: str
    hpke_public_key: bytes
    hpke_suite: str
    signing_public_key: bytes
    signing_key_id: str
    server_time: datetime | None
