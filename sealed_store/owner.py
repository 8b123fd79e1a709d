"""A data owner's operations: seal, register the key, upload, grant, revoke, list, delete.

The CLI (`teelab dataset …`) and the JupyterLab extension's dataset API both go through :class:`DataOwner`,
so the order of the steps — and what a failure in the middle leaves behind — is defined once:

1. **seal** locally (the data key exists only in this process's memory);
2. **register** the version with the key broker (the key travels sealed to the broker's HPKE key). If this
   fails, the sealed parts are deleted: without its key they could never be read;
3. **upload** the sealed parts (resumable, atomic: the version appears only once complete). If this fails,
   the broker already knows the version and `teelab dataset upload <sealed folder>` resumes it;
4. **grant** users and groups.
"""

from __future__ import annotations

import builtins
import getpass
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from teelab.errors import KeyBrokerError, UsageError
from teelab.paths import data_dir
from teelab.sealed_store import services
from teelab.sealed_store.folder import SealedDataset
from teelab.sealed_store.format import check_name
from teelab.sealed_store.kbs.client import KbsClient
from teelab.sealed_store.kbs.model import DatasetInfo, GrantInfo
from teelab.sealed_store.storage import DatasetStore, DatasetVersion
from teelab.sealed_store.upload import UploadResult


def principal(text: str) -> str:
    """``alice`` → ``user:alice``; ``user:…`` and ``group:…`` as given."""
    text = text.strip()
    if text.startswith(("user:", "group:")):
        return text
    if ":" in text or not text:
        raise UsageError(f"not a user or group: {text!r}", hint="write user:NAME or group:NAME")
    return f"user:{text}"


@dataclass(frozen=True)
class SealedVersion:
    """A sealed folder whose key the broker now holds, and how many rows went in."""

    dataset: SealedDataset
    rows: int


@dataclass(frozen=True)
class Published:
    name: str
    version: int
    manifest_sha256: str
    parts: int
    size: int
    rows: int
    grants: tuple[GrantInfo, ...]


@dataclass(frozen=True)
class DatasetView:
    """What the broker knows of a dataset, and which of its versions the store holds."""

    info: DatasetInfo
    stored: tuple[DatasetVersion, ...]

    def to_json(self) -> dict[str, Any]:
        stored = {v.version for v in self.stored}
        return {
            "name": self.info.name,
            "owner": self.info.owner,
            "current_version": self.info.current_version,
            "versions": [
                {
                    "version": v.version,
                    "manifest_sha256": v.manifest_sha256,
                    "registered_at": v.registered_at.isoformat(),
                    "deleted": v.deleted,
                    "uploaded": v.version in stored,
                }
                for v in self.info.versions
            ],
            "policy_id": self.info.policy_id,
            "created_at": self.info.created_at.isoformat(),
            "release_expires_at": self.info.release_expires_at.isoformat()
            if self.info.release_expires_at
            else None,
            "grants": [
                {"principal": g.principal, "expires_at": g.expires_at.isoformat() if g.expires_at else None}
                for g in self.info.grants
            ],
        }


class DataOwner:
    def __init__(self, kbs: KbsClient, store: DatasetStore, owner: str) -> None:
        self.kbs = kbs
        self.store = store
        self.owner = owner

    @classmethod
    def connect(
        cls,
        *,
        kbs: str | None = None,
        token_file: Path | None = None,
        store: str | None = None,
        owner: str | None = None,
    ) -> DataOwner:
        """Act as the user a credential names: ``token_file``, else the user's own (``services.user_credential``:
        the local broker's token for this login, or the hub token of this server's user). The broker decides
        what that user may do; ``owner`` (a user or ``group:NAME``) is what new datasets record."""
        if token_file is not None and not token_file.is_file():
            raise UsageError(f"no key broker token at {token_file}")
        credential = services.user_credential(token_file)
        if credential is None:
            raise UsageError(
                f"no key broker credential: no user token at {services.user_token_file()}",
                hint="start the local broker with `teelab kbs serve` (it issues your token), or pass --kbs "
                "and --token-file (or set $TEELAB_KBS_TOKEN_FILE)",
            )
        client = KbsClient(services.kbs_address(kbs), credential)
        return cls(client, DatasetStore(services.store_url(store)), owner or getpass.getuser())

    def close(self) -> None:
        self.kbs.close()

    def __enter__(self) -> DataOwner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- versions ---------------------------------------------------------------------------------------

    def next_version(self, name: str) -> int:
        name = check_name(name)
        """One more than any version the broker ever registered (numbers are never reused)."""
        try:
            info = self.kbs.get_dataset(name)
        except KeyBrokerError as error:
            if error.reason == "dataset_unknown":
                return 1
            raise
        return max((v.version for v in info.versions), default=0) + 1

    def seal(
        self,
        source: Any,
        *,
        name: str,
        out: Path,
        policy_toml: str,
        version: int | None = None,
        release_expires_at: datetime | None = None,
        progress: Any = None,
        **seal_options: Any,
    ) -> SealedVersion:
        """Seal ``source`` into ``out`` and register its key; the key never touches a disk."""
        from teelab.sealed_store.seal import seal_dataset
        from teelab.sealed_store.seal_cli import discard

        version = version or self.next_version(name)
        result = seal_dataset(source, name=name, version=version, out=out, progress=progress, **seal_options)
        try:
            self.kbs.register_dataset(
                name,
                version,
                manifest_sha256=result.dataset.manifest_sha256,
                dek=result.dek,
                release_policy_toml=policy_toml,
                owner=self.owner,
                release_expires_at=release_expires_at,
            )
        except BaseException:
            discard(result.dataset)
            raise
        return SealedVersion(result.dataset, result.rows)

    def upload(self, sealed: SealedDataset | Path, *, progress: Any = None) -> UploadResult:
        dataset = sealed if isinstance(sealed, SealedDataset) else SealedDataset.open(sealed)
        info = self.kbs.get_dataset(dataset.name)
        registered = info.version(dataset.version)
        if registered is None or registered.deleted:
            raise UsageError(
                f"the key broker has no key for {dataset.name!r} v{dataset.version}",
                hint="seal it with `teelab dataset seal`, which registers the key, then upload",
            )
        if registered.manifest_sha256 != dataset.manifest_sha256:
            raise UsageError(
                f"{dataset.folder} is not the {dataset.name!r} v{dataset.version} the key broker knows "
                f"(manifest {dataset.manifest_sha256[:12]}…, registered {registered.manifest_sha256[:12]}…)"
            )
        return self.store.upload(dataset, progress=progress)

    def publish(
        self,
        source: Any,
        *,
        name: str,
        policy_toml: str,
        grants: Iterable[tuple[str, datetime | None]] = (),
        version: int | None = None,
        release_expires_at: datetime | None = None,
        progress: Any = None,
        **seal_options: Any,
    ) -> Published:
        """Seal, register, upload and grant in one go (the sealed folder is temporary)."""
        name = check_name(name)  # before it names anything on disk
        staging = data_dir() / "staging"
        staging.mkdir(parents=True, exist_ok=True, mode=0o700)
        folder = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=staging))
        try:
            sealed_version = self.seal(
                source,
                name=name,
                out=folder / "sealed",
                policy_toml=policy_toml,
                version=version,
                release_expires_at=release_expires_at,
                progress=progress,
                **seal_options,
            )
            sealed = sealed_version.dataset
            self.upload(sealed, progress=progress)
            granted = tuple(self.grant(name, who, expires_at=until) for who, until in grants)
            return Published(
                name=sealed.name,
                version=sealed.version,
                manifest_sha256=sealed.manifest_sha256,
                parts=len(sealed.manifest.parts),
                size=sealed.manifest.total_size,
                rows=sealed_version.rows,
                grants=granted,
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    # -- access ---------------------------------------------------------------------------------------

    def grant(self, name: str, who: str, *, expires_at: datetime | None = None) -> GrantInfo:
        return self.kbs.grant(name, principal(who), expires_at=expires_at)

    def revoke(self, name: str, who: str) -> bool:
        return self.kbs.revoke(name, principal(who))

    def show(self, name: str) -> DatasetView:
        return DatasetView(self.kbs.get_dataset(name), tuple(self.store.list(name)))

    def list(self) -> builtins.list[DatasetView]:
        stored = self.store.list()
        return [
            DatasetView(info, tuple(v for v in stored if v.name == info.name))
            for info in self.kbs.list_datasets()
        ]

    def delete(self, name: str, version: int | None = None) -> builtins.list[int]:
        """Erase the key first (the data becomes unreadable at once), then the sealed parts."""
        erased = self.kbs.delete_dataset(name, version)
        self.store.delete(name, version)
        return erased
