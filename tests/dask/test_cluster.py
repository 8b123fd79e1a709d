"""An attested Dask cluster on the sim backend: every node's handshake, a computation over mutual TLS, Dask's
side doors closed, and nothing secret on the host's side of the launch.

Where these tests stand: the nodes are real processes launched through the sim backend with real evidence
(simulated SGX quotes carrying the cluster's controller in CONFIGID), real TLS and a real Dask scheduler and
workers. TEE hardware is missing, so isolation itself is not tested: what "the host sees" is modelled as what
the OS shows another process — argv and environment in /proc, the files the launch wrote, the ports.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from tests.dask.conftest import DaskEnv


def node_pids(cluster: Any) -> dict[str, int]:
    pids = {"scheduler": cluster.scheduler.pid}
    pids.update({str(name): worker.pid for name, worker in cluster.workers.items()})
    return pids


def test_every_node_is_attested_before_it_joins(cluster: Any, dask_env: DaskEnv) -> None:
    records = cluster.attestation
    assert sorted(records) == ["0", "1", "scheduler"]
    for name, record in records.items():
        assert record.role == ("scheduler" if name == "scheduler" else "worker")
        assert record.accepted and record.verdict == "warning" and record.simulated  # sim: not confidential
        assert record.measurement == dask_env.mrenclave  # the kernel's measured image, pinned by its policy
        assert record.controller.startswith("pass:")
        assert record.result is not None and record.result["ok"] is True
        assert record.pid == node_pids(cluster)[name]


def test_a_computation_runs_over_mutual_tls(cluster: Any) -> None:
    with cluster.get_client() as client:
        assert cluster.scheduler_address.startswith("tls://")
        workers = client.scheduler_info()["workers"]
        assert sorted(info["name"] for info in workers.values()) == ["0", "1"]
        assert all(address.startswith("tls://") for address in workers)
        futures = client.map(lambda x: x * x, range(20))
        assert client.submit(sum, futures).result() == sum(x * x for x in range(20))
        # Both workers took part: the graph really crossed the cluster's TLS comms.
        assert len(client.has_what()) == 2


def test_nodes_run_with_dask_side_doors_closed(cluster: Any) -> None:
    def settings() -> dict[str, Any]:
        import dask.config

        return {
            key: dask.config.get(key)
            for key in (
                "distributed.scheduler.http.routes",
                "distributed.worker.http.routes",
                "distributed.worker.memory.target",
                "distributed.worker.memory.spill",
                "distributed.p2p.storage.disk",
                "distributed.comm.require-encryption",
            )
        } | {"config_paths_env": os.environ.get("DASK_CONFIG")}

    def http_port(dask_worker: Any = None, dask_scheduler: Any = None) -> int:
        server = dask_worker if dask_worker is not None else dask_scheduler
        return int(server.http_server.port)

    with cluster.get_client() as client:
        found = [*client.run(settings).values(), client.run_on_scheduler(settings)]
        ports = [*client.run(http_port).values(), client.run_on_scheduler(http_port)]
    for values in found:
        assert values["distributed.scheduler.http.routes"] == []
        assert values["distributed.worker.http.routes"] == []
        assert values["distributed.worker.memory.target"] is False
        assert values["distributed.worker.memory.spill"] is False
        assert values["distributed.p2p.storage.disk"] is False
        assert values["distributed.comm.require-encryption"] is True
        assert "teelab-tee-" in values["config_paths_env"]  # Dask's config folder is the TEE's own scratch
    for port in ports:
        for path in ("/health", "/json/identity.json", "/info/main/workers.html", "/metrics", "/status"):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5)
                raise AssertionError(f"{path} answered on a node's HTTP port")
            except urllib.error.HTTPError as error:
                assert error.code == 404


def _secrets(cluster: Any) -> list[bytes]:
    """What must never be readable on the host: the CA's and the client's private keys, in PEM and DER."""
    found = []
    ca_key = cluster.controller.ca._key  # the test reads the controller's memory to know what to look for
    for form in (serialization.Encoding.PEM, serialization.Encoding.DER):
        found.append(
            ca_key.private_bytes(form, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
    found.append(cluster.controller.identity.secret.private_bytes_raw())
    return found


def test_no_key_in_the_launch_argv_environment_or_files(cluster: Any, dask_env: DaskEnv) -> None:
    secrets = _secrets(cluster)
    for name, pid in node_pids(cluster).items():
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        for blob in (cmdline, environ):
            assert b"PRIVATE KEY" not in blob and b"CERTIFICATE" not in blob, name
            assert not any(secret in blob for secret in secrets), name
        # The only input from the host is the boot request: a nonce, an address, the public G_c.
        variables = dict(line.split(b"=", 1) for line in environ.split(b"\0") if b"=" in line)
        assert b"DASK_INTERNAL_INHERIT_CONFIG" not in variables
        scratch = Path(variables[b"TMPDIR"].decode())
        for path in [p for p in scratch.rglob("*") if p.is_file()]:
            content = path.read_bytes()  # the node's scratch space: no private key of any kind
            assert b"PRIVATE KEY" not in content and not any(s in content for s in secrets), path
    # The data folder holds the simulated platform's own keys; none of the cluster's.
    for path in [p for p in dask_env.data.rglob("*") if p.is_file()]:
        assert not any(secret in path.read_bytes() for secret in secrets), path


def test_a_p2p_shuffle_leaves_no_data_on_disk(cluster: Any, dask_env: DaskEnv) -> None:
    """P2P shuffle storage and spilling are off: the shuffled rows exist only in the nodes' memory."""
    import secrets

    import dask
    import dask.dataframe as dd
    import pandas as pd

    marker = f"plaintext-{secrets.token_hex(8)}"
    frame = pd.DataFrame({"k": [i % 7 for i in range(4000)], "v": [f"{marker}-{i}" for i in range(4000)]})
    with cluster.get_client(), dask.config.set({"dataframe.shuffle.method": "p2p"}):
        shuffled = dd.from_pandas(frame, npartitions=8).shuffle("k", npartitions=4)
        assert len(shuffled.compute()) == 4000
    for name, pid in node_pids(cluster).items():
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        variables = dict(line.split(b"=", 1) for line in environ.split(b"\0") if b"=" in line)
        for path in Path(variables[b"TMPDIR"].decode()).rglob("*"):
            assert not path.is_file() or marker.encode() not in path.read_bytes(), (name, path)


def test_workers_get_the_kernels_key_release_session(cluster: Any) -> None:
    """As the kernel boot does, each worker's boot installs a key-release session over its own E and evidence
    (its key broker section is None here: the controller is a plain process without a session to delegate)."""

    def session() -> str:
        from teelab.sealed_store import notebook

        installed = notebook.installed_session()
        if installed is None:
            return "none"
        return "own evidence, no broker" if installed.key_broker is None else "broker"

    with cluster.get_client() as client:
        assert set(client.run(session).values()) == {"own evidence, no broker"}
        assert client.run_on_scheduler(session) == "none"  # the scheduler reads no data


def test_code_on_a_node_gets_user_evidence_naming_the_cluster_controller(
    cluster: Any, dask_env: DaskEnv
) -> None:
    """As in a kernel: tasks get evidence only over SHA-512("teelab/user/v1" ‖ data), and it names the cluster's
    controller — the controller's own check passes for it."""
    from teelab.enclave_runtime.backend import Evidence
    from teelab.session import user_report_data

    def evidence() -> tuple[dict[str, str], str]:
        import teelab.session

        return teelab.session.attest(b"from a task").to_json(), str(teelab.session.attestation()["verdict"])

    with cluster.get_client() as client:
        answers = [*client.run(evidence).values(), client.run_on_scheduler(evidence)]
    assert len(answers) == 3
    for blob, verdict in answers:
        assert verdict == "warning"  # the controller's verdict on this node, as the bundle carried it
        result = cluster.controller.appraise(Evidence.from_json(blob), user_report_data(b"from a task"))
        assert result.ok and any(c.name == "controller" and c.passed for c in result.checks)
