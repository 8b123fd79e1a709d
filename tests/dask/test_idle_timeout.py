"""A cluster whose controller is gone ends by itself: the scheduler closes after ``idle_timeout`` with no client
connected and no task (Dask's idle timeout, set from the sealed bundle), and its workers end with it; a client
that is connected but idle keeps it open.

Where this test stands: real sim-backend nodes. A crashed controller is, for the scheduler, a client connection
that ended while nobody ever asked the cluster to close; here the controller's process stays (local nodes
would otherwise end with their launcher, which is what nodes on a host agent do not do), its client is closed
and the cluster object is not.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from teelab.dask import TeeCluster
from teelab.dask.cluster import DEFAULT_IDLE_TIMEOUT, _idle_seconds
from teelab.errors import ConfigError
from teelab.protocols.session import DaskNodeBundle, HandshakeError
from tests.dask.conftest import DaskEnv
from tests.dask.test_node_protocol import sample
from tests.dask.test_scale import alive

IDLE = 3.0
BOUND = 60.0  # the longest the polling loops wait for what must happen


def within(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_the_scheduler_of_a_cluster_nobody_closed_ends_and_its_workers_with_it(dask_env: DaskEnv) -> None:
    cluster = TeeCluster(n_workers=2, backend="sim", policy=dask_env.policy, idle_timeout=IDLE)
    try:
        pids = [cluster.scheduler.pid, *(worker.pid for worker in cluster.workers.values())]
        with cluster.get_client() as client:
            assert client.submit(sum, [1, 2, 3]).result() == 6
            # Connected and idle for twice the timeout: the scheduler stays (in this distributed, its own
            # check_idle would close it; teelab's counts a connected client as someone using the cluster).
            started = time.monotonic()
            assert not within(lambda: not alive(pids[0]), 2 * IDLE)
            assert time.monotonic() - started >= 2 * IDLE

            def idle_state(dask_scheduler: Any) -> tuple[float | None, float | None, int]:
                return (
                    dask_scheduler.idle_timeout,
                    dask_scheduler.idle_since,
                    len(dask_scheduler.client_comms),
                )

            timeout, idle_since, clients = client.run_on_scheduler(idle_state)
            assert (timeout, idle_since, clients) == (IDLE, None, 1)  # from the bundle; never idle so far
            assert client.submit(sum, [4, 5]).result() == 9
        # The controller stops talking without closing the cluster: every node ends by itself.
        gone = time.monotonic()
        assert within(lambda: not alive(pids[0]), BOUND), "the scheduler outlived its idle timeout"
        print(f"scheduler ended {time.monotonic() - gone:.1f} s after the last client left")
        assert within(lambda: not any(alive(pid) for pid in pids[1:]), BOUND), "a worker outlived it"
        print(f"workers ended {time.monotonic() - gone:.1f} s after the last client left")
    finally:
        closing = time.monotonic()
        cluster.close()
        print(f"close after the scheduler ended: {time.monotonic() - closing:.2f} s")
    assert not any(alive(pid) for pid in pids)
    assert len(cluster.attestation_history) == 3  # no worker was "replaced" into a cluster that had ended


def test_the_idle_timeout_argument() -> None:
    assert _idle_seconds(DEFAULT_IDLE_TIMEOUT) == 300.0  # a crashed controller's nodes end within minutes
    assert _idle_seconds("90s") == 90.0 and _idle_seconds(2.5) == 2.5 and _idle_seconds(None) is None
    for bad in (0, -1, "forever", "60 days", True):
        with pytest.raises(ConfigError):
            _idle_seconds(bad)  # type: ignore[arg-type]


def test_the_bundle_carries_the_idle_timeout_only_as_a_bounded_number() -> None:
    section: dict[str, Any] = sample(role="scheduler", idle_timeout=3.0).to_json()["dask"]  # type: ignore[assignment]
    assert DaskNodeBundle.from_json({"dask": section}).idle_timeout == 3.0
    assert DaskNodeBundle.from_json({"dask": {**section, "idle_timeout": 300}}).idle_timeout == 300.0
    assert DaskNodeBundle.from_json({"dask": {**section, "idle_timeout": None}}).idle_timeout is None
    older = {key: value for key, value in section.items() if key != "idle_timeout"}
    assert DaskNodeBundle.from_json({"dask": older}).idle_timeout is None  # a bundle from before the field
    for bad in (0, -3, True, "300s", float("nan"), float("inf"), 1e12, [3]):
        with pytest.raises(HandshakeError):
            DaskNodeBundle.from_json({"dask": {**section, "idle_timeout": bad}})
