"""``TeeCluster``: a Dask cluster whose scheduler and workers run in TEEs, each attested before it may join.

::

    from teelab.dask import TeeCluster
    with TeeCluster(n_workers=2, backend="sim") as cluster, cluster.get_client() as client:
        client.submit(sum, [1, 2, 3]).result()

It is a ``distributed.deploy.SpecCluster``: scaling up and down, ``adapt()``, a lost worker replaced, context
managers and ``get_client()`` behave as they do for ``LocalCluster``. What differs is how a node comes to
be (:mod:`teelab.dask.controller`) and that the only way in is a certificate of the cluster's CA in the right
role (:mod:`teelab.dask.tls`, :mod:`teelab.dask.scheduler`). The design and its adversaries: docs/dask.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from dask.utils import parse_timedelta
from distributed.core import Status
from distributed.deploy.spec import SpecCluster

from teelab.dask import comm, display
from teelab.dask.agents import AgentCredentials, AgentPool
from teelab.dask.controller import ClusterController
from teelab.dask.nodes import TeeScheduler, TeeWorker
from teelab.dask.records import NodeAttestation
from teelab.errors import ConfigError
from teelab.gateway.policy import AppraisalPolicy
from teelab.protocols.session import MAX_IDLE_TIMEOUT

DEFAULT_LAUNCH_TIMEOUT = 120.0
# The scheduler closes itself (and its workers with it) after this long with no client connected and no task:
# a controller that crashed without closing the cluster leaves no node running on an agent for long.
DEFAULT_IDLE_TIMEOUT = "300s"


class TeeCluster(SpecCluster):  # type: ignore[misc]
    """An attested Dask cluster.

    ``backend``: the TEE backend the nodes run in (``sim``, ``gramine``, ``occlum``, ``cvm``), launching the
    kernel's measured image (``image``: its folder). ``policy``: the appraisal policy for every node (a TOML
    path or an ``AppraisalPolicy``). Defaults inside a teelab kernel (of this backend): the very image the kernel
    runs in and a policy pinning exactly the kernel's own measurement (:mod:`teelab.dask.own_kernel`). Elsewhere:
    the image ``teelab kernel install`` built, and on ``sim`` a policy pinning exactly it, simulation allowed
    (required on real TEEs). ``replace_after``:
    seconds after which a worker the scheduler lost is replaced by a freshly attested one. ``hosts``: host
    agents (``grpcs://HOST:PORT``) the workers are placed on, and with ``remote_scheduler`` the scheduler too;
    ``host_credentials`` is what the controller presents to them (:mod:`teelab.dask.agents`, docs/dask.md).
    ``idle_timeout`` (``"300s"``, seconds, or ``None`` for never): the scheduler closes itself, and its workers
    with it, once no client has been connected and no task has run for that long (sealed in its bundle).
    """

    def __init__(
        self,
        n_workers: int = 2,
        *,
        backend: str = "sim",
        threads_per_worker: int = 1,
        policy: str | Path | AppraisalPolicy | None = None,
        image: str | Path | None = None,
        host: str = "127.0.0.1",
        launch_timeout: float = DEFAULT_LAUNCH_TIMEOUT,
        replace_after: float = 1.0,
        asynchronous: bool = False,
        loop: Any = None,
        name: str | None = None,
        shutdown_on_close: bool = True,
        hosts: Sequence[str] | None = None,
        host_credentials: AgentCredentials | None = None,
        remote_scheduler: bool = False,
        idle_timeout: str | float | None = DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        idle_seconds = _idle_seconds(idle_timeout)
        agents = None
        if hosts is not None:
            if host_credentials is None:
                raise ConfigError("TeeCluster(hosts=...) needs host_credentials=AgentCredentials(...)")
            agents = AgentPool(hosts, host_credentials, backend)
        self.controller = ClusterController(
            backend=backend,
            policy=policy,
            image=Path(image) if image is not None else None,
            host=host,
            launch_timeout=launch_timeout,
            agents=agents,
            remote_scheduler=remote_scheduler,
            idle_timeout=idle_seconds,
        )
        self.replace_after = replace_after
        comm.watch(self)  # the JupyterLab panel lists its nodes as they are attested (teelab.dask.comm)
        worker = {
            "cls": TeeWorker,
            "options": {"controller": self.controller, "nthreads": threads_per_worker},
        }
        super().__init__(  # type: ignore[no-untyped-call]
            workers={str(i): dict(worker) for i in range(n_workers)},
            scheduler={"cls": TeeScheduler, "options": {"controller": self.controller}},
            worker=worker,
            asynchronous=asynchronous,
            loop=loop,
            security=self.controller.security,
            name=name or f"TeeCluster-{self.controller.cluster_id}",
            shutdown_on_close=shutdown_on_close,
        )

    @property
    def cluster_id(self) -> str:
        return self.controller.cluster_id

    @property
    def attestation(self) -> Mapping[str, NodeAttestation]:
        """Each node's latest verdict by name (``scheduler``, then the workers' names as strings)."""
        return MappingProxyType({record.name: record for record in self.controller.records})

    @property
    def attestation_history(self) -> tuple[NodeAttestation, ...]:
        """Every node start in order, the refused and the replaced ones included."""
        return tuple(self.controller.records)

    def __repr__(self) -> str:
        """distributed's one line, then one line per node with its verdict (teelab.dask.display)."""
        return display.text_repr(self, super().__repr__)

    def _repr_html_(self, cluster_status: Any = None) -> str:
        """LocalCluster's card with every node's attestation (also what its notebook widget shows)."""
        return display.html_repr(self)

    async def _close(self) -> None:
        ended = self.scheduler if await self._scheduler_ended() else None
        if ended is not None:
            # The scheduler closed itself (idle_timeout): SpecCluster would wait 30 s on each call to it.
            ended.status = Status.closed  # no retire_workers call
            self.shutdown_scheduler = False  # no terminate call
        try:
            await super()._close()  # type: ignore[no-untyped-call]
        finally:
            if ended is not None:
                await ended.close()  # what its launch left is removed
            comm.forget(self)
            await self.controller.close()

    async def _scheduler_ended(self) -> bool:
        node = getattr(self.scheduler, "node", None)
        return node is not None and await node.handle.exited()

    def _new_worker_name(self, worker_number: int) -> str:
        return str(worker_number)  # the name the worker's certificate and registration carry

    def _update_worker_status(self, op: str, msg: Any) -> None:
        """SpecCluster forgets a lost worker only after ``lost-worker-timeout`` and never starts its spec again
        by itself; here a worker the scheduler lost is replaced (attested afresh) after ``replace_after``."""
        if op == "remove" and self.status.name == "running":
            name = self.scheduler_info["workers"][msg]["name"]
            asyncio.get_running_loop().call_later(self.replace_after, self._replace, name, msg)
        super(SpecCluster, self)._update_worker_status(op, msg)  # type: ignore[no-untyped-call]
        comm.changed()

    def _replace(self, name: Any, address: str) -> None:
        self._futures.add(asyncio.ensure_future(self._replace_unless_ended(name)))

    async def _replace_unless_ended(self, name: Any) -> None:
        if await self._scheduler_ended():  # its workers ended with it (idle_timeout): nothing to join
            return
        alive = any(info.get("name") == name for info in self.scheduler_info["workers"].values())
        if alive or name not in self.workers or self.status.name != "running":
            return
        self._futures.add(asyncio.ensure_future(self.workers.pop(name).close()))
        # The spec still names the worker: correcting the state launches and attests a new one.
        self._correct_state()  # type: ignore[no-untyped-call]


def _idle_seconds(idle_timeout: str | float | None) -> float | None:
    if idle_timeout is None:
        return None
    if isinstance(idle_timeout, bool):  # True is 1 to parse_timedelta: a mistake, not a duration
        raise ConfigError(f"TeeCluster(idle_timeout={idle_timeout!r}) is not a duration")
    try:
        seconds = parse_timedelta(idle_timeout, default="seconds")
    except (ValueError, TypeError, KeyError) as error:
        raise ConfigError(f"TeeCluster(idle_timeout={idle_timeout!r}) is not a duration: {error}") from None
    if not 0 < seconds <= MAX_IDLE_TIMEOUT:
        raise ConfigError(
            f"TeeCluster(idle_timeout={idle_timeout!r}) is out of range",
            hint=f"a duration up to {MAX_IDLE_TIMEOUT:.0f} s, or None for a scheduler that never closes by itself",
        )
    return float(seconds)
