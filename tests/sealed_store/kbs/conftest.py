"""A real key broker on loopback, a fake clock, and simulated enclaves that produce real SGX quotes.

``kbs`` starts a :class:`KbsServer` on ``127.0.0.1:0`` with its state in the test's temporary folder and a
clock the test moves by hand (it starts at the real time once, then only moves when told: no assertion
depends on the wall clock). Enclaves are :class:`SimRuntime` instances over the test's own simulated
platform, with a measurement the test picks, and an ephemeral X25519 key E like a kernel session's.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from teelab.enclave_runtime.backend import Evidence
from teelab.enclave_runtime.sim.identity import SimIdentity
from teelab.enclave_runtime.sim.platform import SimPlatform, default_path
from teelab.enclave_runtime.sim.runtime import SimRuntime
from teelab.sealed_store.kbs.auth import ADMIN_TOKEN_FILE, read_token
from teelab.sealed_store.kbs.auth_config import AuthConfig
from teelab.sealed_store.kbs.client import KbsClient
from teelab.sealed_store.kbs.config import KbsConfig
from teelab.sealed_store.kbs.identity import issue_local_token
from teelab.sealed_store.kbs.model import ReleasedKey
from teelab.sealed_store.kbs.server import KbsServer

GOOD = hashlib.sha256(b"the analysts' kernel image").hexdigest()
OTHER = hashlib.sha256(b"someone else's kernel image").hexdigest()


def policy_for(*mrenclaves: str) -> str:
    pins = ", ".join(f'"{m}"' for m in mrenclaves)
    return f'id = "sales-release"\nallow_simulation = true\n\n[sgx]\nmrenclave = [{pins}]\n'


class FakeClock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@dataclass
class Enclave:
    """A simulated kernel session: its measured identity and its attested ephemeral key E."""

    runtime: SimRuntime
    secret: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)

    @property
    def public(self) -> bytes:
        return self.secret.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def attest(self, report_data: bytes) -> Evidence:
        return self.runtime.evidence(report_data)


@dataclass
class Kbs:
    server: KbsServer
    state: Path
    clock: FakeClock
    platform: SimPlatform
    admin: KbsClient
    anon: KbsClient
    tls_ca: bytes | None = None
    users: dict[str, KbsClient] = field(default_factory=dict)

    def as_user(self, name: str) -> KbsClient:
        """A client authenticated as ``name`` with a local per-user token the broker issued."""
        if name not in self.users:
            token = read_token(issue_local_token(self.state, name))
            self.users[name] = KbsClient(self.server.target, token, timeout=20, tls_ca=self.tls_ca)
        return self.users[name]

    def close(self) -> None:
        for client in (self.admin, self.anon, *self.users.values()):
            client.close()

    def enclave(
        self, mrenclave: str = GOOD, *, debug: bool = False, controller: bytes | None = None
    ) -> Enclave:
        """A kernel session; ``controller``: the launching gateway's controller hash, in CONFIGID (SGX KSS)."""
        identity = SimIdentity(
            platform=self.platform.path,
            mrenclave=bytes.fromhex(mrenclave),
            mrsigner=hashlib.sha256(b"teelab").digest(),
            isv_prod_id=0,
            isv_svn=0,
            attributes=0x05 | (0x02 if debug else 0),
            config_id=(controller + bytes(32)) if controller is not None else bytes(64),
        )
        return Enclave(SimRuntime(identity, self.platform))

    def register(
        self, name: str, version: int = 1, *, policy: str | None = None, owner: str = "olivia"
    ) -> bytes:
        dek = secrets.token_bytes(32)
        self.admin.register_dataset(
            name,
            version,
            manifest_sha256=hashlib.sha256(f"{name}/{version}".encode()).hexdigest(),
            dek=dek,
            release_policy_toml=policy if policy is not None else policy_for(GOOD),
            owner=owner,
        )
        return dek

    def session(self, user: str, enclave: Enclave, *, controller: bytes | None = None) -> str:
        """What the gateway does after attesting the session: a grant for (user, SHA-256(E.pub)), asked for
        with the user's own credential."""
        return self.as_user(user).issue_session_grant(enclave_key=enclave.public, controller=controller).token

    def fetch(self, dataset: str, enclave: Enclave, grant: str, version: int | None = None) -> ReleasedKey:
        return self.anon.fetch_key(
            dataset, enclave_secret=enclave.secret, grant=grant, attest=enclave.attest, version=version
        )


# The clock stands still in these tests, so a junk budget never refills: tests about other rules get one
# that never runs out (the junk limit has its own tests, test_junk.py).
UNLIMITED_JUNK = AuthConfig(junk_burst=1 << 30)


def start_kbs(state: Path, clock: FakeClock, **config: object) -> KbsServer:
    config.setdefault("auth", UNLIMITED_JUNK)
    server = KbsServer(KbsConfig(state_dir=state, **config), address="127.0.0.1:0", clock=clock)  # type: ignore[arg-type]
    server.start()
    return server


def open_kbs(state: Path, clock: FakeClock, platform: SimPlatform, **config: object) -> Kbs:
    """A started broker on ``state`` with an admin and an anonymous client (``Kbs.close`` and
    ``server.stop`` end it)."""
    server = start_kbs(state, clock, **config)
    return Kbs(
        server,
        state,
        clock,
        platform,
        KbsClient(server.target, read_token(state / ADMIN_TOKEN_FILE), timeout=20),
        KbsClient(server.target, timeout=20),
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
def kbs(tmp_path: Path, clock: FakeClock) -> Iterator[Kbs]:
    # The simulated platform at the default place, so default_anchors() knows its root (as in production).
    platform = SimPlatform.open(default_path(), now=clock.now - timedelta(hours=1))
    state = tmp_path / "kbs-state"
    kbs = open_kbs(state, clock, platform)
    try:
        yield kbs
    finally:
        kbs.close()
        kbs.server.stop(grace=0)


def serve_in_a_process(*arguments: str) -> tuple[subprocess.Popen[str], list[str]]:
    """`teelab kbs serve ARGUMENTS` in its own process, once it says it is serving: (process, lines so far)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "teelab.sealed_store.kbs", "kbs", "serve", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ.copy(),
    )
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("Ctrl-C"):
            break
    return process, lines
