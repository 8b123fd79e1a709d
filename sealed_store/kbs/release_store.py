"""The release path's reads and writes: plain DBAPI statements, ten or so per release.

SQLAlchemy's per-statement machinery costs several times what SQLite itself does, so this path talks to the
driver directly (the statements are in ``database.Sql``). A release's final authorization check runs inside
the same serialised transaction as its audit entry, so a revocation that committed before it is always seen:
revocation takes effect at the next release, never "soon".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from teelab.errors import ConfigError
from teelab.sealed_store.kbs.audit import AuditValue
from teelab.sealed_store.kbs.database import AuditAppender, Database, Sql
from teelab.sealed_store.kbs.reasons import Denied, Reason
from teelab.sealed_store.kbs.schema import from_us, iso_us, to_us


@dataclass(frozen=True)
class ReleaseView:
    """What the store says about one release, read in one transaction."""

    authorized_by: str | None  # the principal whose grant allows the user
    access_detail: str  # why not, for the audit log
    dataset_live: bool
    policy_toml: str | None
    policy_sha256: str | None
    release_expires_at: datetime | None
    version: int | None
    manifest_sha256: str | None
    version_live: bool
    wrapped_dek: bytes | None = field(default=None, repr=False)

    def refusal(self, requested_version: int | None, at: datetime) -> Denied | None:
        """The first rule this view breaks, in the protocol's order (docs/protocols/kbs.md §5)."""
        if self.authorized_by is None:
            return Denied(Reason.NOT_GRANTED, self.access_detail)
        if not self.dataset_live:
            return Denied(Reason.DATASET_UNKNOWN, "the dataset does not exist or was deleted")
        if self.version is None or not self.version_live:
            which = f"version {requested_version}" if requested_version else "a current version"
            return Denied(Reason.VERSION_UNKNOWN, f"the dataset has no {which} (never registered or deleted)")
        if self.release_expires_at is not None and at >= self.release_expires_at:
            return Denied(Reason.RELEASE_EXPIRED, f"release ended at {self.release_expires_at.isoformat()}")
        return None


@dataclass(frozen=True)
class ReleaseCommit:
    """The outcome of the final, serialised step of a release: the key, or the refusal recorded."""

    dek: bytes | None = field(repr=False)
    manifest_sha256: str | None
    version: int | None
    refusal: Denied | None


class ReleaseStore(Database):
    """The release path: a first look without a transaction, then the serialised commit."""

    @contextmanager
    def _raw_write(self) -> Iterator[tuple[Any, AuditAppender]]:
        """A write transaction on the bare DBAPI connection, with its audit appender."""
        with self._lock():
            raw = self.engine.raw_connection()
            try:
                cursor = raw.cursor()
                if self.sqlite:
                    cursor.execute("BEGIN IMMEDIATE")
                audit = AuditAppender(cursor, self._sql, self._signing_key)
                yield cursor, audit
                audit.finish()
                raw.commit()
            except BaseException:
                raw.rollback()
                raise
            finally:
                raw.close()

    def release_view(
        self, dataset: str, version: int | None, user: str, at: datetime, *, groups: Sequence[str] = ()
    ) -> ReleaseView:
        """A first look (no transaction needed: the commit checks again under the write lock)."""
        raw = self.engine.raw_connection()
        try:
            view = release_row_view(raw.cursor(), self._sql, dataset, version, user, at, groups)
            raw.rollback()
            return view
        finally:
            raw.close()

    def _spend_nonce(
        self, cursor: Any, nonce: bytes, expires_at: datetime, purge_before: datetime | None
    ) -> bool:
        """Record the nonce as used; False when it already was (a replay, or a concurrent twin that won)."""
        if purge_before is not None:
            cursor.execute(self._sql.purge_nonces, {"before": to_us(purge_before)})
        cursor.execute(self._sql.spend_nonce, {"nonce": nonce, "expires_at": to_us(expires_at)})
        return bool(cursor.rowcount == 1)

    def commit_release(
        self,
        *,
        nonce: bytes,
        nonce_expires_at: datetime,
        dataset: str,
        version: int | None,
        user: str,
        policy_sha256: str,
        groups: Sequence[str] = (),
        expected_version: int,
        at: datetime,
        fields: dict[str, AuditValue],
        open_dek: Callable[[str, int, bytes], bytes],
        purge_before: datetime | None = None,
    ) -> ReleaseCommit:
        """Spend the nonce, re-check access against the current state, and record the outcome.

        ``open_dek`` unwraps the stored key inside the transaction, so a key that does not unwrap (an
        edited database) is recorded as a failure, not as a release.
        """
        with self._raw_write() as (cursor, audit):
            refusal = None
            if not self._spend_nonce(cursor, nonce, nonce_expires_at, purge_before):
                refusal = Denied(Reason.NONCE_INVALID, "the nonce was already used (a replay)")
            view = release_row_view(cursor, self._sql, dataset, version, user, at, groups)
            refusal = refusal or view.refusal(version, at)
            if refusal is None and (view.policy_sha256 != policy_sha256 or view.version != expected_version):
                # The policy or the current version changed while the evidence was being checked.
                refusal = Denied(Reason.EVIDENCE_REJECTED, "the release policy changed during the request")
            dek = None
            if refusal is None and view.version is not None:
                if view.wrapped_dek is None:
                    refusal = Denied(Reason.VERSION_UNKNOWN, "the version was deleted during the request")
                else:
                    try:
                        dek = open_dek(dataset, view.version, view.wrapped_dek)
                    except ConfigError as error:
                        refusal = Denied(Reason.INTERNAL, error.message)
            if refusal is not None or dek is None or view.version is None:
                refusal = refusal or Denied(Reason.INTERNAL, "no key was found")
                audit.append(
                    at,
                    "release",
                    "denied",
                    {**fields, "reason": refusal.reason.value, "detail": refusal.detail},
                )
                return ReleaseCommit(None, None, None, refusal)
            audit.append(
                at, "release", "released", {**fields, "version": view.version, "via": view.authorized_by}
            )
            return ReleaseCommit(dek, view.manifest_sha256, view.version, None)

    def record_denial(
        self,
        *,
        nonce: bytes | None,
        nonce_expires_at: datetime | None,
        at: datetime,
        refusal: Denied,
        fields: dict[str, AuditValue],
        event: str = "release",
    ) -> None:
        """A refused release (or delegation, ``event``): an authentic nonce is spent (one try per challenge)
        and the detail audited."""
        with self._raw_write() as (cursor, audit):
            if nonce is not None and nonce_expires_at is not None:
                self._spend_nonce(cursor, nonce, nonce_expires_at, None)
            audit.append(
                at, event, "denied", {**fields, "reason": refusal.reason.value, "detail": refusal.detail}
            )

    def commit_delegation(
        self, *, nonce: bytes, nonce_expires_at: datetime, at: datetime, fields: dict[str, AuditValue]
    ) -> Denied | None:
        """Spend the nonce and record the child grant before it is handed out; a replayed nonce is refused
        and recorded instead."""
        with self._raw_write() as (cursor, audit):
            if not self._spend_nonce(cursor, nonce, nonce_expires_at, None):
                refusal = Denied(Reason.NONCE_INVALID, "the nonce was already used (a replay)")
                audit.append(
                    at,
                    "delegate",
                    "denied",
                    {**fields, "reason": refusal.reason.value, "detail": refusal.detail},
                )
                return refusal
            audit.append(at, "delegate", "issued", fields)
            return None


def release_row_view(
    cursor: Any,
    sql: Sql,
    dataset: str,
    version: int | None,
    user: str,
    at: datetime,
    groups: Sequence[str] = (),
) -> ReleaseView:
    cursor.execute(sql.access, {"dataset": dataset, "principal": f"user:{user}", "user": user})
    grants_found: list[tuple[str, int | None]] = [(str(p), e) for p, e in cursor.fetchall()]
    if groups:
        # Groups the user's identity provider reported (carried in the session grant), beside the KBS's own.
        wanted = {f"group:{g}" for g in groups}
        cursor.execute(sql.dataset_grants, {"dataset": dataset})
        seen = {p for p, _ in grants_found}
        grants_found += [(str(p), e) for p, e in cursor.fetchall() if p in wanted and p not in seen]
    now = to_us(at)
    active = sorted(p for p, expires in grants_found if expires is None or now < expires)
    if active:
        detail = f"granted through {active[0]}"
    elif grants_found:
        detail = "; ".join(f"the grant to {p} expired at {iso_us(e)}" for p, e in grants_found)
    else:
        detail = f"no grant to user:{user} or any group it is in"
    if version is None:
        cursor.execute(sql.dataset_current, {"dataset": dataset})
    else:
        cursor.execute(sql.dataset_version, {"dataset": dataset, "version": version})
    row = cursor.fetchone()
    if row is None:
        return ReleaseView(
            active[0] if active else None, detail, False, None, None, None, None, None, False, None
        )
    (
        policy_toml,
        policy_sha256,
        release_expires,
        dataset_deleted,
        number,
        manifest,
        version_deleted,
        wrapped,
    ) = row
    return ReleaseView(
        authorized_by=active[0] if active else None,
        access_detail=detail,
        dataset_live=dataset_deleted is None,
        policy_toml=policy_toml,
        policy_sha256=policy_sha256,
        release_expires_at=from_us(release_expires),
        version=int(number) if number is not None else None,
        manifest_sha256=manifest,
        version_live=number is not None and version_deleted is None,
        wrapped_dek=bytes(wrapped) if wrapped is not None else None,
    )
