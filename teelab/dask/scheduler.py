"""The scheduler of an attested cluster: mutual TLS admits only holders of the cluster CA's certificates, and
this subclass admits as workers only those whose certificate says ``worker`` — under the name they register.

``distributed`` checks no roles: a client certificate registers as a worker (research/scale_out.md A.1), and a
``SchedulerPlugin`` cannot veto a worker (it is told after the worker was added). So the handler itself
(``register-worker``) is overridden: it answers ``{"status": "error"}`` and the worker never joins.

It also ends a cluster whose controller is gone (docs/dask.md): Dask's idle timeout closes a scheduler that ran
no task for that long — even with a client connected, in this ``distributed``. Here a connected client keeps it
open; once the last client is gone (closed, or its process crashed and the connection broke) and no task runs
for ``idle_timeout``, it closes itself and tells its workers to close.
"""

from __future__ import annotations

import logging
from typing import Any

from distributed import Scheduler
from distributed.metrics import time

from teelab.dask.tls import peer_role

log = logging.getLogger(__name__)


class AttestedScheduler(Scheduler):  # type: ignore[misc]
    async def add_worker(self, comm: Any, *, name: Any, **kwargs: Any) -> None:
        extra = getattr(comm, "extra_info", None) or {}
        role = peer_role(extra.get("peercert"))
        if role != ("worker", str(name)):
            log.warning("refused a worker registration from a peer whose certificate names %s", role)
            await comm.write(
                {
                    "status": "error",
                    "message": "only a worker certificate of this cluster for this name may register",
                    "time": time(),
                }
            )
            return
        await super().add_worker(comm, name=name, **kwargs)

    def check_idle(self) -> float | None:
        if self.client_comms:  # a connected client is someone still using the cluster, idle or not
            self.idle_since = None
            return None
        return super().check_idle()  # type: ignore[no-any-return]
