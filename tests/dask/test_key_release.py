"""Workers of a TeeCluster release data keys themselves: the controller's key-release session (here this
process plays the attested notebook kernel, as the kernel boot installs one) delegates a grant to each
attested worker's E_w, bound to the cluster's controller; the worker reads its parts with its own evidence.

Where this test stands: a real key broker (gRPC on loopback), real sealed Parquet parts, real sim-backend
worker processes whose evidence carries the cluster's controller in CONFIGID. The kernel here is a simulated
enclave session inside the test process; TEE isolation itself is not tested.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from teelab.dask import TeeCluster
from teelab.enclave_runtime.sim.platform import SimPlatform, default_path
from teelab.protocols.session import KeyBrokerSection
from teelab.sealed_store import notebook
from teelab.sealed_store.dask import forget_keys, read_dataset
from teelab.sealed_store.kbs.protocol import enclave_key_sha256
from teelab.sealed_store.seal import seal_dataset
from teelab.sealed_store.storage import DatasetStore
from tests.dask.conftest import DaskEnv
from tests.sealed_store.conftest import mixed_frame
from tests.sealed_store.kbs.conftest import GOOD, FakeClock, Kbs, open_kbs, policy_for

GATEWAY = hashlib.sha256(b"the notebook gateway's identity key").digest()


@pytest.fixture
def kernel_session(dask_env: DaskEnv, tmp_path: Path) -> Iterator[tuple[Kbs, KeyBrokerSection, bytes]]:
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    platform = SimPlatform.open(default_path(), now=clock.now - timedelta(hours=1))  # the nodes' platform
    kbs = open_kbs(tmp_path / "kbs-state", clock, platform)
    try:
        sealed = seal_dataset(
            mixed_frame(3000),
            name="sales",
            version=1,
            out=tmp_path / "sealed",
            part_rows=1000,
            progress=False,
        )
        store = DatasetStore((tmp_path / "store").as_uri())
        store.upload(sealed.dataset, progress=False)
        kbs.admin.register_dataset(
            "sales",
            1,
            manifest_sha256=sealed.dataset.manifest_sha256,
            dek=sealed.dek,
            # The kernel's image (GOOD, simulated in this process) and the cluster nodes' (the kernel image).
            release_policy_toml=policy_for(GOOD, dask_env.mrenclave),
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
        yield kbs, section, kernel.public
    finally:
        notebook._release = None
        forget_keys()
        kbs.close()
        kbs.server.stop(grace=0)


def test_each_worker_releases_the_keys_of_the_parts_it_reads(
    dask_env: DaskEnv, kernel_session: tuple[Kbs, KeyBrokerSection, bytes]
) -> None:
    kbs, section, kernel_key = kernel_session
    with TeeCluster(n_workers=2, policy=dask_env.policy) as cluster, cluster.get_client() as client:

        def worker_session() -> tuple[str | None, str | None]:
            installed = notebook.installed_session()
            assert installed is not None and installed.key_broker is not None
            return installed.key_broker.grant, installed.key_broker.user

        grants = client.run(worker_session)
        assert len({grant for grant, _ in grants.values()}) == 2  # each worker its own grant
        assert all(grant and grant != section.grant and user == "alice" for grant, user in grants.values())

        frame = read_dataset("sales", columns=["city", "amount"]).compute()
        assert len(frame) == 3000
    entries = [r.entry() for r in kbs.admin.audit().records]
    released = [e["ekh"] for e in entries if e["event"] == "release" and e["outcome"] == "released"]
    # One release to the kernel (it authenticates the manifest to build the graph); the parts' to workers.
    assert released.count(enclave_key_sha256(kernel_key)) == 1
    assert len(released) >= 2 and len(set(released) - {enclave_key_sha256(kernel_key)}) >= 1
