"""The key broker's administration and audit reads (SQLAlchemy Core): datasets, versions, grants, groups.

The store reports state and records changes; it does not decide who may make them. Every change that depends on
the dataset's current state takes an ``admit`` rule from the broker, called inside the write transaction with
that state (:class:`DatasetState`), so a decision and the change it allows see the same rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from teelab.sealed_store.kbs.audit import AuditRecord, AuditValue, SignedHead
from teelab.sealed_store.kbs.database import Database
from teelab.sealed_store.kbs.model import DatasetInfo, GrantInfo, GroupInfo, Unset, VersionInfo
from teelab.sealed_store.kbs.reasons import Reason, denied
from teelab.sealed_store.kbs.schema import (
    at_us,
    audit_head,
    audit_log,
    datasets,
    from_us,
    grants,
    iso_us,
    members,
    to_us,
    versions,
)


@dataclass(frozen=True)
class PolicyText:
    toml: str
    sha256: str
    policy_id: str


@dataclass(frozen=True)
class DatasetState:
    """One dataset name as the database holds it, read inside the transaction that would change it."""

    name: str
    owner: str | None  # None: the name was never registered
    live: bool  # registered and not deleted
    versions: tuple[int, ...] = ()  # every number ever registered, deleted ones included (never reused)

    @property
    def newest_version(self) -> int | None:
        return max(self.versions) if self.versions else None


Admit = Callable[[DatasetState], None]


class AdminStore(Database):
    def record_event(self, at: datetime, event: str, outcome: str, fields: dict[str, AuditValue]) -> None:
        with self._write() as tx:
            tx.audit(at, event, outcome, fields)

    # -- datasets -----------------------------------------------------------------------------------

    def register_version(
        self,
        *,
        dataset: str,
        version: int,
        manifest_sha256: str,
        wrapped_dek: bytes,
        policy: PolicyText,
        owner: str,
        release_expires_at: datetime | Unset | None,
        actor: str,
        at: datetime,
        admit: Admit,
    ) -> DatasetInfo:
        """Record a new version (and the dataset, when new or deleted), if ``admit`` allows it."""
        with self._write() as tx:
            conn = tx.conn
            state = _dataset_state(conn, dataset)
            admit(state)
            values = _policy_values(policy, release_expires_at)
            if state.owner is None:
                conn.execute(
                    insert(datasets).values(name=dataset, owner=owner, created_at=to_us(at), **values)
                )
            elif not state.live:
                # A deleted dataset's name is reused: a fresh dataset (no grants), numbering continues.
                values.setdefault("release_expires_at", None)
                conn.execute(
                    update(datasets)
                    .where(datasets.c.name == dataset)
                    .values(owner=owner, created_at=to_us(at), deleted_at=None, **values)
                )
            else:
                conn.execute(update(datasets).where(datasets.c.name == dataset).values(**values))
            conn.execute(
                insert(versions).values(
                    dataset=dataset,
                    version=version,
                    manifest_sha256=manifest_sha256,
                    wrapped_dek=wrapped_dek,
                    registered_at=to_us(at),
                )
            )
            tx.audit(
                at,
                "register",
                "ok",
                {
                    "actor": actor,
                    "dataset": dataset,
                    "version": version,
                    "owner": owner,
                    "manifest_sha256": manifest_sha256,
                    "policy_sha256": policy.sha256,
                    "policy_id": policy.policy_id,
                    "release_expires_at": iso_us(values.get("release_expires_at")),
                },
            )
            info = _dataset_info(conn, dataset, with_policy=False)
        assert info is not None
        return info

    def dataset_state(self, dataset: str) -> DatasetState:
        with self._read() as conn:
            return _dataset_state(conn, dataset)

    def set_release_policy(
        self,
        *,
        dataset: str,
        policy: PolicyText | None,
        release_expires_at: datetime | Unset | None,
        actor: str,
        at: datetime,
        admit: Admit,
    ) -> DatasetInfo:
        with self._write() as tx:
            admit(_dataset_state(tx.conn, dataset))
            values = _policy_values(policy, release_expires_at)
            if values:
                tx.conn.execute(update(datasets).where(datasets.c.name == dataset).values(**values))
            tx.audit(
                at,
                "policy",
                "ok",
                {
                    "actor": actor,
                    "dataset": dataset,
                    "policy_sha256": policy.sha256 if policy else None,
                    "policy_id": policy.policy_id if policy else None,
                    "release_expires_at": iso_us(values.get("release_expires_at")),
                    "release_expiry_cleared": "release_expires_at" in values
                    and values["release_expires_at"] is None,
                },
            )
            info = _dataset_info(tx.conn, dataset, with_policy=False)
        assert info is not None
        return info

    def delete_dataset(
        self, *, dataset: str, version: int | None, actor: str, at: datetime, admit: Admit
    ) -> list[int]:
        with self._write() as tx:
            conn = tx.conn
            admit(_dataset_state(conn, dataset))
            live = select(versions.c.version).where(
                versions.c.dataset == dataset, versions.c.deleted_at.is_(None)
            )
            if version is not None:
                live = live.where(versions.c.version == version)
            numbers = sorted(int(v) for v in conn.execute(live).scalars())
            if version is not None and not numbers:
                raise denied(Reason.VERSION_UNKNOWN, f"{dataset} has no version {version} (or it is deleted)")
            if numbers:
                conn.execute(
                    update(versions)
                    .where(versions.c.dataset == dataset, versions.c.version.in_(numbers))
                    .values(wrapped_dek=None, deleted_at=to_us(at))
                )
            if version is None:
                conn.execute(delete(grants).where(grants.c.dataset == dataset))
                conn.execute(update(datasets).where(datasets.c.name == dataset).values(deleted_at=to_us(at)))
            tx.audit(
                at,
                "delete",
                "ok",
                {
                    "actor": actor,
                    "dataset": dataset,
                    "version": version,
                    "deleted_versions": list(numbers),
                    "whole_dataset": version is None,
                },
            )
        return numbers

    def get_dataset(self, dataset: str, *, with_policy: bool = True) -> DatasetInfo:
        with self._read() as conn:
            info = _dataset_info(conn, dataset, with_policy=with_policy)
        if info is None:
            raise denied(Reason.DATASET_UNKNOWN, f"no dataset named {dataset}")
        return info

    def list_datasets(
        self, *, user: str | None, at: datetime, groups: Sequence[str] = ()
    ) -> list[DatasetInfo]:
        """Every live dataset, or those ``user`` may receive now (with only the grants that show why)."""
        with self._read() as conn:
            if user is None:
                names = conn.execute(
                    select(datasets.c.name).where(datasets.c.deleted_at.is_(None)).order_by(datasets.c.name)
                ).scalars()
                found = [_dataset_info(conn, name, with_policy=False) for name in names]
                return [info for info in found if info is not None]
            principals = [*_principals_of(conn, user), *(f"group:{g}" for g in groups)]
            rows = conn.execute(
                select(grants).where(grants.c.principal.in_(principals)).order_by(grants.c.dataset)
            ).all()
            visible: dict[str, list[GrantInfo]] = {}
            for row in rows:
                grant = _grant_info(row)
                if grant.active_at(at):
                    visible.setdefault(row.dataset, []).append(grant)
            result = []
            for name, held in visible.items():
                info = _dataset_info(conn, name, with_policy=False)
                if info is not None:
                    result.append(_replace_grants(info, tuple(held)))
            return result

    # -- grants and groups --------------------------------------------------------------------------

    def grant(
        self,
        *,
        dataset: str,
        principal: str,
        expires_at: datetime | None,
        actor: str,
        at: datetime,
        admit: Admit,
    ) -> GrantInfo:
        with self._write() as tx:
            conn = tx.conn
            admit(_dataset_state(conn, dataset))
            key = (grants.c.dataset == dataset, grants.c.principal == principal)
            replaced = conn.execute(delete(grants).where(*key)).rowcount > 0
            conn.execute(
                insert(grants).values(
                    dataset=dataset,
                    principal=principal,
                    granted_at=to_us(at),
                    expires_at=None if expires_at is None else to_us(expires_at),
                )
            )
            tx.audit(
                at,
                "grant",
                "ok",
                {
                    "actor": actor,
                    "dataset": dataset,
                    "principal": principal,
                    "expires_at": iso_us(None if expires_at is None else to_us(expires_at)),
                    "replaced": replaced,
                },
            )
        return GrantInfo(dataset, principal, at, expires_at)

    def revoke(self, *, dataset: str, principal: str, actor: str, at: datetime, admit: Admit) -> bool:
        with self._write() as tx:
            admit(_dataset_state(tx.conn, dataset))
            removed = (
                tx.conn.execute(
                    delete(grants).where(grants.c.dataset == dataset, grants.c.principal == principal)
                ).rowcount
                > 0
            )
            tx.audit(
                at,
                "revoke",
                "ok" if removed else "no_grant",
                {"actor": actor, "dataset": dataset, "principal": principal},
            )
        return removed

    def add_member(self, *, group: str, user: str, actor: str, at: datetime) -> bool:
        with self._write() as tx:
            exists = tx.conn.execute(
                select(members.c.user_name).where(members.c.group_name == group, members.c.user_name == user)
            ).first()
            if exists is None:
                tx.conn.execute(insert(members).values(group_name=group, user_name=user, added_at=to_us(at)))
            tx.audit(
                at,
                "member_add",
                "ok" if exists is None else "already_member",
                {"actor": actor, "group": group, "member": user},
            )
        return exists is None

    def remove_member(self, *, group: str, user: str, actor: str, at: datetime) -> bool:
        with self._write() as tx:
            removed = (
                tx.conn.execute(
                    delete(members).where(members.c.group_name == group, members.c.user_name == user)
                ).rowcount
                > 0
            )
            tx.audit(
                at,
                "member_remove",
                "ok" if removed else "not_member",
                {"actor": actor, "group": group, "member": user},
            )
        return removed

    def list_groups(self, group: str | None = None) -> list[GroupInfo]:
        with self._read() as conn:
            query = select(members.c.group_name, members.c.user_name).order_by(
                members.c.group_name, members.c.user_name
            )
            if group is not None:
                query = query.where(members.c.group_name == group)
            found: dict[str, list[str]] = {}
            for row in conn.execute(query):
                found.setdefault(row.group_name, []).append(row.user_name)
        return [GroupInfo(name, tuple(users)) for name, users in found.items()]

    # -- the audit log ------------------------------------------------------------------------------

    def audit_records(self, *, since_seq: int = 0, limit: int = 1000) -> list[AuditRecord]:
        with self._read() as conn:
            rows = conn.execute(
                select(audit_log).where(audit_log.c.seq > since_seq).order_by(audit_log.c.seq).limit(limit)
            ).all()
        return [AuditRecord(int(r.seq), r.body, bytes(r.hash), bytes(r.signature)) for r in rows]

    def iter_audit(self, *, since_seq: int = 0, page: int = 1000) -> Iterator[AuditRecord]:
        """Every entry after ``since_seq`` in sequence order, a page at a time (large logs)."""
        since = since_seq
        while True:
            batch = self.audit_records(since_seq=since, limit=page)
            yield from batch
            if len(batch) < page:
                return
            since = batch[-1].seq

    def audit_head(self) -> SignedHead:
        with self._read() as conn:
            row = conn.execute(
                select(audit_head.c.seq, audit_head.c.hash, audit_head.c.signature).where(
                    audit_head.c.id == 1
                )
            ).one()
        signature = bytes(row.signature) if row.signature is not None else None
        return SignedHead(int(row.seq), bytes(row.hash), signature)

    def groups_of(self, user: str) -> list[str]:
        """The KBS groups ``user`` is a member of (an identity provider may report more)."""
        with self._read() as conn:
            return sorted(
                conn.execute(select(members.c.group_name).where(members.c.user_name == user)).scalars()
            )


def _principals_of(conn: Connection, user: str) -> list[str]:
    groups = conn.execute(select(members.c.group_name).where(members.c.user_name == user)).scalars()
    return [f"user:{user}", *(f"group:{g}" for g in groups)]


def _dataset_state(conn: Connection, dataset: str) -> DatasetState:
    row = conn.execute(
        select(datasets.c.owner, datasets.c.deleted_at).where(datasets.c.name == dataset)
    ).first()
    if row is None:
        return DatasetState(dataset, None, False)
    numbers = conn.execute(
        select(versions.c.version).where(versions.c.dataset == dataset).order_by(versions.c.version)
    ).scalars()
    return DatasetState(dataset, row.owner, row.deleted_at is None, tuple(int(n) for n in numbers))


def _policy_values(policy: PolicyText | None, release_expires_at: datetime | Unset | None) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if policy is not None:
        values.update(policy_toml=policy.toml, policy_sha256=policy.sha256, policy_id=policy.policy_id)
    if not isinstance(release_expires_at, Unset):
        values["release_expires_at"] = None if release_expires_at is None else to_us(release_expires_at)
    return values


def _grant_info(row: Any) -> GrantInfo:
    return GrantInfo(row.dataset, row.principal, at_us(row.granted_at), from_us(row.expires_at))


def _dataset_info(conn: Connection, dataset: str, *, with_policy: bool) -> DatasetInfo | None:
    row = conn.execute(select(datasets).where(datasets.c.name == dataset)).first()
    if row is None or row.deleted_at is not None:
        return None
    vrows = conn.execute(
        select(
            versions.c.version, versions.c.manifest_sha256, versions.c.registered_at, versions.c.deleted_at
        )
        .where(versions.c.dataset == dataset)
        .order_by(versions.c.version)
    ).all()
    version_list = tuple(
        VersionInfo(int(v.version), v.manifest_sha256, at_us(v.registered_at), from_us(v.deleted_at))
        for v in vrows
    )
    live = [v.version for v in version_list if not v.deleted]
    grant_rows = conn.execute(
        select(grants).where(grants.c.dataset == dataset).order_by(grants.c.principal)
    ).all()
    return DatasetInfo(
        name=row.name,
        owner=row.owner,
        current_version=max(live) if live else None,
        versions=version_list,
        policy_id=row.policy_id,
        policy_sha256=row.policy_sha256,
        created_at=at_us(row.created_at),
        release_expires_at=from_us(row.release_expires_at),
        grants=tuple(_grant_info(g) for g in grant_rows),
        release_policy_toml=row.policy_toml if with_policy else None,
    )


def _replace_grants(info: DatasetInfo, held: Sequence[GrantInfo]) -> DatasetInfo:
    return replace(info, grants=tuple(held))
