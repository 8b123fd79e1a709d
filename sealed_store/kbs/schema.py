"""The key broker's tables, its time codec and its database engines (SQLite by default, PostgreSQL when shared).

Times are stored as integer microseconds since the epoch (UTC), the same on every database.

SQLite runs in WAL mode with ``synchronous=NORMAL`` by default: a committed transaction is in the WAL file
before ``COMMIT`` returns, which survives the death of the process (the case tested); only an operating
system crash or power loss can lose the last transactions, never corrupt the database. ``durability =
"fsync"`` selects ``synchronous=FULL`` for that case too.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

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
    event,
)

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
    # Ed25519 over audit.head_message(seq, hash); NULL only before the first entry (or in a database made
    # before heads were signed, until the broker next opens it).
    Column("signature", LargeBinary(64), nullable=True),
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
    return None if value is None else at_us(value)


def at_us(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(value))


def iso_us(value: int | None) -> str | None:
    """A stored time as the audit log writes it (microseconds, UTC, ``Z``)."""
    at = from_us(value)
    return None if at is None else at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<database URL>"


def make_engine(url: str, *, pool_size: int, durability: Durability) -> Engine:
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
