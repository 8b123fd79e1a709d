"""The key broker's configuration: where its state lives and how it judges evidence.

Defaults give a working single-machine KBS: state in ``<teelab data dir>/kbs`` (0700), SQLite in WAL mode in
that folder, collateral from the local simulated platform. A shared deployment sets ``db_url`` to PostgreSQL
(``postgresql+psycopg://user@host/db``) and gives every replica the same state folder contents (keys and
tokens; the database holds everything else).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from teelab.paths import data_dir
from teelab.sealed_store.kbs.store import Durability

DB_FILE = "kbs.sqlite3"


def default_state_dir() -> Path:
    return data_dir() / "kbs"


@dataclass(frozen=True)
class KbsConfig:
    state_dir: Path = field(default_factory=default_state_dir)
    # SQLAlchemy URL; None: SQLite in the state folder.
    db_url: str | None = None
    # "sim", "none" or a path to a collateral bundle / PCS folder (see collateral.py).
    collateral: str = "sim"
    # The simulated platform for the "sim" collateral source (default: the user's, as SimBackend uses).
    sim_platform: Path | None = None
    # Extra trust anchors (SHA-256 fingerprint of the root certificate's DER -> label).
    intel_roots: Mapping[str, str] = field(default_factory=dict)
    simulated_roots: Mapping[str, str] = field(default_factory=dict)
    nonce_ttl: timedelta = timedelta(seconds=60)
    session_grant_ttl: timedelta = timedelta(hours=12)
    max_session_grant_ttl: timedelta = timedelta(hours=24)
    # "process": survives kill -9 of the server (SQLite synchronous=NORMAL); "fsync": survives power loss too.
    durability: Durability = "process"
    # gRPC worker threads (and database connections); None: 4 on SQLite, 16 on a networked database.
    workers: int | None = None
    max_message_bytes: int = 4 * 1024 * 1024

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{self.state_dir / DB_FILE}"

    @property
    def threads(self) -> int:
        """Worker threads. On SQLite the work is CPU under one interpreter lock, and more threads only add
        switching (measured: 16 threads cost ~60% more CPU per release than 4); a networked database's round
        trips are waits that more threads overlap."""
        if self.workers is not None:
            return self.workers
        return 4 if self.database_url.startswith("sqlite") else 16
