"""The key broker's operations as typed Python calls: what the gRPC service (``service.py``) exposes.

It owns the lifecycle of the KBS's state (keys, tokens, database) and validates every value it is given,
whatever the caller (the gRPC layer has already checked shapes; this checks meaning: names, ranges, times).
Authorization — which token may call what — is the service's job; ``actor`` here is only recorded. The rules
about a dataset's state (who may register the next version, which numbers are free, whether the dataset is
live) are decided here: the store reports the state inside its transaction and applies what these rules admit.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from teelab.sealed_store.kbs import validation
from teelab.sealed_store.kbs.appraisal import EvidenceAppraiser, parse_release_policy
from teelab.sealed_store.kbs.audit import AuditRecord
from teelab.sealed_store.kbs.auth import AccessTokens, Role
from teelab.sealed_store.kbs.collateral import collateral_source
from teelab.sealed_store.kbs.config import KbsConfig
from teelab.sealed_store.kbs.crypto import KbsKeys, private_dir
from teelab.sealed_store.kbs.grants import issue_session_grant
from teelab.sealed_store.kbs.model import (
    UNSET,
    Challenge,
    DatasetInfo,
    GrantInfo,
    GroupInfo,
    IssuedGrant,
    KbsInfo,
    Unset,
)
from teelab.sealed_store.kbs.protocol import (
    HPKE_SUITE_NAME,
    PROTOCOL,
    open_registered_dek,
    open_sealed_grant,
)
from teelab.sealed_store.kbs.reasons import Reason, denied
from teelab.sealed_store.kbs.release import Clock, KeyRelease, ReleaseInput, ReleaseOutput
from teelab.sealed_store.kbs.store import DatasetState, PolicyText, Store
from teelab.timeutil import utcnow

MAX_AUDIT_PAGE = 1000
MAX_AUDIT_SEQ = (1 << 63) - 1


class KeyBroker:
    def __init__(self, config: KbsConfig, *, clock: Clock = utcnow) -> None:
        self.config = config
        self.clock = clock
        private_dir(config.state_dir)
        self.keys = KbsKeys.load_or_create(config.state_dir)
        self.tokens = AccessTokens.load_or_create(config.state_dir)
        self.source = collateral_source(config.collateral, sim_platform=config.sim_platform)
        self.appraiser = EvidenceAppraiser(
            self.source, intel_roots=config.intel_roots, simulated_roots=config.simulated_roots
        )
        self.store = Store.open(
            config.database_url,
            self.keys.signing_key,
            pool_size=max(config.threads, 1) + 4,
            durability=config.durability,
        )
        self.releases = KeyRelease(
            self.store,
            self.keys,
            self.appraiser,
            clock=clock,
            nonce_ttl=config.nonce_ttl,
        )

    def close(self) -> None:
        self.store.close()

    # -- public --------------------------------------------------------------------------------------

    def info(self) -> KbsInfo:
        return KbsInfo(
            protocol=PROTOCOL,
            hpke_public_key=self.keys.hpke_public_key,
            hpke_suite=HPKE_SUITE_NAME,
            signing_public_key=self.keys.signing_public_key,
            signing_key_id=self.keys.signing_key_id,
            server_time=self.clock(),
        )

    def role_of(self, metadata: Iterable[tuple[str, str | bytes]]) -> Role | None:
        """The role a request's bearer token proves, or None."""
        return self.tokens.role_of(metadata)

    # -- release ------------------------------------------------------------------------------------

    def challenge(self) -> Challenge:
        return self.releases.challenge()

    def release(self, request: ReleaseInput) -> ReleaseOutput:
        return self.releases.release(request)

    def open_sealed_grant(self, nonce: bytes, sealed: bytes) -> str:
        """The session grant a kernel sealed to this broker's HPKE key for this nonce (ValueError if not)."""
        return open_sealed_grant(self.keys.hpke_key, nonce, sealed)

    def refuse_malformed_release(self, nonce: bytes | None, detail: str) -> None:
        """Record a release request that did not parse (an authentic nonce in it is spent)."""
        self.releases.refuse_malformed(nonce, detail)

    # -- gateway ------------------------------------------------------------------------------------

    def issue_session_grant(
        self, *, user: str, enclave_key_sha256: str, ttl: timedelta | None = None, actor: str = "gateway"
    ) -> IssuedGrant:
        user = validation.user_name(user)
        ekh = validation.sha256_hex(enclave_key_sha256, "enclave_key_sha256")
        ttl = ttl if ttl is not None else self.config.session_grant_ttl
        if not timedelta(seconds=1) <= ttl <= self.config.max_session_grant_ttl:
            raise validation.invalid(
                "ttl_seconds",
                f"must be 1 to {int(self.config.max_session_grant_ttl.total_seconds())} seconds",
            )
        at = self.clock()
        issued = issue_session_grant(
            self.keys.signing_key,
            self.keys.signing_key_id,
            user=user,
            enclave_key_sha256=ekh,
            now=at,
            ttl=ttl,
        )
        # Recorded before it is handed out: no grant exists that the log does not know.
        self.store.record_event(
            at,
            "session_grant",
            "issued",
            {
                "actor": actor,
                "user": user,
                "ekh": ekh,
                "grant_id": issued.grant_id,
                "expires_at": issued.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
        )
        return issued

    # -- datasets -----------------------------------------------------------------------------------

    def register_dataset(
        self,
        *,
        dataset: str,
        version: int,
        manifest_sha256: str,
        sealed_dek: bytes,
        release_policy_toml: str,
        owner: str,
        release_expires_at: datetime | Unset | None = UNSET,
        actor: str = "admin",
    ) -> DatasetInfo:
        dataset = validation.dataset_name(dataset)
        version = validation.version(version)
        manifest_sha256 = validation.sha256_hex(manifest_sha256, "manifest_sha256")
        owner = validation.user_name(owner, "owner")
        if isinstance(release_expires_at, datetime):
            release_expires_at = validation.timestamp(release_expires_at, "release_expires_at")
        policy = self._policy(dataset, release_policy_toml)
        dek = open_registered_dek(self.keys.hpke_key, dataset, version, sealed_dek)
        return self.store.register_version(
            dataset=dataset,
            version=version,
            manifest_sha256=manifest_sha256,
            wrapped_dek=self.keys.wrap_dek(dataset, version, dek),
            policy=policy,
            owner=owner,
            release_expires_at=release_expires_at,
            actor=actor,
            at=self.clock(),
            admit=lambda state: _may_register(state, version, owner),
        )

    def set_release_policy(
        self,
        *,
        dataset: str,
        release_policy_toml: str | None = None,
        release_expires_at: datetime | Unset | None = UNSET,
        actor: str = "admin",
    ) -> DatasetInfo:
        dataset = validation.dataset_name(dataset)
        policy = self._policy(dataset, release_policy_toml) if release_policy_toml is not None else None
        if isinstance(release_expires_at, datetime):
            release_expires_at = validation.timestamp(release_expires_at, "release_expires_at")
        return self.store.set_release_policy(
            dataset=dataset,
            policy=policy,
            release_expires_at=release_expires_at,
            actor=actor,
            at=self.clock(),
            admit=_live,
        )

    def _policy(self, dataset: str, text: str) -> PolicyText:
        text = validation.bounded_text(text, 64 * 1024, "release_policy_toml", required=False)
        parsed = parse_release_policy(text, dataset)
        assert parsed.digest is not None  # parse_policy always records the text's digest
        return PolicyText(text, parsed.digest, parsed.id)

    def get_dataset(self, dataset: str) -> DatasetInfo:
        return self.store.get_dataset(validation.dataset_name(dataset), with_policy=True)

    def list_datasets(self, user: str | None = None) -> list[DatasetInfo]:
        return self.store.list_datasets(
            user=None if user is None else validation.user_name(user), at=self.clock()
        )

    def delete_dataset(self, dataset: str, version: int | None = None, *, actor: str = "admin") -> list[int]:
        dataset = validation.dataset_name(dataset)
        if version is not None:
            version = validation.version(version)
        return self.store.delete_dataset(
            dataset=dataset, version=version, actor=actor, at=self.clock(), admit=_live
        )

    # -- grants and groups --------------------------------------------------------------------------

    def grant(
        self, dataset: str, principal: str, *, expires_at: datetime | None = None, actor: str = "admin"
    ) -> GrantInfo:
        dataset = validation.dataset_name(dataset)
        who = validation.principal(principal)
        at = self.clock()
        if expires_at is not None:
            expires_at = validation.timestamp(expires_at, "expires_at")
            if expires_at <= at:
                raise validation.invalid("expires_at", "is not in the future")
        return self.store.grant(
            dataset=dataset, principal=str(who), expires_at=expires_at, actor=actor, at=at, admit=_live
        )

    def revoke(self, dataset: str, principal: str, *, actor: str = "admin") -> bool:
        dataset = validation.dataset_name(dataset)
        who = validation.principal(principal)
        return self.store.revoke(
            dataset=dataset, principal=str(who), actor=actor, at=self.clock(), admit=_anything
        )

    def add_member(self, group: str, user: str, *, actor: str = "admin") -> bool:
        return self.store.add_member(
            group=validation.group_name(group), user=validation.user_name(user), actor=actor, at=self.clock()
        )

    def remove_member(self, group: str, user: str, *, actor: str = "admin") -> bool:
        return self.store.remove_member(
            group=validation.group_name(group), user=validation.user_name(user), actor=actor, at=self.clock()
        )

    def list_groups(self, group: str | None = None) -> list[GroupInfo]:
        return self.store.list_groups(None if group is None else validation.group_name(group))

    # -- audit --------------------------------------------------------------------------------------

    def audit(
        self, *, since_seq: int = 0, limit: int = MAX_AUDIT_PAGE
    ) -> tuple[list[AuditRecord], tuple[int, bytes]]:
        if since_seq < 0:
            raise validation.invalid("since_seq", "must not be negative")
        since_seq = min(since_seq, MAX_AUDIT_SEQ)  # beyond any log, and within a signed 64-bit column
        limit = MAX_AUDIT_PAGE if limit <= 0 else min(limit, MAX_AUDIT_PAGE)
        head = self.store.audit_head()
        return self.store.audit_records(since_seq=since_seq, limit=limit), head


# -- rules about a dataset's state (called by the store inside the transaction that acts on them) --------


def _may_register(state: DatasetState, version: int, owner: str) -> None:
    """A new version: by the dataset's owner (a deleted dataset's name is free), with a number never used."""
    if state.live and state.owner != owner:
        raise denied(
            Reason.OWNER_MISMATCH, f"dataset {state.name} is owned by {state.owner!r}, not {owner!r}"
        )
    newest = state.newest_version
    if version in state.versions:
        raise denied(
            Reason.VERSION_EXISTS,
            f"{state.name} version {version} is already registered (versions are never reused)",
        )
    if newest is not None and version <= newest:
        raise denied(
            Reason.VERSION_NOT_NEWER,
            f"{state.name} already has version {newest}; a new version must be higher",
        )


def _live(state: DatasetState) -> None:
    if not state.live:
        raise denied(Reason.DATASET_UNKNOWN, f"no dataset named {state.name}")


def _anything(state: DatasetState) -> None:
    """Revoking needs no live dataset: removing a grant that is not there is recorded as such."""
