"""A TeeCluster behaves as users of LocalCluster expect: a worker killed with SIGKILL is replaced by a freshly
attested one, and scaling up and down starts and ends attested nodes.

Where this test stands: SIGKILL of the node's process is what a host can do to a TEE at any time; the
replacement is a new sim-backend launch with its own evidence, keys and certificate (hardware isolation itself
is not tested).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

from teelab.dask import TeeCluster
from tests.dask.conftest import DaskEnv

DEADLINE = 120.0


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {DEADLINE:.0f} s: {what}")
        time.sleep(0.2)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


def test_a_killed_worker_is_replaced_and_the_cluster_scales(dask_env: DaskEnv) -> None:
    with (
        TeeCluster(n_workers=1, backend="sim", policy=dask_env.policy) as cluster,
        cluster.get_client() as client,
    ):

        def names() -> list[str]:
            return sorted(str(w["name"]) for w in client.scheduler_info()["workers"].values())

        victim = cluster.workers["0"].pid
        os.kill(victim, signal.SIGKILL)
        wait_for(
            lambda: "0" in cluster.workers and cluster.workers["0"].pid not in (None, victim),
            "a new worker 0",
        )
        wait_for(lambda: names() == ["0"], "the replacement registered")
        starts = [r for r in cluster.attestation_history if r.name == "0"]
        assert starts[0].pid == victim and len(starts) == 2 and starts[1].accepted
        assert cluster.attestation["0"].pid == cluster.workers["0"].pid != victim
        assert client.submit(lambda x: x + 1, 41).result() == 42

        cluster.scale(2)
        wait_for(lambda: names() == ["0", "1"], "scaled up to two workers")
        assert cluster.attestation["1"].accepted and cluster.attestation["1"].role == "worker"
        leaving = cluster.workers["1"].pid
        cluster.scale(1)
        wait_for(lambda: names() == ["0"], "scaled down to one worker")
        wait_for(lambda: not alive(leaving), "the removed worker's process ended")
        pids = [cluster.scheduler.pid, cluster.workers["0"].pid]
    for pid in pids:
        wait_for(lambda pid=pid: not alive(pid), "every node ended with the cluster")  # type: ignore[misc]
