"""The key broker's state in a SQL database: SQLite by default, PostgreSQL when shared.

One :class:`Store` per server process, assembled from parts with one job each:

- ``schema``: the tables, the time codec (integer microseconds, UTC) and the engines;
- ``database``: the connection, its transactions and the audit appender (every change and its audit entry
  commit together);
- ``release_store``: the release path's raw-DBAPI reads and its serialised commit;
- ``admin_store``: datasets, versions, grants, groups and audit reads, each change gated by the broker's rule.

The store reports state and records changes; the broker (``broker.py``) decides who may make them.
"""

from __future__ import annotations

import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Connection, insert, inspect, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from teelab.errors import ConfigError
from teelab.sealed_store.kbs.admin_store import AdminStore, DatasetState, PolicyText
from teelab.sealed_store.kbs.audit import GENESIS_HASH, head_message
from teelab.sealed_store.kbs.release_store import ReleaseCommit, ReleaseStore, ReleaseView
from teelab.sealed_store.kbs.schema import (
    SCHEMA_VERSION,
    Durability,
    audit_head,
    kbs_meta,
    metadata,
    safe_url,
)

__all__ = ["DatasetState", "Durability", "PolicyText", "ReleaseCommit", "ReleaseView", "Store", "safe_url"]


class Store(ReleaseStore, AdminStore):
    """All reads and writes of the key broker's state. Thread-safe; one per server process."""

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
                store._sign_unsigned_head()
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
                _add_head_signature_column(conn)
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

    def _sign_unsigned_head(self) -> None:
        """A database from before heads were signed: sign its head now (it was verified entry by entry)."""
        if self._signing_key is None:
            return
        with self._lock(), self.engine.connect() as conn, conn.begin():
            row = conn.execute(select(audit_head).where(audit_head.c.id == 1)).one()
            if row.signature is None and int(row.seq) > 0:
                signature = self._signing_key.sign(head_message(int(row.seq), bytes(row.hash)))
                conn.execute(update(audit_head).where(audit_head.c.id == 1).values(signature=signature))

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


def _add_head_signature_column(conn: Connection) -> None:
    """Schema 1 databases made before the head was signed lack its column; add it (idempotent)."""
    columns = {column["name"] for column in inspect(conn).get_columns("kbs_audit_head")}
    if "signature" not in columns:
        kind = "BLOB" if conn.dialect.name == "sqlite" else "BYTEA"
        conn.exec_driver_sql(f"ALTER TABLE kbs_audit_head ADD COLUMN signature {kind}")
