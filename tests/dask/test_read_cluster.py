"""A sealed dataset read end to end on an attested ``TeeCluster`` (sim backend: scheduler + 2 one-thread workers).

This process is the notebook kernel: a simulated enclave of the kernel image with a session grant, bound to
a gateway's controller, from a real key broker on loopback. When ``TeeCluster`` admits a worker it asks this
process's session for a grant delegated to the worker's attested key (``sealed_store.dask_keys``) and seals it
into the worker's bundle; each worker then obtains the data key itself with its own evidence. The audit log
shows every release went to a worker that read a part, with that worker's own delegated grant.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dask.dataframe as dd
import pandas as pd
import pytest

from teelab.enclave_runtime.sim.platform import SimPlatform, default_path
from teelab.protocols.session import KeyBrokerSection
from teelab.sealed_store import notebook
from teelab.sealed_store.dask import forget_keys, read_dataset
from teelab.sealed_store.kbs.protocol import enclave_key_sha256
from teelab.sealed_store.seal import seal_dataset
from teelab.sealed_store.storage import DatasetStore
from tests.dask.conftest import DaskEnv
from tests.sealed_store.conftest import mixed_frame
from tests.sealed_store.kbs.conftest import FakeClock, Kbs, open_kbs, policy_for

GATEWAY = hashlib.sha256(b"the gateway's identity key").digest()

pytestmark = pytest.mark.slow
DEADLINE = 120.0


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"not within {DEADLINE:.0f} s"
        time.sleep(0.2)


@pytest.fixture
def kernel(dask_env: DaskEnv, tmp_path: Path) -> Iterator[tuple[Kbs, pd.DataFrame]]:
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    # The platform the sim backend launches the nodes on, so the broker trusts their quotes.
    platform = SimPlatform.open(default_path(), now=clock.now - timedelta(hours=1))
    kbs = open_kbs(tmp_path / "kbs-state", clock, platform)
    try:
        frame = mixed_frame(4000)
        sealed = seal_dataset(
            frame,
            name="sales",
            version=1,
            out=tmp_path / "sealed",
            part_rows=500,
            row_group_rows=250,
            progress=False,
        )
        store = DatasetStore((tmp_path / "store").as_uri())
        store.upload(sealed.dataset, progress=False)
        kbs.admin.register_dataset(
            "sales",
            1,
            manifest_sha256=sealed.dataset.manifest_sha256,
            dek=sealed.dek,
            release_policy_toml=policy_for(dask_env.mrenclave),
            owner="olivia",
        )
        kbs.admin.grant("sales", "user:alice")
        enclave = kbs.enclave(dask_env.mrenclave, controller=GATEWAY)
        grant = kbs.as_user("alice").issue_session_grant(enclave_key=enclave.public, controller=GATEWAY)
        section = KeyBrokerSection(
            address=kbs.server.target,
            store=store.url,
            user="alice",
            kbs_key=kbs.anon.kbs_public_key(),
            grant=grant.token,
            grant_expires_at=grant.expires_at,
        )
        notebook.install_key_release(notebook.ReaderSession(section, enclave.secret, enclave.attest))
        yield kbs, frame
    finally:
        notebook._release = None
        forget_keys()
        kbs.close()
        kbs.server.stop(grace=0)


def test_each_attested_worker_gets_its_own_keys_and_reads_its_parts(
    kernel: tuple[Kbs, pd.DataFrame], dask_env: DaskEnv
) -> None:
    from distributed import get_worker

    from teelab.dask import TeeCluster

    kbs, frame = kernel

    def _worker_enclave_key() -> str:
        """Runs in a worker: the hash of the enclave key its boot installed for key releases (public)."""
        from cryptography.hazmat.primitives import serialization

        from teelab.sealed_store import notebook as reader

        session = reader.installed_session()
        assert session is not None and session.key_broker is not None and session.key_broker.grant
        public = session.enclave_secret.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return hashlib.sha256(public).hexdigest()

    with (
        TeeCluster(n_workers=2, threads_per_worker=1, backend="sim", policy=dask_env.policy) as cluster,
        cluster.get_client() as client,
    ):
        worker_ekh = client.run(_worker_enclave_key)
        delegations = {
            e["ekh"]: e for e in (r.entry() for r in kbs.admin.audit().records) if e["event"] == "delegate"
        }
        # Each admitted worker got a grant of its own, delegated from the kernel's session for the same user.
        assert set(worker_ekh.values()) <= set(delegations) and len(set(worker_ekh.values())) == 2
        assert {delegations[k]["outcome"] for k in worker_ekh.values()} == {"issued"}
        assert {delegations[k]["user"] for k in worker_ekh.values()} == {"alice"}
        before = kbs.admin.audit().records[-1].seq

        df = read_dataset("sales", columns=["city", "amount"])
        assert df.npartitions == 8

        def where(part: pd.DataFrame) -> pd.DataFrame:
            return pd.DataFrame({"worker": [get_worker().address], "rows": [len(part)]})

        placed = df.map_partitions(where, meta={"worker": "object", "rows": "int64"}).compute()
        got = df.compute().reset_index(drop=True)
        expected = dd.from_pandas(frame[["city", "amount"]], npartitions=1).compute()
        pd.testing.assert_frame_equal(got, expected, check_categorical=False)
        total = df.groupby("city", observed=True).amount.sum().compute()
        assert total.sum() == pytest.approx(frame.amount.sum())

        entries = [r.entry() for r in kbs.admin.audit().records if r.seq > before]
        released = [e for e in entries if e["event"] == "release" and e["outcome"] == "released"]
        kernel_ekh = enclave_key_sha256(
            notebook.current_session().enclave_secret.public_key().public_bytes_raw()
        )
        to_workers = [e for e in released if e["ekh"] != kernel_ekh]
        readers = {worker_ekh[address] for address in set(placed.worker)}
        # One release per worker that read a part (its cache serves its other parts and later queries), each
        # with that worker's own delegated grant, to that worker's own key; none to anyone else.
        assert sorted(e["ekh"] for e in to_workers) == sorted(readers)
        for entry in to_workers:
            assert entry["grant_id"] == delegations[entry["ekh"]]["grant_id"]
            assert entry["user"] == "alice" and entry["mrenclave"] == dask_env.mrenclave
        assert int(placed.rows.sum()) == len(frame)
        assert not [e for e in entries if e["outcome"] == "denied"]

        # A worker killed and replaced: the new one is attested afresh, gets a grant of its own, and its
        # first part costs it one release of its own; the kernel's session delegates again, nobody else.
        victim = cluster.workers["0"].pid
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: "0" in cluster.workers and cluster.workers["0"].pid not in (None, victim))
        wait_for(lambda: len(client.scheduler_info()["workers"]) == 2)
        replaced = client.run(_worker_enclave_key)
        new_keys = set(replaced.values()) - set(worker_ekh.values())
        assert len(new_keys) == 1
        before = kbs.admin.audit().records[-1].seq
        again = df.map_partitions(where, meta={"worker": "object", "rows": "int64"}).compute()
        entries = [r.entry() for r in kbs.admin.audit().records if r.seq > before]
        fresh = [e for e in entries if e["event"] == "release" and e["outcome"] == "released"]
        readers = {replaced[address] for address in set(again.worker)}
        newcomers = [e for e in fresh if e["ekh"] in new_keys]
        assert len(newcomers) == (1 if new_keys <= readers else 0)
        assert all(e["ekh"] in readers for e in fresh) and int(again.rows.sum()) == len(frame)
        delegated = [r.entry() for r in kbs.admin.audit().records if r.entry()["event"] == "delegate"]
        assert delegated[-1]["ekh"] in new_keys and delegated[-1]["outcome"] == "issued"
