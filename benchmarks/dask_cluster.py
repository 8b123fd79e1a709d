"""Cluster start (issue 16): time to an attested 2-worker ``TeeCluster`` (sim) against a plain ``LocalCluster``
with the same workers, threads and TLS, each measured to the first task result on the new cluster.

Both arms: a scheduler and 2 worker processes x 1 thread, mutual TLS (``LocalCluster`` with per-cluster
certificates from ``Security.temporary()``), no dashboard. ``TeeCluster`` additionally launches each node
through the sim backend (trusted files checked against the measured image), attests it, certifies a key it made
and seals its bundle. Runs alternate between the arms; medians are reported. Four processes on two cores:
indicative only.
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


if __name__ == "__main__":
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else RUNS
    print(run(runs))
