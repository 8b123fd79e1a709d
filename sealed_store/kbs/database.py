"""The key broker's database connection and its transactions; the stores (``release_store``, ``admin_store``)
build on it.

Durability and the audit chain rest on one rule: **every state change and its audit entry commit in the same
transaction**, and the answer to the caller is sent only after that commit. So a ``kill -9`` at any moment
leaves either both (the grant and its entry) or neither, and an acknowledged change is on disk. Audit
appends are serialised by locking the one row of ``kbs_audit_head`` (``SELECT ... FOR UPDATE``; SQLite has
one writer at a time anyway), so entries get consecutive sequence numbers and each hashes its predecessor.
Writers inside one process queue on a lock instead of SQLite's busy-sleep loop, which would otherwise
dominate tail latency under load.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from teelab.errors import ConfigError
from teelab.sealed_store.kbs.audit import AuditRecord, AuditValue, head_message, seal_entry
from teelab.sealed_store.kbs.schema import Durability, make_engine, safe_url

# The release path (and every audit append) uses plain DBAPI statements: SQLAlchemy's per-statement
# machinery costs several times what SQLite itself does, and a release runs about ten statements. The SQL
# is what SQLite and PostgreSQL both accept; ``{name}`` marks a parameter, rendered in the driver's style.
_RELEASE_ROW = (
    "SELECT d.policy_toml, d.policy_sha256, d.release_expires_at, d.deleted_at, v.version, v.manifest_sha256, "
    "v.deleted_at, v.wrapped_dek FROM kbs_datasets d LEFT JOIN kbs_versions v ON v.dataset = d.name "
)
_HOT_SQL = {
    "head": "SELECT seq, hash FROM kbs_audit_head WHERE id = 1",
    "dataset_grants": "SELECT principal, expires_at FROM kbs_grants WHERE dataset = {dataset}",
    "append": "INSERT INTO kbs_audit (seq, body, hash, signature) VALUES ({seq}, {body}, {hash}, {signature})",
    "move_head": "UPDATE kbs_audit_head SET seq = {seq}, hash = {hash}, signature = {signature} WHERE id = 1",
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


class Sql:
    """The hot statements rendered for one driver (sqlite3: ``:name``; psycopg: ``%(name)s``)."""

    def __init__(self, sqlite: bool) -> None:
        style = r":\1" if sqlite else r"%(\1)s"
        rendered = {name: re.sub(r"\{(\w+)\}", style, sql) for name, sql in _HOT_SQL.items()}
        # PostgreSQL: the head row's lock serialises audit appends. SQLite: BEGIN IMMEDIATE already does.
        self.head = rendered["head"] + ("" if sqlite else " FOR UPDATE")
        self.append = rendered["append"]
        self.move_head = rendered["move_head"]
        self.dataset_grants = rendered["dataset_grants"]
        self.spend_nonce = rendered["spend_nonce"]
        self.purge_nonces = rendered["purge_nonces"]
        self.access = rendered["access"]
        self.dataset_version = rendered["dataset_version"]
        self.dataset_current = rendered["dataset_current"]


class AuditAppender:
    """Appends audit entries inside one transaction (reading, and on PostgreSQL locking, the head first)."""

    def __init__(self, cursor: Any, sql: Sql, signing_key: Ed25519PrivateKey | None) -> None:
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
            assert self._signing_key is not None  # append() refused without it
            seq, digest = self._head
            signature = self._signing_key.sign(head_message(seq, digest))
            self._cursor.execute(self._sql.move_head, {"seq": seq, "hash": digest, "signature": signature})


class Transaction:
    """One write transaction through SQLAlchemy; ``audit`` appends entries that commit (or vanish) with it."""

    def __init__(
        self, conn: Connection, sql: Sql, signing_key: Ed25519PrivateKey | None, audited: bool
    ) -> None:
        self.conn = conn
        driver = conn.connection.driver_connection
        if driver is None:
            raise RuntimeError("the database connection is closed")
        self._audit = AuditAppender(driver.cursor(), sql, signing_key) if audited else None

    def audit(self, at: datetime, event: str, outcome: str, fields: dict[str, AuditValue]) -> AuditRecord:
        if self._audit is None:
            raise RuntimeError("this transaction was not opened for audit entries")
        return self._audit.append(at, event, outcome, fields)

    def finish(self) -> None:
        if self._audit is not None:
            self._audit.finish()


class Database:
    """The engine, the write lock and the three kinds of transaction. Thread-safe; one per server process."""

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
            self.engine = make_engine(url, pool_size=pool_size, durability=durability)
        except (SQLAlchemyError, ImportError, ValueError) as error:
            raise ConfigError(f"cannot open the key broker database {safe_url(url)}: {error}") from None
        self.sqlite = self.engine.dialect.name == "sqlite"
        self._sql = Sql(self.sqlite)
        # SQLite has one writer at a time: queue on a lock instead of SQLite's sleep-and-retry busy handler.
        self._write_lock: threading.Lock | None = threading.Lock() if self.sqlite else None

    def close(self) -> None:
        self.engine.dispose()

    def _lock(self) -> threading.Lock | nullcontext[None]:
        return self._write_lock if self._write_lock is not None else nullcontext()

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def _write(self, *, audited: bool = True) -> Iterator[Transaction]:
        with self._lock(), self.engine.connect() as conn:
            conn = conn.execution_options(teelab_write=True)
            with conn.begin():
                tx = Transaction(conn, self._sql, self._signing_key, audited)
                yield tx
                tx.finish()
