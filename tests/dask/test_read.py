"""Sealed datasets as Dask DataFrames (teelab.sealed_store.dask), against a real key broker on loopback.

The kernel side runs in this process with a key-release session over a simulated SGX enclave, as the kernel
boot installs one. Workers are either Dask's synchronous scheduler (this process) or real worker processes
of a ``distributed`` cluster, each given its own enclave key, its own simulated enclave (launched with the
cluster's controller) and a grant the kernel delegated to it — what ``teelab.dask.TeeCluster``'s boot
installs. The audit log then shows which enclave received each key.
"""

from __future__ import annotations

import contextlib
import hashlib
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cloudpickle
import dask
import dask.dataframe as dd
import pandas as pd
import pytest
from cryptography.hazmat.primitives import serialization

from teelab.enclave_runtime.sim.platform import SimPlatform, default_path
from teelab.protocols.session import KeyBrokerSection
from teelab.sealed_store import notebook
from teelab.sealed_store.dask import PartRef, SealedPartReader, forget_keys, read_dataset
from teelab.sealed_store.dask_keys import delegate_grant
from teelab.sealed_store.errors import ManifestMismatchError, QueryError
from teelab.sealed_store.kbs.protocol import enclave_key_sha256
from teelab.sealed_store.reader import SealedReader
from teelab.sealed_store.seal import SealResult, seal_dataset
from teelab.sealed_store.storage import DatasetStore
from tests.sealed_store.conftest import mixed_frame
from tests.sealed_store.kbs.conftest import GOOD, OTHER, Enclave, FakeClock, Kbs, open_kbs, policy_for

GATEWAY = hashlib.sha256(b"the gateway's identity key").digest()
CLUSTER = hashlib.sha256(b"the kernel's cluster controller key").digest()


@dataclass
class World:
    kbs: Kbs
    store: DatasetStore
    sealed: SealResult
    frame: pd.DataFrame
    kernel: Enclave
    section: KeyBrokerSection

    @property
    def dek(self) -> bytes:
        return self.sealed.dek

    def releases(self) -> list[dict[str, object]]:
        entries = (r.entry() for r in self.kbs.admin.audit().records)
        return [e for e in entries if e["event"] == "release" and e["outcome"] == "released"]


@contextlib.contextmanager
def built_world(tmp_path: Path, store: DatasetStore) -> Iterator[World]:
    """'sales' v1 (3 parts) sealed into ``store`` and registered with a real broker; this process is alice's
    attested kernel (a key-release session over a simulated enclave launched by the gateway's controller)."""
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    platform = SimPlatform.open(default_path(), now=clock.now - timedelta(hours=1))
    kbs = open_kbs(tmp_path / "kbs-state", clock, platform)
    try:
        frame = mixed_frame(3000)
        sealed = seal_dataset(
            frame,
            name="sales",
            version=1,
            out=tmp_path / "sealed",
            part_rows=1000,
            row_group_rows=250,
            progress=False,
        )
        store.upload(sealed.dataset, progress=False)
        kbs.admin.register_dataset(
            "sales",
            1,
            manifest_sha256=sealed.dataset.manifest_sha256,
            dek=sealed.dek,
            release_policy_toml=policy_for(GOOD),
            owner="olivia",
        )
        kbs.admin.grant("sales", "user:alice")
        kernel = kbs.enclave(controller=GATEWAY)
        grant = kbs.as_user("alice").issue_session_grant(enclave_key=kernel.public, controller=GATEWAY)
        section = KeyBrokerSection(
            address=kbs.server.target,
            store=store.url,
            user="alice",
            kbs_key=kbs.anon.kbs_public_key(),
            grant=grant.token,
            grant_expires_at=grant.expires_at,
        )
        notebook.install_key_release(notebook.ReaderSession(section, kernel.secret, kernel.attest))
        yield World(kbs, store, sealed, frame, kernel, section)
    finally:
        notebook._release = None
        forget_keys()
        kbs.close()
        kbs.server.stop(grace=0)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with built_world(tmp_path, DatasetStore((tmp_path / "store").as_uri())) as made:
        yield made


def test_a_sealed_dask_read_is_the_pandas_read_one_partition_per_part(world: World) -> None:
    df = read_dataset("sales")
    assert df.npartitions == 3
    expected = notebook.read_dataset("sales")
    result = df.compute(scheduler="sync")
    # Each partition keeps its part's own index, as dd.read_parquet does with one file per partition.
    assert list(result.index[:1001:500]) == [0, 500, 0]
    # Dask's own string conversion (pyarrow strings) applied to the pandas read, as to any Dask frame.
    expected = dd.from_pandas(expected, npartitions=1).compute()
    pd.testing.assert_frame_equal(result.reset_index(drop=True), expected, check_categorical=False)
    assert list(df.dtypes.index) == list(expected.columns)
    assert notebook.read_dataset("sales", engine="dask").npartitions == 3


def test_the_graph_is_built_from_the_manifest_and_decrypts_nothing_on_a_worker(world: World) -> None:
    df = read_dataset("sales", columns=["city", "amount"])
    # One release, the kernel's own (to authenticate the manifest); the meta came from it, not from a task.
    assert [e["ekh"] for e in world.releases()] == [enclave_key_sha256(world.kernel.public)]
    assert list(df._meta.columns) == ["city", "amount"] and len(df._meta) == 0
    expected = dd.from_pandas(world.frame[["city", "amount"]], npartitions=1).compute()
    got = df.compute(scheduler="sync").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected, check_categorical=False)


def test_building_the_graph_and_its_meta_opens_no_part(world: World) -> None:
    """The meta comes from the manifest's encrypted schema: with every part unreadable (zeros of the same
    size, so the store's listing still matches the manifest), the graph and its meta build; restored, it
    computes."""
    from teelab.sealed_store.errors import PartTamperedError

    originals: dict[str, bytes] = {}
    for k in range(1, len(world.sealed.dataset.manifest.parts) + 1):
        path = world.store.part_path("sales", 1, k)
        originals[path] = bytes(world.store.fs.cat_file(path))
        world.store.fs.pipe_file(path, bytes(len(originals[path])))
    df = read_dataset("sales", columns=["city", "amount"], filters=[("small", "<", 50)])
    assert df.npartitions == 3 and list(df._meta.columns) == ["city", "amount"] and len(df._meta) == 0
    assert str(df._meta.amount.dtype) == "float64"
    with pytest.raises(PartTamperedError, match="part-0000"):  # the parts really were unreadable
        df.compute(scheduler="sync")
    for path, data in originals.items():
        world.store.fs.pipe_file(path, data)
    got = df.compute(scheduler="sync").reset_index(drop=True)
    frame = world.frame[world.frame.small < 50][["city", "amount"]].reset_index(drop=True)
    expected = dd.from_pandas(frame, npartitions=1).compute()
    pd.testing.assert_frame_equal(got, expected, check_categorical=False)


def test_no_key_ever_enters_the_task_graph(world: World) -> None:
    df = read_dataset("sales", filters=[("small", "<", 50)])
    query = df[df.amount > 100].groupby("city", observed=True).amount.sum()
    secrets = [
        world.dek,
        world.dek.hex().encode(),
        world.section.grant.encode() if world.section.grant else b"?",
        world.kernel.secret.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        ),
    ]
    for graph in (df.__dask_graph__(), query.__dask_graph__(), query.optimize().__dask_graph__()):
        blob = cloudpickle.dumps(dict(graph))
        for secret in secrets:
            assert secret not in blob
    # What a task holds is the dataset, version, manifest digest, part and query, and nothing else.
    blob = cloudpickle.dumps(dict(df.__dask_graph__()))
    assert world.sealed.dataset.manifest_sha256.encode() in blob and b"part-" in blob
    reader = SealedPartReader("sales", 1, world.sealed.dataset.manifest_sha256, None)
    assert set(vars(reader)) == {"dataset", "version", "manifest_sha256", "filters", "arrow_strings"}
    assert pickle.loads(pickle.dumps(reader)) == reader


def test_projection_and_filters_reach_the_part_reads(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[int, object, object]] = []
    original = SealedReader.read_part_pandas

    def spy(self: SealedReader, k: int, columns: Any = None, filters: Any = None, **kw: Any) -> pd.DataFrame:
        asked.append((k, columns, filters))
        return original(self, k, columns, filters, **kw)

    monkeypatch.setattr(SealedReader, "read_part_pandas", spy)
    df = read_dataset("sales", filters=[("small", "<", 10)])
    got = df["amount"].compute(scheduler="sync")
    expected = world.frame[world.frame.small < 10]["amount"]
    assert sorted(got) == sorted(expected) and len(got) > 0
    # The column selection was pushed into the reads: each part decrypted only the column asked for.
    assert sorted(asked) == [(k, ["amount"], [("small", "<", 10)]) for k in (1, 2, 3)]


def test_a_bad_query_fails_in_the_kernel_before_any_task(world: World) -> None:
    with pytest.raises(QueryError, match="no such column"):
        read_dataset("sales", columns=["amount", "nope"])
    with pytest.raises(QueryError, match="invalid filters"):
        read_dataset("sales", filters=[("nope", "==", 1)])


def test_a_task_for_another_manifest_is_refused(world: World) -> None:
    read_dataset("sales")
    forged = SealedPartReader("sales", 1, hashlib.sha256(b"another manifest").hexdigest())
    with pytest.raises(ManifestMismatchError):
        forged(PartRef(1, world.sealed.dataset.manifest.parts[0].name))


def _worker_sections(world: World, count: int) -> list[tuple[bytes, Any, KeyBrokerSection]]:
    """What the kernel sends each worker it admitted: its E_w secret travels only because this test plays
    the worker's TEE too (a real worker makes E_w itself and never lets it out)."""
    shipped = []
    for _ in range(count):
        worker = world.kbs.enclave(controller=CLUSTER)
        section = delegate_grant(worker.public, CLUSTER)
        assert section is not None and section.grant != world.section.grant
        secret = worker.secret.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        shipped.append((secret, worker.runtime.identity, section))
    return shipped


def test_delegate_grant_without_a_session_is_none(world: World) -> None:
    notebook._release = None
    assert delegate_grant(bytes(32), CLUSTER) is None


@pytest.mark.slow
def test_each_worker_gets_its_own_key_and_reads_only_with_it(world: World) -> None:
    distributed = pytest.importorskip("distributed")

    def install(secret: bytes, identity: Any, section: KeyBrokerSection) -> str:
        # Runs in the worker process: its own enclave (the cluster's controller in CONFIGID) and session.
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        from teelab.enclave_runtime.sim.platform import SimPlatform
        from teelab.enclave_runtime.sim.runtime import SimRuntime
        from teelab.sealed_store import dask as sealed_dask
        from teelab.sealed_store import notebook as reader

        runtime = SimRuntime(identity, SimPlatform.load(identity.platform))
        key = X25519PrivateKey.from_private_bytes(secret)
        reader.install_key_release(reader.ReaderSession(section, key, runtime.evidence))
        sealed_dask.forget_keys()
        return enclave_key_sha256(key.public_key().public_bytes_raw())

    with (
        dask.config.set({"distributed.worker.daemon": False}),
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, protocol="tcp://"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        workers = sorted(client.scheduler_info()["workers"])
        shipped = _worker_sections(world, len(workers))
        ekh_of = {
            address: client.run(install, *shipped[i], workers=[address])[address]
            for i, address in enumerate(workers)
        }
        before = len(world.releases())
        df = read_dataset("sales")
        assert len(world.releases()) == before + 1  # the kernel's: learning the schema decrypts no part

        def where(part: pd.DataFrame) -> pd.DataFrame:
            return pd.DataFrame({"worker": [distributed.get_worker().address], "rows": [len(part)]})

        placed = df.map_partitions(where, meta={"worker": "object", "rows": "int64"}).compute()
        total = df.amount.sum().compute()
        assert total == pytest.approx(world.frame.amount.sum())
        readers = set(placed.worker)
        released = [e for e in world.releases()[before + 1 :]]
        # Each worker that read a part got the key itself, once (its cache serves its further parts), with
        # its own delegated grant; no release went to an enclave that read nothing.
        assert sorted(e["ekh"] for e in released) == sorted(ekh_of[w] for w in readers)
        assert {e["grant_id"] for e in released}.isdisjoint({world.section.grant})
        assert int(placed.rows.sum()) == len(world.frame)
        # A worker holding a grant that is not its own (the kernel's, bound to the kernel's E) gets nothing,
        # and the broker's refusal reaches the notebook with its reason.
        secret, identity, _ = shipped[0]
        client.run(install, secret, identity, world.section)
        from teelab.errors import KeyBrokerError

        with pytest.raises(KeyBrokerError) as refused:
            df.amount.sum().compute()
        assert refused.value.reason == "grant_invalid"


def test_a_worker_of_another_image_gets_nothing(world: World) -> None:
    worker = world.kbs.enclave(OTHER, controller=CLUSTER)
    section = delegate_grant(worker.public, CLUSTER)
    assert section is not None
    df = read_dataset("sales")
    notebook.install_key_release(notebook.ReaderSession(section, worker.secret, worker.attest))
    forget_keys()
    from teelab.errors import KeyBrokerError

    with pytest.raises(KeyBrokerError, match="refused") as refused:
        df.compute(scheduler="sync")
    assert refused.value.reason == "evidence_rejected"


def test_a_part_tampered_after_the_graph_was_built_fails_its_task(world: World) -> None:
    from teelab.sealed_store.errors import PartTamperedError

    df = read_dataset("sales")
    path = world.store.part_path("sales", 1, 2)
    data = bytearray(world.store.fs.cat_file(path))
    data[len(data) // 2] ^= 0x01  # one bit inside a data page of part 2
    world.store.fs.pipe_file(path, bytes(data))
    assert len(df.partitions[0].compute(scheduler="sync")) == 1000  # part 1 still reads
    with pytest.raises(PartTamperedError, match="part-00002") as tampered:
        df.compute(scheduler="sync")
    assert pickle.loads(pickle.dumps(tampered.value)).args == tampered.value.args
