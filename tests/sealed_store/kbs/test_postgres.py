"""The key broker on PostgreSQL: a throwaway cluster in a temporary folder, on a free loopback port.

The cluster runs as the current user, or as ``nobody`` when the tests run as root (PostgreSQL refuses to run
as root). The binaries come from Debian's ``postgresql`` package (``/usr/lib/postgresql/<major>/bin``), which
scripts/install-system-deps.sh installs; without them the test fails and says what to install.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from teelab.errors import KeyBrokerError
from teelab.sealed_store.kbs.audit import verify_audit
from teelab.sealed_store.kbs.auth import ADMIN_TOKEN_FILE, read_token
from teelab.sealed_store.kbs.client import KbsClient
from teelab.sealed_store.kbs.config import KbsConfig
from teelab.sealed_store.kbs.protocol import release_report_data
from teelab.sealed_store.kbs.server import KbsServer
from teelab.sealed_store.kbs.store import Store

from .conftest import GOOD, OTHER, FakeClock, Kbs, policy_for

PACKAGE_HINT = "install Debian's postgresql package (initdb and pg_ctl in /usr/lib/postgresql/<major>/bin)"


def _binaries() -> Path | None:
    found = shutil.which("pg_ctl")
    candidates = [Path(found).resolve().parent] if found else []
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    binaries = _binaries()
    if binaries is None:
        # scripts/install-system-deps.sh (run by `make test`) installs them; their absence is a setup bug.
        pytest.fail(f"PostgreSQL server binaries not found: {PACKAGE_HINT}")
    run_as: dict[str, Any] = {}
    root = Path(tempfile.mkdtemp(prefix="teelab-pg-"))
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(root, nobody.pw_uid, nobody.pw_gid)
        run_as = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
    data, port = root / "data", _free_port()

    def run(*args: str) -> None:
        done = subprocess.run(
            [str(binaries / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=root,
            **run_as,
        )
        assert done.returncode == 0, f"{args[0]} failed: {done.stdout}\n{done.stderr}"

    try:
        run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=200"
        run("pg_ctl", "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "-t", "60", "start")
        try:
            yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
        finally:
            run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_kbs(kbs: Kbs, postgres_url: str, tmp_path: Path) -> Iterator[Kbs]:
    """The ``kbs`` harness, but with its server on PostgreSQL (a fresh schema per test)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(postgres_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    engine.dispose()
    kbs.server.stop(grace=0)
    kbs.close()
    state = tmp_path / "pg-state"
    server = KbsServer(
        KbsConfig(state_dir=state, db_url=postgres_url), address="127.0.0.1:0", clock=kbs.clock
    )
    server.start()
    clients = [
        KbsClient(server.target, read_token(state / ADMIN_TOKEN_FILE)),
        KbsClient(server.target),
    ]
    pg = Kbs(server, state, kbs.clock, kbs.platform, *clients)
    try:
        yield pg
    finally:
        pg.close()
        server.stop(grace=0)


def _reason(call: Any) -> str:
    with pytest.raises(KeyBrokerError) as caught:
        call()
    return caught.value.reason


def test_core_flows_on_postgresql(pg_kbs: Kbs, postgres_url: str) -> None:
    kbs = pg_kbs
    dek = kbs.register("sales")
    kbs.admin.grant("sales", "group:analysts")
    kbs.admin.add_member("analysts", "alice")
    alice, rogue = kbs.enclave(), kbs.enclave(OTHER)
    grant = kbs.session("alice", alice)
    assert kbs.fetch("sales", alice, grant).dek == dek
    assert _reason(lambda: kbs.fetch("sales", rogue, kbs.session("alice", rogue))) == "evidence_rejected"
    challenge = kbs.anon.challenge()
    evidence = alice.attest(
        release_report_data(challenge.nonce, alice.public, grant.encode(), dataset="sales", version=None)
    )
    request = dict(
        nonce=challenge.nonce, dataset="sales", enclave_key=alice.public, grant=grant, evidence=evidence.blob
    )
    kbs.anon.release(**request)  # type: ignore[arg-type]
    assert _reason(lambda: kbs.anon.release(**request)) == "nonce_invalid"  # type: ignore[arg-type]
    kbs.admin.remove_member("analysts", "alice")
    assert _reason(lambda: kbs.fetch("sales", alice, grant)) == "not_granted"
    assert _reason(lambda: kbs.register("sales", 1)) == "version_exists"
    kbs.register("sales", 2)
    assert kbs.admin.get_dataset("sales").current_version == 2
    assert kbs.admin.delete_dataset("sales", 2) == [2]
    store = Store.reader(postgres_url)
    try:
        result = verify_audit(store.iter_audit(), kbs.anon.info().signing_public_key)
    finally:
        store.close()
    assert result.ok and result.count >= 12


def test_concurrent_writers_keep_one_chain_on_postgresql(pg_kbs: Kbs, postgres_url: str) -> None:
    kbs = pg_kbs
    kbs.register("sales", policy=policy_for(GOOD))
    errors: list[BaseException] = []

    def writer(index: int) -> None:
        try:
            for i in range(15):
                kbs.admin.grant("sales", f"user:w{index}-{i}")
                if i % 3 == 0:
                    kbs.admin.revoke("sales", f"user:w{index}-{i}")
        except BaseException as error:  # collected and re-raised in the test thread
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(kbs.admin.get_dataset("sales").grants) == 6 * 10
    page = kbs.admin.audit()
    assert [r.seq for r in page.records] == list(range(1, page.head_seq + 1))
    assert verify_audit(page.records, kbs.anon.info().signing_public_key).ok


def test_two_replicas_share_nonces_and_state(pg_kbs: Kbs, postgres_url: str) -> None:
    """A second KBS process on the same database and state folder: a load-balanced pair."""
    kbs = pg_kbs
    kbs.register("sales")
    kbs.admin.grant("sales", "user:alice")
    replica = KbsServer(
        KbsConfig(state_dir=kbs.state, db_url=postgres_url), address="127.0.0.1:0", clock=kbs.clock
    )
    replica.start()
    try:
        other = KbsClient(replica.target)
        alice = kbs.enclave()
        grant = kbs.session("alice", alice)
        challenge = kbs.anon.challenge()  # from replica A ...
        evidence = alice.attest(
            release_report_data(challenge.nonce, alice.public, grant.encode(), dataset="sales", version=None)
        )
        request = dict(
            nonce=challenge.nonce,
            dataset="sales",
            enclave_key=alice.public,
            grant=grant,
            evidence=evidence.blob,
        )
        assert other.release(**request).version == 1  # type: ignore[arg-type]  # ... released by replica B
        assert _reason(lambda: kbs.anon.release(**request)) == "nonce_invalid"  # type: ignore[arg-type]
        kbs.admin.revoke("sales", "user:alice")  # through A; B sees it at its next release
        assert (
            _reason(
                lambda: other.fetch_key(
                    "sales", enclave_secret=alice.secret, grant=grant, attest=alice.attest
                )
            )
            == "not_granted"
        )
        other.close()
    finally:
        replica.stop(grace=0)


def test_clock_is_the_servers(pg_kbs: Kbs) -> None:
    assert isinstance(pg_kbs.clock, FakeClock)
    assert pg_kbs.anon.info().server_time == pg_kbs.clock.now
