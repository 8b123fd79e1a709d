"""The scheduler and the workers of a :class:`~teelab.dask.TeeCluster` as ``SpecCluster`` sees them: each a
``ProcessInterface`` whose ``start`` launches and attests one TEE node through the cluster's controller
(:mod:`teelab.dask.controller`) and whose ``close`` ends it. A replaced or added worker is a fresh start, so
it is attested afresh. A node runs here or on a host agent (:mod:`teelab.dask.agents`): ``where`` says which."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, ClassVar

from distributed.deploy.spec import ProcessInterface

from teelab.dask.controller import ClusterController, LaunchedNode

STOP_GRACE = 5.0  # seconds a node gets to leave the cluster before SIGKILL


class TeeNode(ProcessInterface):  # type: ignore[misc]
    role: ClassVar[str]

    def __init__(self, *, controller: ClusterController, name: Any, nthreads: int = 1) -> None:
        super().__init__(name=name)  # type: ignore[no-untyped-call]
        self.controller = controller
        self.name = name
        self.nthreads = nthreads
        self.node: LaunchedNode | None = None

    @property
    def pid(self) -> int | None:
        return self.node.handle.pid if self.node is not None else None

    @property
    def where(self) -> str | None:
        """``local``, or the host agent (``grpcs://HOST:PORT``) the node runs on."""
        return self.node.handle.where if self.node is not None else None

    async def start(self) -> None:
        self.node = await self.controller.start_node(self.role, str(self.name), nthreads=self.nthreads)
        if self.role == "scheduler":
            self.address = self.controller.scheduler_address  # on an agent: known once it is launched
        await super().start()  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        if self.node is not None:
            await self.node.handle.stop(STOP_GRACE)
        await super().close()  # type: ignore[no-untyped-call]

    def __repr__(self) -> str:
        at = f"pid={self.pid}" if self.where in (None, "local") else f"on {self.where}"
        return f"<{type(self).__name__} {self.name} {at} status={self.status.name}>"


class TeeScheduler(TeeNode):
    role = "scheduler"

    def __init__(self, *, controller: ClusterController, **_: Any) -> None:
        super().__init__(controller=controller, name="scheduler")
        self.address = controller.scheduler_address


class TeeWorker(TeeNode):
    role = "worker"

    def __init__(
        self, scheduler: str, *, controller: ClusterController, name: Any, nthreads: int = 1
    ) -> None:
        super().__init__(controller=controller, name=name, nthreads=nthreads)
        self.scheduler = scheduler

    async def close(self) -> None:
        await self._leave()
        await super().close()

    async def _leave(self) -> None:
        """Ask the scheduler to retire this worker by name (its data moves to the others) and close it, so the
        node ends by itself; SpecCluster's own retire call names workers by address and misses ours."""
        ref = getattr(self, "_cluster", None)  # set by SpecCluster once the worker started
        cluster = ref() if ref is not None else None
        comm = getattr(cluster, "scheduler_comm", None)
        if comm is None or self.node is None or await self.node.handle.exited():
            return
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(
                comm.retire_workers(names=[str(self.name)], close_workers=True), timeout=STOP_GRACE
            )
