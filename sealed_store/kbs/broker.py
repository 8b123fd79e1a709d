"""The key broker's operations as typed Python calls: what the gRPC service (``service.py``) exposes.

It owns the lifecycle of the KBS's state (keys, tokens, database), validates every value it is given (the gRPC
layer has already checked shapes; this checks meaning: names, ranges, times) and decides who may do what:
every operation takes the authenticated :class:`Identity` of its caller. A session grant is minted only for
the caller's own user; a dataset is administered only by its owner (or an owning group's members, or a KBS
admin) — the rules are in ``rules.py``, applied to the state the store reports inside its transaction. Every
refusal of an authenticated caller is recorded in the audit log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import NoReturn, TypeVar

from teelab.errors import KeyBrokerError
from teelab.sealed_store.kbs import validation
from teelab.sealed_store.kbs.appraisal import EvidenceAppraiser, parse_release_policy
from teelab.sealed_store.kbs.audit import AuditRecord, AuditValue, SignedHead
from teelab.sealed_store.kbs.auth import build_authentication
from teelab.sealed_store.kbs.collateral import collateral_source
from teelab.sealed_store.kbs.config import KbsConfig
from teelab.sealed_store.kbs.crypto import KbsKeys, private_dir
from teelab.sealed_store.kbs.delegation import Delegated, DelegateInput, GrantDelegation
from teelab.sealed_store.kbs.grants import issue_session_grant
from teelab.sealed_store.kbs.identity import OPERATOR, Identity, bearer
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
from teelab.sealed_store.kbs.reasons import Denied, Reason, denied
from teelab.sealed_store.kbs.release import Clock, KeyRelease, ReleaseInput, ReleaseOutput
from teelab.sealed_store.kbs.rules import GROUP_PREFIX, Caller, administered_by, may_register
from teelab.sealed_store.kbs.store import PolicyText, Store
from teelab.timeutil import utcnow

MAX_AUDIT_PAGE = 1000
MAX_AUDIT_SEQ = (1 << 63) - 1
T = TypeVar("T")


class KeyBroker:
    def __init__(self, config: KbsConfig, *, clock: Clock = utcnow) -> None:
        self.config = config
        self.clock = clock
        private_dir(config.state_dir)
        self.keys = KbsKeys.load_or_create(config.state_dir)
        self.authentication = build_authentication(config.state_dir, config.auth, clock=clock)
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
        self.delegation = GrantDelegation(self.releases, max_ttl=config.max_session_grant_ttl)

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

    def identify(self, metadata: Iterable[tuple[str, str | bytes]]) -> Identity | None:
        """Who a request's bearer credential proves its caller is, or None."""
        credential = bearer(metadata)
        return None if credential is None else self.authentication.identify(credential)

    # -- release ------------------------------------------------------------------------------------

    def challenge(self) -> Challenge:
        return self.releases.challenge()

    def release(self, request: ReleaseInput) -> ReleaseOutput:
        return self.releases.release(request)

    def spend_junk_nonce(self, nonce: bytes | None) -> None:
        """A request that did not parse: its nonce, if authentic, is spent here; nothing is audited."""
        self.releases.spend_junk_nonce(nonce)

    def open_sealed_grant(self, nonce: bytes, sealed: bytes) -> str:
        """The session grant a kernel sealed to this broker's HPKE key for this nonce (ValueError if not)."""
        return open_sealed_grant(self.keys.hpke_key, nonce, sealed)

    def delegate_grant(self, request: DelegateInput) -> Delegated:
        """A child grant of an attested session's grant for another enclave (docs/protocols/kbs.md §4a)."""
        return self.delegation.delegate(request)

    # -- session grants -----------------------------------------------------------------------------

    def issue_session_grant(
        self,
        *,
        caller: Identity,
        enclave_key_sha256: str,
        controller_sha256: str | None = None,
        user: str | None = None,
        ttl: timedelta | None = None,
    ) -> IssuedGrant:
        """A grant for the caller's own user (and the groups its identity provider reports) to release keys
        into the enclave whose key hashes to ``enclave_key_sha256``, launched by ``controller_sha256``."""
        ekh = validation.sha256_hex(enclave_key_sha256, "enclave_key_sha256")
        controller = None if not controller_sha256 else validation.sha256_hex(controller_sha256, "controller")
        ttl = ttl if ttl is not None else self.config.session_grant_ttl
        if not timedelta(seconds=1) <= ttl <= self.config.max_session_grant_ttl:
            raise validation.invalid(
                "ttl_seconds",
                f"must be 1 to {int(self.config.max_session_grant_ttl.total_seconds())} seconds",
            )
        if caller.user is None:
            self._refuse(
                caller,
                "session_grant",
                None,
                Reason.FORBIDDEN,
                "a session grant is for a user; the admin token acts for none (authenticate as the user)",
            )
        if user and user != caller.user:
            self._refuse(
                caller,
                "session_grant",
                None,
                Reason.FORBIDDEN,
                f"{caller.actor} asked for a session grant for user:{validation.user_name(user)}: "
                "a grant is only ever for yourself",
            )
        assert caller.user is not None
        at = self.clock()
        issued = issue_session_grant(
            self.keys.signing_key,
            self.keys.signing_key_id,
            user=caller.user,
            groups=sorted(caller.groups),
            enclave_key_sha256=ekh,
            controller_sha256=controller,
            now=at,
            ttl=ttl,
        )
        # Recorded before it is handed out: no grant exists that the log does not know.
        self.store.record_event(
            at,
            "session_grant",
            "issued",
            {
                "actor": caller.actor,
                "user": caller.user,
                "groups": list[AuditValue](sorted(caller.groups)),
                "ekh": ekh,
                "controller": controller,
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
        owner: str | None = None,
        release_expires_at: datetime | Unset | None = UNSET,
        caller: Identity = OPERATOR,
    ) -> DatasetInfo:
        """A new version. ``owner`` (a user, or ``group:NAME``) defaults to the caller's user."""
        dataset = validation.dataset_name(dataset)
        version = validation.version(version)
        manifest_sha256 = validation.sha256_hex(manifest_sha256, "manifest_sha256")
        owner = _owner(owner or caller.user)
        if isinstance(release_expires_at, datetime):
            release_expires_at = validation.timestamp(release_expires_at, "release_expires_at")
        policy = self._policy(dataset, release_policy_toml)
        dek = open_registered_dek(self.keys.hpke_key, dataset, version, sealed_dek)
        who = self._caller(caller)
        return self._decide(
            caller,
            "register",
            dataset,
            lambda: self.store.register_version(
                dataset=dataset,
                version=version,
                manifest_sha256=manifest_sha256,
                wrapped_dek=self.keys.wrap_dek(dataset, version, dek),
                policy=policy,
                owner=owner,
                release_expires_at=release_expires_at,
                actor=caller.actor,
                at=self.clock(),
                admit=may_register(who, version, owner),
            ),
        )

    def set_release_policy(
        self,
        *,
        dataset: str,
        release_policy_toml: str | None = None,
        release_expires_at: datetime | Unset | None = UNSET,
        caller: Identity = OPERATOR,
    ) -> DatasetInfo:
        dataset = validation.dataset_name(dataset)
        policy = self._policy(dataset, release_policy_toml) if release_policy_toml is not None else None
        if isinstance(release_expires_at, datetime):
            release_expires_at = validation.timestamp(release_expires_at, "release_expires_at")
        who = self._caller(caller)
        return self._decide(
            caller,
            "policy",
            dataset,
            lambda: self.store.set_release_policy(
                dataset=dataset,
                policy=policy,
                release_expires_at=release_expires_at,
                actor=caller.actor,
                at=self.clock(),
                admit=administered_by(who),
            ),
        )

    def _policy(self, dataset: str, text: str) -> PolicyText:
        text = validation.bounded_text(text, 64 * 1024, "release_policy_toml", required=False)
        parsed = parse_release_policy(text, dataset)
        assert parsed.digest is not None  # parse_policy always records the text's digest
        return PolicyText(text, parsed.digest, parsed.id)

    def get_dataset(self, dataset: str, *, caller: Identity = OPERATOR) -> DatasetInfo:
        dataset = validation.dataset_name(dataset)
        info = self.store.get_dataset(dataset, with_policy=True)
        if not self._caller(caller).administers(info.owner):
            self._refuse(
                caller,
                "read",
                dataset,
                Reason.FORBIDDEN,
                f"only the owner of dataset {dataset} (or a KBS admin) may read its details; {caller.actor} "
                "does not own it",
            )
        return info

    def list_datasets(self, user: str | None = None, *, caller: Identity = OPERATOR) -> list[DatasetInfo]:
        """Those ``user`` may receive now (with only the grants that show why); without ``user``, an admin
        gets every dataset and a user those it administers (in full) and those it may receive. A user may
        name only itself."""
        at = self.clock()
        if caller.admin:
            return self.store.list_datasets(user=None if user is None else validation.user_name(user), at=at)
        if user and user != caller.user:
            self._refuse(
                caller, "list", None, Reason.FORBIDDEN, f"{caller.actor} may list only its own datasets"
            )
        granted = self.store.list_datasets(user=caller.user, groups=sorted(caller.groups), at=at)
        if user:
            return granted
        who = self._caller(caller)
        mine = {d.name: d for d in self.store.list_datasets(user=None, at=at) if who.administers(d.owner)}
        return sorted([*mine.values(), *(d for d in granted if d.name not in mine)], key=lambda d: d.name)

    def delete_dataset(
        self, dataset: str, version: int | None = None, *, caller: Identity = OPERATOR
    ) -> list[int]:
        dataset = validation.dataset_name(dataset)
        if version is not None:
            version = validation.version(version)
        who = self._caller(caller)
        return self._decide(
            caller,
            "delete",
            dataset,
            lambda: self.store.delete_dataset(
                dataset=dataset,
                version=version,
                actor=caller.actor,
                at=self.clock(),
                admit=administered_by(who),
            ),
        )

    # -- grants and groups --------------------------------------------------------------------------

    def grant(
        self, dataset: str, principal: str, *, expires_at: datetime | None = None, caller: Identity = OPERATOR
    ) -> GrantInfo:
        dataset = validation.dataset_name(dataset)
        who = validation.principal(principal)
        at = self.clock()
        if expires_at is not None:
            expires_at = validation.timestamp(expires_at, "expires_at")
            if expires_at <= at:
                raise validation.invalid("expires_at", "is not in the future")
        admit = administered_by(self._caller(caller))
        return self._decide(
            caller,
            "grant",
            dataset,
            lambda: self.store.grant(
                dataset=dataset,
                principal=str(who),
                expires_at=expires_at,
                actor=caller.actor,
                at=at,
                admit=admit,
            ),
        )

    def revoke(self, dataset: str, principal: str, *, caller: Identity = OPERATOR) -> bool:
        dataset = validation.dataset_name(dataset)
        who = validation.principal(principal)
        admit = administered_by(self._caller(caller), must_be_live=False)
        return self._decide(
            caller,
            "revoke",
            dataset,
            lambda: self.store.revoke(
                dataset=dataset, principal=str(who), actor=caller.actor, at=self.clock(), admit=admit
            ),
        )

    def add_member(self, group: str, user: str, *, caller: Identity = OPERATOR) -> bool:
        self._admin_only(caller, "member_add")
        return self.store.add_member(
            group=validation.group_name(group),
            user=validation.user_name(user),
            actor=caller.actor,
            at=self.clock(),
        )

    def remove_member(self, group: str, user: str, *, caller: Identity = OPERATOR) -> bool:
        self._admin_only(caller, "member_remove")
        return self.store.remove_member(
            group=validation.group_name(group),
            user=validation.user_name(user),
            actor=caller.actor,
            at=self.clock(),
        )

    def list_groups(self, group: str | None = None, *, caller: Identity = OPERATOR) -> list[GroupInfo]:
        self._admin_only(caller, "groups")
        return self.store.list_groups(None if group is None else validation.group_name(group))

    # -- audit --------------------------------------------------------------------------------------

    def audit(
        self,
        *,
        since_seq: int = 0,
        limit: int = MAX_AUDIT_PAGE,
        dataset: str | None = None,
        caller: Identity = OPERATOR,
    ) -> tuple[list[AuditRecord], SignedHead]:
        """A page of entries after ``since_seq`` and the signed head. A KBS admin reads everything; a
        dataset's owner reads that dataset's entries only (``dataset`` is then required)."""
        if since_seq < 0:
            raise validation.invalid("since_seq", "must not be negative")
        since_seq = min(since_seq, MAX_AUDIT_SEQ)  # beyond any log, and within a signed 64-bit column
        limit = MAX_AUDIT_PAGE if limit <= 0 else min(limit, MAX_AUDIT_PAGE)
        head = self.store.audit_head()
        if dataset is None:
            if not caller.admin:
                self._refuse(
                    caller,
                    "audit",
                    None,
                    Reason.FORBIDDEN,
                    "only a KBS admin reads the whole audit log; name a dataset you own",
                )
            return self.store.audit_records(since_seq=since_seq, limit=limit), head
        dataset = validation.dataset_name(dataset)
        if not caller.admin:
            self.get_dataset(
                dataset, caller=caller
            )  # refuses (and records) a dataset the caller does not own
        return _entries_of(self.store.iter_audit(since_seq=since_seq), dataset, limit), head

    # -- deciding -----------------------------------------------------------------------------------

    def _caller(self, identity: Identity) -> Caller:
        """The identity with the KBS's own group memberships of its user added."""
        if identity.user is None:
            return Caller(identity)
        return Caller(identity, frozenset(self.store.groups_of(identity.user)))

    def _decide(self, caller: Identity, event: str, dataset: str | None, action: Callable[[], T]) -> T:
        """Run a change; a rule's refusal is audited (who, what, why) and answered with its reason."""
        try:
            return action()
        except Denied as refusal:
            self._refuse(caller, event, dataset, refusal.reason, refusal.detail)

    def _refuse(
        self, caller: Identity, event: str, dataset: str | None, reason: Reason, detail: str
    ) -> NoReturn:
        fields: dict[str, AuditValue] = {"actor": caller.actor, "reason": reason.value, "detail": detail}
        if dataset is not None:
            fields["dataset"] = dataset
        self.store.record_event(self.clock(), event, "denied", fields)
        raise denied(reason, detail)

    def _admin_only(self, caller: Identity, event: str) -> None:
        if not caller.admin:
            self._refuse(caller, event, None, Reason.FORBIDDEN, "groups are managed by a KBS admin only")


def _owner(value: str | None) -> str:
    if value is None:
        raise validation.invalid("owner", "is required with the admin token (the admin token is no user)")
    if value.startswith(GROUP_PREFIX):
        return GROUP_PREFIX + validation.group_name(value.removeprefix(GROUP_PREFIX), "owner")
    return validation.user_name(value, "owner")


def _entries_of(records: Iterable[AuditRecord], dataset: str, limit: int) -> list[AuditRecord]:
    found = []
    for record in records:
        if record.entry().get("dataset") == dataset:
            found.append(record)
            if len(found) >= limit:
                break
    return found


__all__ = ["KeyBroker", "KeyBrokerError"]
