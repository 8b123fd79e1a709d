"""A cluster whose controller is gone ends by itself: the scheduler closes after ``idle_timeout`` with no client
connected and no task (Dask's idle timeout, set from the sealed bundle), and its workers end with it; a client
that is connected but idle keeps it open.

Where these tests stand: real sim-backend nodes. A crashed controller is, for the scheduler, a client connection
that ended while nobody ever asked the cluster to close. Locally the controller's process has to stay (local
nodes would otherwise end with their launcher): its client is closed and the cluster object is not. On host
agents (the nodes' launcher, alive) the controller is a separate process, killed with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from teelab.dask import TeeCluster
from teelab.dask.cluster import DEFAULT_IDLE_TIMEOUT, _idle_seconds
from teelab.errors import ConfigError
from teelab.protocols.session import DaskNodeBundle, HandshakeError
from tests.dask.conftest import DaskEnv
from tests.dask.test_node_protocol import sample
from tests.dask.test_remote_nodes import TOKEN, Agent, agents, live_nodes, tokens  # noqa: F401  (fixtures)
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


CONTROLLER = """
import sys, time
from teelab.dask import TeeCluster
from teelab.dask.agents import AgentCredentials
cluster = TeeCluster(n_workers=1, policy=sys.argv[1], hosts=sys.argv[2:], remote_scheduler=True,
                     host_credentials=AgentCredentials(token=%r), idle_timeout=%r)
client = cluster.get_client()
assert client.submit(sum, [1, 2, 3]).result() == 6
print("computed", flush=True)
time.sleep(600)
"""


def test_a_crashed_controllers_nodes_on_agents_end(
    agents: Callable[..., Agent],  # noqa: F811  (the fixture)
    dask_env: DaskEnv,
) -> None:
    """The issue's case: scheduler and worker on host agents (their launcher, alive), the controller SIGKILLed."""
    (_, first), (_, second) = agents("127.0.0.2"), agents("127.0.0.3")
    controller = subprocess.Popen(
        [sys.executable, "-c", CONTROLLER % (TOKEN, IDLE), str(dask_env.policy), first, second],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        assert controller.stdout is not None
        assert controller.stdout.readline().strip() == "computed"
        assert len(live_nodes(first)) + len(live_nodes(second)) == 2
        controller.send_signal(signal.SIGKILL)  # no close(): its client's connection just breaks
        controller.wait()
        crashed = time.monotonic()
        assert within(lambda: not live_nodes(first) and not live_nodes(second), BOUND), "a node outlived it"
        print(
            f"the nodes on the agents ended {time.monotonic() - crashed:.1f} s after the controller's SIGKILL"
        )
    finally:
        controller.kill()
        controller.wait()


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
