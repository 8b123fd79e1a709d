"""Cluster start (issue 16): time to an attested 2-worker ``TeeCluster`` (sim) against a plain ``LocalCluster``
with the same workers, threads and TLS, each measured to the first task result on the new cluster.

Both arms: a scheduler and 2 worker processes x 1 thread, mutual TLS (``LocalCluster`` with per-cluster
certificates from ``Security.temporary()``), no dashboard. ``TeeCluster`` additionally launches each node
through the sim backend (trusted files checked against the measured image), attests it, certifies a key it made
and seals its bundle. Runs alternate between the arms; medians are reported. Four processes on two cores:
indicative only. ``python benchmarks/dask_cluster.py remote [runs]``: the TeeCluster with each worker on a host
agent against the local one (median of 3 by default).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import isolated_teelab, write_result  # noqa: E402

RUNS = 5
WORKERS = 2
THREADS = 1


def _tee_start(policy: Path) -> tuple[float, float]:
    from teelab.dask import TeeCluster

    start = time.perf_counter()
    cluster = TeeCluster(n_workers=WORKERS, threads_per_worker=THREADS, backend="sim", policy=policy)
    with cluster.get_client() as client:
        assert client.submit(sum, [1, 2, 3]).result() == 6
    started = time.perf_counter() - start
    start = time.perf_counter()
    cluster.close()
    return started, time.perf_counter() - start


def _plain_start() -> tuple[float, float]:
    from distributed import LocalCluster, Security

    start = time.perf_counter()
    cluster = LocalCluster(
        n_workers=WORKERS,
        threads_per_worker=THREADS,
        processes=True,
        protocol="tls",
        security=Security.temporary(),
        dashboard_address=None,
    )
    with cluster.get_client() as client:
        assert client.submit(sum, [1, 2, 3]).result() == 6
    started = time.perf_counter() - start
    start = time.perf_counter()
    cluster.close()
    return started, time.perf_counter() - start


def run(runs: int = RUNS) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as scratch, isolated_teelab(Path(scratch)):
        from teelab.kernel.kernelspec import install

        policy = install(backend="sim", user=True).policy_file
        tee: list[tuple[float, float]] = []
        plain: list[tuple[float, float]] = []
        _plain_start(), _tee_start(policy)  # warm both (imports, the hash cache)
        for _ in range(runs):
            plain.append(_plain_start())
            tee.append(_tee_start(policy))
    tee_start = statistics.median(s for s, _ in tee)
    plain_start = statistics.median(s for s, _ in plain)
    result: dict[str, object] = {
        "config": {
            "workers": WORKERS,
            "threads_per_worker": THREADS,
            "runs": runs,
            "tls": "mutual TLS in both arms",
            "tee": "teelab.dask.TeeCluster, sim backend: scheduler + workers launched, attested, certified",
            "plain": "distributed.LocalCluster(processes=True, protocol='tls', Security.temporary())",
        },
        "tee_start_seconds_median": round(tee_start, 2),
        "plain_start_seconds_median": round(plain_start, 2),
        "start_ratio": round(tee_start / plain_start, 2),
        "tee_close_seconds_median": round(statistics.median(c for _, c in tee), 2),
        "plain_close_seconds_median": round(statistics.median(c for _, c in plain), 2),
        "tee_start_seconds": [round(s, 2) for s, _ in tee],
        "plain_start_seconds": [round(s, 2) for s, _ in plain],
    }
    write_result("dask_cluster", result)
    return result


def _remote_start(policy: Path, hosts: list[str], ca: bytes) -> tuple[float, float]:
    from remote_hosts import TOKEN

    from teelab.dask import AgentCredentials, TeeCluster

    start = time.perf_counter()
    cluster = TeeCluster(
        n_workers=WORKERS,
        threads_per_worker=THREADS,
        backend="sim",
        policy=policy,
        hosts=hosts,
        host_credentials=AgentCredentials(token=TOKEN, ca=ca),
    )
    with cluster.get_client() as client:
        assert client.submit(sum, [1, 2, 3]).result() == 6
        assert sorted(str(w.where) for w in cluster.workers.values()) == sorted(hosts)
    started = time.perf_counter() - start
    start = time.perf_counter()
    cluster.close()
    return started, time.perf_counter() - start


def run_remote(runs: int = 3) -> dict[str, object]:
    """The same start with each worker on its own host agent (TLS, another loopback address; the scheduler
    here) against the local TeeCluster, alternating."""
    from remote_hosts import _agents

    with tempfile.TemporaryDirectory() as scratch, isolated_teelab(Path(scratch)):
        from teelab.kernel.kernelspec import install

        policy = install(backend="sim", user=True).policy_file
        local: list[tuple[float, float]] = []
        remote: list[tuple[float, float]] = []
        with _agents(Path(scratch), WORKERS, 4) as hosts:
            ca = (Path(scratch) / "ca.pem").read_bytes()
            _tee_start(policy), _remote_start(policy, hosts, ca)  # warm both
            for _ in range(runs):
                local.append(_tee_start(policy))
                remote.append(_remote_start(policy, hosts, ca))
    local_start = statistics.median(s for s, _ in local)
    remote_start = statistics.median(s for s, _ in remote)
    result: dict[str, object] = {
        "config": {
            "workers": WORKERS,
            "threads_per_worker": THREADS,
            "runs": runs,
            "local": "TeeCluster, sim backend, every node launched by this process",
            "remote": "TeeCluster, sim backend, each worker on its own host agent (grpcs, 127.0.0.2/3)",
        },
        "local_start_seconds_median": round(local_start, 2),
        "remote_start_seconds_median": round(remote_start, 2),
        "start_ratio": round(remote_start / local_start, 2),
        "local_close_seconds_median": round(statistics.median(c for _, c in local), 2),
        "remote_close_seconds_median": round(statistics.median(c for _, c in remote), 2),
        "local_start_seconds": [round(s, 2) for s, _ in local],
        "remote_start_seconds": [round(s, 2) for s, _ in remote],
    }
    write_result("dask_cluster_remote", result)
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["remote"]:
        print(run_remote(int(sys.argv[2]) if len(sys.argv) > 2 else 3))
    else:
        runs = int(sys.argv[1]) if len(sys.argv) > 1 else RUNS
        print(run(runs))
