"""``kill -9`` of a real KBS server process in the middle of a stream of writes.

Afterwards: every grant the server acknowledged is in the database, every change that is in the database
has its audit entry (they commit together), the audit chain verifies, and a restarted server continues
the same chain.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from teelab.enclave_runtime.sim.identity import SimIdentity
from teelab.enclave_runtime.sim.platform import SimPlatform, default_path
from teelab.enclave_runtime.sim.runtime import SimRuntime
from teelab.errors import KeyBrokerError
from teelab.sealed_store.kbs.audit import verify_audit
from teelab.sealed_store.kbs.auth import ADMIN_TOKEN_FILE, read_token
from teelab.sealed_store.kbs.client import KbsClient
from teelab.sealed_store.kbs.crypto import KbsKeys, load_signing_public_key
from teelab.sealed_store.kbs.identity import issue_local_token
from teelab.sealed_store.kbs.store import Store

from .conftest import GOOD, Enclave, policy_for

WRITERS = 4


def start_server(state: Path) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "teelab.sealed_store.kbs",
            "kbs",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--state",
            str(state),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ.copy(),
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if "listening on" in line:
            return process, line.rsplit(" ", 1)[1].strip()
    process.kill()
    raise AssertionError(f"the KBS did not start: {process.stdout.read()}")


def write_until_killed(
    target: str,
    token: str,
    process: subprocess.Popen[str],
    round_: int,
    token_dir: Path,
    acknowledged_releases: list[int],
) -> set[str]:
    """Grants, group changes and releases from several threads; SIGKILL lands while they are in flight."""
    acknowledged: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def writer(index: int) -> None:
        client = KbsClient(target, token, timeout=5)
        i = 0
        while not stop.is_set():
            principal = f"user:r{round_}-w{index}-{i}"
            try:
                client.grant("sales", principal)
                if i % 5 == 0:
                    client.add_member(f"g{round_}", f"r{round_}-w{index}-{i}")
            except KeyBrokerError:
                break  # the server is gone; this write was never acknowledged
            with lock:
                acknowledged.add(principal)
            i += 1
        client.close()

    released: list[int] = []

    def releaser() -> None:
        # Releases take the other write path (bare DBAPI transaction): their audit entries must survive too.
        enclave = _enclave()
        gateway = KbsClient(target, read_token(issue_local_token(Path(token_dir), "alice")), timeout=5)
        kernel = KbsClient(target, timeout=5)
        try:
            grant = gateway.issue_session_grant(enclave_key=enclave.public).token
            while not stop.is_set():
                kernel.fetch_key("sales", enclave_secret=enclave.secret, grant=grant, attest=enclave.attest)
                released.append(1)
        except KeyBrokerError:
            pass
        finally:
            gateway.close()
            kernel.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    threads.append(threading.Thread(target=releaser))
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with lock:
            if len(acknowledged) >= 60 + 40 * round_:
                break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)  # writes are in flight on every thread
    process.wait(timeout=10)
    stop.set()
    for thread in threads:
        thread.join(timeout=20)
    acknowledged_releases.append(len(released))
    return acknowledged


def _enclave() -> Enclave:
    platform = SimPlatform.open(default_path())
    identity = SimIdentity(
        platform=platform.path,
        mrenclave=bytes.fromhex(GOOD),
        mrsigner=bytes(32),
        isv_prod_id=0,
        isv_svn=0,
        attributes=0x05,
    )
    return Enclave(SimRuntime(identity, platform))


@pytest.mark.slow
def test_kill_9_during_writes_loses_no_acknowledged_grant_and_keeps_the_chain(tmp_path: Path) -> None:
    SimPlatform.open(default_path())  # the server's sim collateral and the test's enclave share it
    state = tmp_path / "kbs"
    process, target = start_server(state)
    token = read_token(state / ADMIN_TOKEN_FILE)
    admin = KbsClient(target, token)
    dek = os.urandom(32)
    admin.register_dataset(
        "sales", 1, manifest_sha256="0" * 64, dek=dek, release_policy_toml=policy_for(GOOD), owner="olivia"
    )
    admin.close()
    admin = KbsClient(target, token)
    admin.grant("sales", "user:alice")
    admin.close()
    acknowledged: set[str] = set()
    acknowledged_releases: list[int] = []
    for round_ in range(3):
        acknowledged |= write_until_killed(target, token, process, round_, state, acknowledged_releases)
        url = f"sqlite:///{state / 'kbs.sqlite3'}"
        store = Store.reader(url)
        try:
            granted = {g.principal for g in store.get_dataset("sales").grants}
            entries_raw = list(store.iter_audit())
            entries = [r.entry() for r in entries_raw]
            result = verify_audit(store.iter_audit(), load_signing_public_key(state / "signing.pub"))
            head = store.audit_head()
        finally:
            store.close()
        print(
            f"round {round_}: {len(acknowledged)} grants acknowledged, {len(granted)} in the database; "
            f"{sum(acknowledged_releases)} releases acknowledged"
        )
        missing = acknowledged - granted
        assert not missing, f"round {round_}: acknowledged grants lost: {sorted(missing)[:5]}"
        audited = {str(e["principal"]) for e in entries if e["event"] == "grant"}
        assert granted <= audited, "a grant in the database has no audit entry"
        releases = sum(1 for e in entries if e["event"] == "release" and e["outcome"] == "released")
        assert releases >= sum(acknowledged_releases), "an acknowledged release has no audit entry"
        assert result.ok, result.summary()
        assert (result.head_seq, result.head_hash) == (head.seq, head.hash)
        # The head record was signed in the same transaction as the last entry: it verifies after a kill.
        key = load_signing_public_key(state / "signing.pub")
        assert verify_audit(iter(entries_raw), key, signed_head=head).ok
        # Restart on the same state: the chain continues from the head that survived.
        process, target = start_server(state)
    with KbsClient(target, token) as admin:
        admin.grant("sales", "user:after-the-crashes")
        page = admin.audit(since_seq=head.seq)
        assert page.records[-1].entry()["principal"] == "user:after-the-crashes"
        assert _stored_key(state) == dek
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0
    store = Store.reader(f"sqlite:///{state / 'kbs.sqlite3'}")
    assert verify_audit(store.iter_audit(), load_signing_public_key(state / "signing.pub")).ok
    store.close()


def _stored_key(state: Path) -> bytes:
    """The data key as the KBS holds it: wrapped in the database, unwrapped only with the master key."""
    keys = KbsKeys.load(state)
    store = Store.reader(f"sqlite:///{state / 'kbs.sqlite3'}")
    try:
        with store.engine.connect() as conn:
            wrapped = conn.exec_driver_sql("SELECT wrapped_dek FROM kbs_versions").scalar()
    finally:
        store.close()
    assert isinstance(wrapped, bytes)
    return keys.unwrap_dek("sales", 1, wrapped)
