"""The key broker's state in a SQL database (SQLAlchemy Core): SQLite by default, PostgreSQL when shared.

Durability and the audit chain rest on one rule: **every state change and its audit entry commit in the same
transaction**, and the answer to the caller is sent only after that commit. So a ``kill -9`` at any moment
leaves either both (the grant and its entry) or neither, and an acknowledged change is on disk. Audit
appends are serialised by locking the one row of ``kbs_audit_head`` (``SELECT ... FOR UPDATE``; SQLite has
one writer at a time anyway), so entries get consecutive sequence numbers and each hashes its predecessor.
Because a release's final authorization check runs inside that same serialised transaction, a revocation
that committed before it is always seen: revocation takes effect at the next release, never "soon".

SQLite runs in WAL mode with ``synchronous=NORMAL`` by default: a committed transaction is in the WAL file
before ``COMMIT`` returns, which survives the death of the process (the case tested); only an operating
system crash or power loss can lose the last transactions, never corrupt the database. ``durability =
"fsync"`` selects ``synchronous=FULL`` for that case too. Writers inside one process queue on a lock instead
of SQLite's busy-sleep loop, which would otherwise dominate tail latency under load.

Times are stored as integer microseconds since the epoch (UTC), the same on every database.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from teelab.errors import ConfigError
from teelab.sealed_store.kbs.audit import GENESIS_HASH, AuditRecord, AuditValue, seal_entry
from teelab.sealed_store.kbs.model import DatasetInfo, GrantInfo, GroupInfo, Unset, VersionInfo
from teelab.sealed_store.kbs.reasons import Denied, Reason, denied

SCHEMA_VERSION = "1"
Durability = Literal["process", "fsync"]

metadata = MetaData()

datasets = Table(
    "kbs_datasets",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("owner", String(128), nullable=False),
    Column("policy_toml", Text, nullable=False),
    Column("policy_sha256", String(64), nullable=False),
    Column("policy_id", String(160), nullable=False),
    Column("release_expires_at", BigInteger, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("deleted_at", BigInteger, nullable=True),
)

versions = Table(
    "kbs_versions",
    metadata,
    Column("dataset", String(128), ForeignKey("kbs_datasets.name"), primary_key=True),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("manifest_sha256", String(64), nullable=False),
    # NULL once the version is deleted: the tombstone keeps the number from ever being reused.
    Column("wrapped_dek", LargeBinary, nullable=True),
    Column("registered_at", BigInteger, nullable=False),
    Column("deleted_at", BigInteger, nullable=True),
)

grants = Table(
    "kbs_grants",
    metadata,
    Column("dataset", String(128), ForeignKey("kbs_datasets.name"), primary_key=True),
    Column("principal", String(140), primary_key=True),
    Column("granted_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=True),
)

members = Table(
    "kbs_members",
    metadata,
    Column("group_name", String(128), primary_key=True),
    Column("user_name", String(128), primary_key=True),
    Column("added_at", BigInteger, nullable=False),
    Index("ix_kbs_members_user", "user_name"),
)

# Nonces are issued without a write (nonces.py); a nonce is recorded here when a release spends it.
# Every release writes one row here and one audit entry, so both tables are kept to one B-tree each on
# SQLite (fewer pages per commit): no rowid here, and the audit's seq is the rowid. Expired rows are purged
# by a scan once a minute, which needs no index.
used_nonces = Table(
    "kbs_used_nonces",
    metadata,
    Column("nonce", LargeBinary(32), primary_key=True),
    Column("expires_at", BigInteger, nullable=False),
    sqlite_with_rowid=False,
)

_SEQ = BigInteger().with_variant(Integer(), "sqlite")  # SQLite's INTEGER PRIMARY KEY is the rowid

audit_log = Table(
    "kbs_audit",
    metadata,
    Column("seq", _SEQ, primary_key=True, autoincrement=False),
    Column("body", Text, nullable=False),
    Column("hash", LargeBinary(32), nullable=False),
    Column("signature", LargeBinary(64), nullable=False),
)

audit_head = Table(
    "kbs_audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", LargeBinary(32), nullable=False),
)

kbs_meta = Table(
    "kbs_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_us(at: datetime) -> int:
    """Exact integer microseconds (no float rounding: a stored expiry compares exactly)."""
    return (at.astimezone(UTC) - _EPOCH) // _MICROSECOND


def from_us(value: int | None) -> datetime | None:
    return None if value is None else _at(value)


def _at(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(value))


@dataclass(frozen=True)
class PolicyText:
    toml: str
    sha256: str
    policy_id: str


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


# The release path (and every audit append) uses plain DBAPI statements: SQLAlchemy's per-statement
# machinery costs several times what SQLite itself does, and a release runs about ten statements. The SQL
# is what SQLite and PostgreSQL both accept; ``{name}`` marks a parameter, rendered in the driver's style.
_RELEASE_ROW = (
    "SELECT d.policy_toml, d.policy_sha256, d.release_expires_at, d.deleted_at, v.version, v.manifest_sha256, "
    "v.deleted_at, v.wrapped_dek FROM kbs_datasets d LEFT JOIN kbs_versions v ON v.dataset = d.name "
)
_HOT_SQL = {
    "head": "SELECT seq, hash FROM kbs_audit_head WHERE id = 1",
    "append": "INSERT INTO kbs_audit (seq, body, hash, signature) VALUES ({seq}, {body}, {hash}, {signature})",
    "move_head": "UPDATE kbs_audit_head SET seq = {seq}, hash = {hash} WHERE id = 1",
    "spend_nonce": "INSERT INTO kbs_used_nonces (nonce, expires_at) VALUES ({nonce}, {expires_at}) "
    "ON CONFLICT (nonce) DO NOTHING",
    "purge_nonces": "DELETE FROM kbs_used_nonces WHERE expires_at <= {before}",
    "access": "SELECT principal, expires_at FROM kbs_grants WHERE dataset = {dataset} AND (principal = "
    "{principal} OR principal IN (SELECT 'group:' || group_name FROM kbs_members WHERE user_name = {user}))",
    "dataset_version": _RELEASE_ROW + "AND v.version = {version} WHERE d.name = {dataset}",
    # Constant text only: every value is bound by the driver.
    "dataset_current": _RELEASE_ROW  # noqa: S608
    + "AND v.version = (SELECT MAX(version) FROM kbs_versions WHERE dataset = {dataset} AND deleted_at IS NULL) "
    "WHERE d.name = {dataset}",
}


class _Sql:
    """The hot statements rendered for one driver (sqlite3: ``:name``; psycopg: ``%(name)s``)."""

    def __init__(self, sqlite: bool) -> None:
        style = r":\1" if sqlite else r"%(\1)s"
        rendered = {name: re.sub(r"\{(\w+)\}", style, sql) for name, sql in _HOT_SQL.items()}
        # PostgreSQL: the head row's lock serialises audit appends. SQLite: BEGIN IMMEDIATE already does.
        self.head = rendered["head"] + ("" if sqlite else " FOR UPDATE")
        self.append = rendered["append"]
        self.move_head = rendered["move_head"]
        self.spend_nonce = rendered["spend_nonce"]
        self.purge_nonces = rendered["purge_nonces"]
        self.access = rendered["access"]
        self.dataset_version = rendered["dataset_version"]
        self.dataset_current = rendered["dataset_current"]


class _Audit:
    """Appends audit entries inside one transaction (reading, and on PostgreSQL locking, the head first)."""

    def __init__(self, cursor: Any, sql: _Sql, signing_key: Ed25519PrivateKey | None) -> None:
        self._cursor = cursor
        self._sql = sql
        self._signing_key = signing_key
        cursor.execute(sql.head)
        seq, digest = cursor.fetchone()
        self._head = (int(seq), bytes(digest))
        self._appended = False

    def append(self, at: datetime, event: str, outcome: str, fields: dict[str, AuditValue]) -> AuditRecord:
        if self._signing_key is None:
            raise RuntimeError("this store was opened to read; it cannot sign audit entries")
        seq, previous = self._head
        record = seal_entry(previous, seq + 1, at, event, outcome, fields, self._signing_key)
        self._cursor.execute(
            self._sql.append,
            {"seq": record.seq, "body": record.body, "hash": record.hash, "signature": record.signature},
        )
        self._head = (record.seq, record.hash)
        self._appended = True
        return record

    def finish(self) -> None:
        if self._appended:
            self._cursor.execute(self._sql.move_head, {"seq": self._head[0], "hash": self._head[1]})


class _Transaction:
    """One write transaction through SQLAlchemy; ``audit`` appends entries that commit (or vanish) with it."""

    def __init__(
        self, conn: Connection, sql: _Sql, signing_key: Ed25519PrivateKey | None, audited: bool
    ) -> None:
        self.conn = conn
        driver = conn.connection.driver_connection
        if driver is None:
            raise RuntimeError("the database connection is closed")
        self._audit = _Audit(driver.cursor(), sql, signing_key) if audited else None

    def audit(self, at: datetime, event: str, outcome: str, fields: dict[str, AuditValue]) -> AuditRecord:
        if self._audit is None:
            raise RuntimeError("this transaction was not opened for audit entries")
        return self._audit.append(at, event, outcome, fields)

    def finish(self) -> None:
        if self._audit is not None:
            self._audit.finish()


class Store:
    """All reads and writes of the key broker's state. Thread-safe; one per server process."""

    def __init__(
        self,
        url: str,
        signing_key: Ed25519PrivateKey | None,
        *,
        pool_size: int = 20,
        durability: Durability = "process",
    ) -> None:
        self.url = url
        self._signing_key = signing_key
        try:
            self.engine = _engine(url, pool_size=pool_size, durability=durability)
        except (SQLAlchemyError, ImportError, ValueError) as error:
            raise ConfigError(f"cannot open the key broker database {safe_url(url)}: {error}") from None
        self.sqlite = self.engine.dialect.name == "sqlite"
        self._sql = _Sql(self.sqlite)
        # SQLite has one writer at a time: queue on a lock instead of SQLite's sleep-and-retry busy handler.
        self._write_lock: threading.Lock | None = threading.Lock() if self.sqlite else None

    # -- lifecycle ----------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        url: str,
        signing_key: Ed25519PrivateKey,
        *,
        pool_size: int = 20,
        durability: Durability = "process",
    ) -> Store:
        store = cls(url, signing_key, pool_size=pool_size, durability=durability)
        for attempt in range(3):
            try:
                store._create_schema()
                return store
            except SQLAlchemyError as error:
                # Replicas starting together on a new database race to create the tables; the loser's
                # second look finds them.
                if attempt == 2:
                    store.close()
                    raise ConfigError(
                        f"cannot prepare the key broker database {safe_url(url)}: {error}"
                    ) from None
                time.sleep(0.2 * (attempt + 1))
        return store

    def _create_schema(self) -> None:
        with self._lock(), self.engine.connect() as conn:
            with conn.begin():
                metadata.create_all(conn, checkfirst=True)
            with conn.begin():
                # Two servers may start at once on a new database: the primary keys decide who inserts.
                if conn.execute(select(audit_head.c.id)).first() is None:
                    try:
                        with conn.begin_nested():
                            conn.execute(insert(audit_head).values(id=1, seq=0, hash=GENESIS_HASH))
                    except IntegrityError:
                        pass
                row = conn.execute(select(kbs_meta.c.value).where(kbs_meta.c.key == "schema_version")).first()
                if row is None:
                    try:
                        with conn.begin_nested():
                            conn.execute(insert(kbs_meta).values(key="schema_version", value=SCHEMA_VERSION))
                    except IntegrityError:
                        pass
                elif row.value != SCHEMA_VERSION:
                    raise ConfigError(
                        f"the key broker database has schema version {row.value}; this teelab knows "
                        f"{SCHEMA_VERSION}"
                    )

    @classmethod
    def reader(cls, url: str) -> Store:
        """Open an existing database to read (``teelab audit``): creates nothing, signs nothing."""
        if url.startswith("sqlite:///"):
            path = Path(url.removeprefix("sqlite:///"))
            if not path.is_file():
                raise ConfigError(f"no key broker database at {path}", hint="give the KBS's --state or --db")
        store = cls(url, None, pool_size=2)
        try:
            with store._read() as conn:
                conn.execute(select(audit_head.c.seq)).first()
        except SQLAlchemyError as error:
            store.close()
            raise ConfigError(f"{safe_url(url)} is not a key broker database: {error}") from None
        return store

    def close(self) -> None:
        self.engine.dispose()

    # -- transactions -------------------------------------------------------------------------------

    def _lock(self) -> threading.Lock | nullcontext[None]:
        return self._write_lock if self._write_lock is not None else nullcontext()

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def _write(self, *, audited: bool = True) -> Iterator[_Transaction]:
        with self._lock(), self.engine.connect() as conn:
            conn = conn.execution_options(teelab_write=True)
            with conn.begin():
                tx = _Transaction(conn, self._sql, self._signing_key, audited)
                yield tx
                tx.finish()

    @contextmanager
    def _raw_write(self) -> Iterator[tuple[Any, _Audit]]:
        """A write transaction on the bare DBAPI connection (the release path), with its audit appender."""
        with self._lock():
            raw = self.engine.raw_connection()
            try:
                cursor = raw.cursor()
                if self.sqlite:
                    cursor.execute("BEGIN IMMEDIATE")
                audit = _Audit(cursor, self._sql, self._signing_key)
                yield cursor, audit
                audit.finish()
                raw.commit()
            except BaseException:
                raw.rollback()
                raise
            finally:
                raw.close()

    # -- releases -----------------------------------------------------------------------------------

    def release_view(self, dataset: str, version: int | None, user: str, at: datetime) -> ReleaseView:
        """A first look (no transaction needed: the commit checks again under the write lock)."""
        raw = self.engine.raw_connection()
        try:
            view = _release_view(raw.cursor(), self._sql, dataset, version, user, at)
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
            view = _release_view(cursor, self._sql, dataset, version, user, at)
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
    ) -> None:
        """A refused release: an authentic nonce is spent (one try per challenge) and the detail audited."""
        with self._raw_write() as (cursor, audit):
            if nonce is not None and nonce_expires_at is not None:
                self._spend_nonce(cursor, nonce, nonce_expires_at, None)
            audit.append(
                at, "release", "denied", {**fields, "reason": refusal.reason.value, "detail": refusal.detail}
            )

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
    ) -> DatasetInfo:
        with self._write() as tx:
            conn = tx.conn
            row = conn.execute(select(datasets).where(datasets.c.name == dataset)).first()
            values: dict[str, Any] = {
                "policy_toml": policy.toml,
                "policy_sha256": policy.sha256,
                "policy_id": policy.policy_id,
            }
            if not isinstance(release_expires_at, Unset):
                values["release_expires_at"] = (
                    None if release_expires_at is None else to_us(release_expires_at)
                )
            if row is None:
                conn.execute(
                    insert(datasets).values(name=dataset, owner=owner, created_at=to_us(at), **values)
                )
            elif row.deleted_at is not None:
                # A deleted dataset's name is reused: a fresh dataset (no grants), numbering continues.
                values.setdefault("release_expires_at", None)
                conn.execute(
                    update(datasets)
                    .where(datasets.c.name == dataset)
                    .values(owner=owner, created_at=to_us(at), deleted_at=None, **values)
                )
            elif row.owner != owner:
                raise denied(
                    Reason.OWNER_MISMATCH, f"dataset {dataset} is owned by {row.owner!r}, not {owner!r}"
                )
            else:
                conn.execute(update(datasets).where(datasets.c.name == dataset).values(**values))
            existing = conn.execute(
                select(func.max(versions.c.version)).where(versions.c.dataset == dataset)
            ).scalar()
            if existing is not None and version <= existing:
                taken = conn.execute(
                    select(versions.c.version).where(
                        versions.c.dataset == dataset, versions.c.version == version
                    )
                ).first()
                if taken is not None:
                    raise denied(
                        Reason.VERSION_EXISTS,
                        f"{dataset} version {version} is already registered (versions are never reused)",
                    )
                raise denied(
                    Reason.VERSION_NOT_NEWER,
                    f"{dataset} already has version {existing}; a new version must be higher",
                )
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
                    "release_expires_at": _iso(values.get("release_expires_at")),
                },
            )
            info = _dataset_info(conn, dataset, with_policy=False)
        assert info is not None
        return info

    def set_release_policy(
        self,
        *,
        dataset: str,
        policy: PolicyText | None,
        release_expires_at: datetime | Unset | None,
        actor: str,
        at: datetime,
    ) -> DatasetInfo:
        with self._write() as tx:
            _live_dataset(tx.conn, dataset)
            values: dict[str, Any] = {}
            if policy is not None:
                values.update(
                    policy_toml=policy.toml, policy_sha256=policy.sha256, policy_id=policy.policy_id
                )
            if not isinstance(release_expires_at, Unset):
                values["release_expires_at"] = (
                    None if release_expires_at is None else to_us(release_expires_at)
                )
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
                    "release_expires_at": _iso(values.get("release_expires_at")),
                    "release_expiry_cleared": "release_expires_at" in values
                    and values["release_expires_at"] is None,
                },
            )
            info = _dataset_info(tx.conn, dataset, with_policy=False)
        assert info is not None
        return info

    def delete_dataset(self, *, dataset: str, version: int | None, actor: str, at: datetime) -> list[int]:
        with self._write() as tx:
            conn = tx.conn
            _live_dataset(conn, dataset)
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

    def list_datasets(self, *, user: str | None, at: datetime) -> list[DatasetInfo]:
        """Every live dataset, or those ``user`` may receive now (with only the grants that show why)."""
        with self._read() as conn:
            if user is None:
                names = conn.execute(
                    select(datasets.c.name).where(datasets.c.deleted_at.is_(None)).order_by(datasets.c.name)
                ).scalars()
                found = [_dataset_info(conn, name, with_policy=False) for name in names]
                return [info for info in found if info is not None]
            principals = _principals_of(conn, user)
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
        self, *, dataset: str, principal: str, expires_at: datetime | None, actor: str, at: datetime
    ) -> GrantInfo:
        with self._write() as tx:
            conn = tx.conn
            _live_dataset(conn, dataset)
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
                    "expires_at": _iso(None if expires_at is None else to_us(expires_at)),
                    "replaced": replaced,
                },
            )
        return GrantInfo(dataset, principal, at, expires_at)

    def revoke(self, *, dataset: str, principal: str, actor: str, at: datetime) -> bool:
        with self._write() as tx:
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

    def audit_head(self) -> tuple[int, bytes]:
        with self._read() as conn:
            row = conn.execute(select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1)).one()
        return int(row.seq), bytes(row.hash)


# -- queries shared by several operations -------------------------------------------------------------


def _principals_of(conn: Connection, user: str) -> list[str]:
    groups = conn.execute(select(members.c.group_name).where(members.c.user_name == user)).scalars()
    return [f"user:{user}", *(f"group:{g}" for g in groups)]


def _release_view(
    cursor: Any, sql: _Sql, dataset: str, version: int | None, user: str, at: datetime
) -> ReleaseView:
    cursor.execute(sql.access, {"dataset": dataset, "principal": f"user:{user}", "user": user})
    grants_found: list[tuple[str, int | None]] = [(str(p), e) for p, e in cursor.fetchall()]
    now = to_us(at)
    active = sorted(p for p, expires in grants_found if expires is None or now < expires)
    if active:
        detail = f"granted through {active[0]}"
    elif grants_found:
        detail = "; ".join(f"the grant to {p} expired at {_iso(e)}" for p, e in grants_found)
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


def _live_dataset(conn: Connection, dataset: str) -> None:
    row = conn.execute(select(datasets.c.deleted_at).where(datasets.c.name == dataset)).first()
    if row is None or row.deleted_at is not None:
        raise denied(Reason.DATASET_UNKNOWN, f"no dataset named {dataset}")


def _grant_info(row: Any) -> GrantInfo:
    return GrantInfo(row.dataset, row.principal, _at(row.granted_at), from_us(row.expires_at))


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
        VersionInfo(int(v.version), v.manifest_sha256, _at(v.registered_at), from_us(v.deleted_at))
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
        created_at=_at(row.created_at),
        release_expires_at=from_us(row.release_expires_at),
        grants=tuple(_grant_info(g) for g in grant_rows),
        release_policy_toml=row.policy_toml if with_policy else None,
    )


def _replace_grants(info: DatasetInfo, held: Sequence[GrantInfo]) -> DatasetInfo:
    return replace(info, grants=tuple(held))


def _iso(value: int | None) -> str | None:
    at = from_us(value)
    return None if at is None else at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- engines ------------------------------------------------------------------------------------------


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<database URL>"


def _engine(url: str, *, pool_size: int, durability: Durability) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            pool_size=pool_size,
            max_overflow=pool_size,
            connect_args={"check_same_thread": False, "timeout": 30},
        )
        synchronous = "FULL" if durability == "fsync" else "NORMAL"

        @event.listens_for(engine, "connect")
        def _configure(dbapi_connection: Any, _record: Any) -> None:
            # We issue BEGIN ourselves (below); pysqlite's implicit transactions would defer it.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            # Writers take the write lock at BEGIN, so a read-then-write never fails to upgrade its lock.
            immediate = conn.get_execution_options().get("teelab_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
