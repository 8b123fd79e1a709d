"""Placing a remote kernel: the least loaded host agent of a pool that offers the kernel's backend and has room
for this gateway (docs/remote-hosts.md).

Every agent is asked for its ``List``; an unreachable one is skipped (a restart after a host died lands on
another). Launches this server is placing on an agent, which the agent may not count yet, are counted here:
kernels started at once would otherwise all see the same loads and land on the same host.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

from teelab.kernel.host_client import HostAgentError, HostClient, HostTarget
from teelab.kernel.host_pool import HostCredentials

_PLACING: dict[str, int] = {}


async def _load(client: HostClient, backend: str) -> tuple[float | None, str]:
    """The agent's load with this launch on it (None if it cannot take it), and why not."""
    try:
        listing = await client.list(timeout=5.0)
    except HostAgentError as error:
        return None, error.message
    if backend not in listing.backends or listing.running >= listing.capacity:
        return None, f"{client.target}: no room for a {backend} kernel"
    placing = _PLACING.get(str(client.target), 0)
    mine = sum(1 for k in listing.kernels if not k.exited) + placing
    if mine >= listing.per_gateway or listing.running + placing >= listing.capacity:
        return None, f"{client.target}: this gateway's limit is reached"
    return (listing.running + placing) / listing.capacity, ""


@contextlib.asynccontextmanager
async def placed(
    pool: Sequence[tuple[HostTarget, HostCredentials]], backend: str
) -> AsyncIterator[HostClient]:
    """The chosen agent's client, counted as placing until the block (which launches on it) ends."""
    best: tuple[float, HostClient] | None = None
    reasons = []
    for target, given in pool:
        client = HostClient(target, given.token, ca=given.ca, client_certificate=given.client_certificate)
        load, reason = await _load(client, backend)
        if load is not None and (best is None or load < best[0]):
            if best is not None:
                await best[1].close()
            best = (load, client)
            continue
        if reason:
            reasons.append(reason)
        await client.close()
    if best is None:
        raise HostAgentError("no host agent can take the kernel: " + "; ".join(reasons))
    key = str(best[1].target)
    _PLACING[key] = _PLACING.get(key, 0) + 1
    try:
        yield best[1]
    finally:
        _PLACING[key] -= 1  # the agent counts it now (or it was never started)
