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
from teelab.sealed_store.kbs.auth_config import AuthConfig
from teelab.sealed_store.kbs.schema import Durability

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
    # Threads for requests that wait on the database: None means 16 on a networked database, and 4 for
    # SQLite with "fsync" durability. SQLite with "process" durability needs none (see ``threads``).
    workers: int | None = None
    max_message_bytes: int = 4 * 1024 * 1024
    # TLS: PEM certificate chain and private key; both or neither (plaintext, for loopback).
    tls_certificate: Path | None = None
    tls_key: Path | None = None
    # Who may authenticate (the ``[auth]`` section of ``kbs.toml``): by default the admin token and the
    # local per-user tokens the broker issues.
    auth: AuthConfig = field(default_factory=AuthConfig)

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{self.state_dir / DB_FILE}"

    @property
    def threads(self) -> int:
        """Worker threads; 0: requests run on the server's event loop, one at a time.

        With SQLite and ``process`` durability a request is CPU under one interpreter lock (the commit
        writes to the OS, without waiting for the disk), so threads only add switching: measured on 2 cores,
        running on the event loop gives 10-25% more releases/s than 4 threads, and 16 threads cost ~60% more
        CPU per release than 4. An fsync or a networked database's round trip is a wait that threads overlap.
        """
        if self.workers is not None:
            return self.workers
        if not self.database_url.startswith("sqlite"):
            return 16
        return 0 if self.durability == "process" else 4
