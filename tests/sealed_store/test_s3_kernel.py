"""A sealed dataset on S3, end to end: the owner uploads it to a real S3 API server (moto's, on loopback), the
gateway hands the store URL to an attested (simulated-TEE) kernel inside its sealed bundle, and the kernel lists
nothing itself but reads and decrypts the parts from S3 — with the storage credentials never on the host's view
of the kernel (its argv, environment, or what it prints to the host)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from teelab.sealed_store.storage import DatasetStore, DatasetVersion

from ..kernel.conftest import KernelEnv, broker, kernel_env, kernel_env_session  # noqa: F401 — fixtures
from ..kernel.test_datasets import FRAME, publish, read_in_kernel
from .test_s3 import SECRET, new_bucket, s3_endpoint, s3_store_url  # noqa: F401 — fixtures

pytestmark = pytest.mark.slow


def _host_view(pid: int) -> bytes:
    """What the host sees of a process: its command line and environment."""
    proc = Path(f"/proc/{pid}")
    return (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()


def test_a_kernel_reads_a_dataset_from_s3_and_the_host_never_sees_the_credentials(
    s3_endpoint: str,  # noqa: F811
    kernel_env: KernelEnv,  # noqa: F811
    broker: object,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from jupyter_client.manager import KernelManager
    from traitlets.config import Config

    from teelab.sealed_store import services
    from teelab.sealed_store.kbs.identity import issue_local_token
    from teelab.sealed_store.owner import DataOwner

    from ..kernel.conftest import KERNEL

    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    url = s3_store_url(s3_endpoint, new_bucket(s3_endpoint), prefix="teams/risk")
    # The gateway's and the owner's store (their own machines: trusted with the credentials).
    monkeypatch.setenv("TEELAB_STORE", url)
    with DataOwner.connect(token_file=services.admin_token_file(), owner="dana") as data_owner:
        publish(data_owner, kernel_env, "claims", "user:alice")
    assert DatasetStore(url).list() == [DatasetVersion("claims", 1)]

    # The gateway's setting (its $TEELAB_STORE too, still set here): the kernel gets the URL in its sealed
    # bundle only, never from anything the host passes it.
    token = issue_local_token(services.kbs_state_dir(), "alice")
    settings = {"kbs_user": "alice", "kbs_token_file": str(token), "dataset_store": url}
    km = KernelManager(kernel_name=KERNEL, config=Config({"TeeProvisioner": settings}))
    km.start_kernel()
    try:
        content, out = read_in_kernel(
            km,
            "df = read_dataset('claims', columns=['region', 'amount'], filters=[('region', '==', 'EU')])\n"
            "print(len(df), df.amount.sum())\n"
            "import teelab.sealed_store.notebook as n\n"
            "print(n._release.key_broker.store.split('?')[0])",
        )
        process = km.provisioner.process  # type: ignore[union-attr]
        assert process is not None
        seen_by_host = _host_view(process.pid)
        host_output = "".join(km.provisioner.host_output).encode()  # type: ignore[union-attr]
    finally:
        km.shutdown_kernel(now=True)
    assert content["status"] == "ok", out
    eu = FRAME[FRAME.region == "EU"]
    count, total, where = out.split()
    assert (int(count), float(total)) == (len(eu), eu.amount.sum())
    assert where == f"s3://{DatasetStore(url).root}"
    for secret in (SECRET.encode(), b"te%2Bst", b"Secret+Key"):
        assert secret not in seen_by_host and secret not in host_output
