"""Nodes of a :class:`~teelab.dask.TeeCluster` on remote TEE hosts: placed on host agents (``teelab host
serve``, docs/remote-hosts.md) exactly as the gateway places kernels there.

The agent is the untrusted host of ARCHITECTURE §1. It launches the kernel's measured image with the boot
request's ``entry = "dask-node"``, binding ``SHA-256(G_c.pub)`` at launch, and relays the handshake bytes: the
cluster's controller — not the agent, and not the gateway — holds the handshake with each node, judges its
evidence with its own backend and policy, and seals the node's bundle to the attested key. The agent sees the
nonce, ``G_c.pub``, public keys, evidence and ciphertext: what any host sees.

The controller presents its own credential to the agents (:class:`AgentCredentials`): a token or client
certificate the operator issued for Dask nodes, never the gateway's (docs/dask.md, *Nodes on remote TEE hosts*).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from teelab.enclave_runtime.agent.client import Channel, HostAgentError, HostClient, HostTarget
from teelab.enclave_runtime.agent.v1 import host_pb2
from teelab.errors import ConfigError
from teelab.protocols.session import ENTRY_DASK_NODE

__all__ = ["AgentCredentials", "AgentNode", "AgentPool", "HostAgentError"]


@dataclass(frozen=True)
class AgentCredentials:
    """What the controller presents to the agents: a bearer ``token``, or a ``client_certificate`` (PEM chain,
    PEM key) for agents run with ``--client-ca``; ``ca``: the agents' TLS CA (PEM; default the system's)."""

    token: str | None = None
    ca: bytes | None = None
    client_certificate: tuple[bytes, bytes] | None = None

    def __post_init__(self) -> None:
        if not self.token and self.client_certificate is None:
            raise ConfigError(
                "nodes on host agents need a credential for them",
                hint="AgentCredentials(token=...) or AgentCredentials(client_certificate=(chain, key))",
            )

    def __repr__(self) -> str:  # a token is a bearer credential: never in a repr, a log or a traceback
        return f"AgentCredentials(token={'…' if self.token else None}, tls_client={self.client_certificate is not None})"


class AgentNode:
    """One node an agent launched: its state and its end, as the agent reports them (untrusted; a node's
    state matters only for cleaning up — the scheduler, over mutual TLS, is what says a worker is there)."""

    pid = None  # a process id on another host means nothing here

    def __init__(self, client: HostClient, kernel_id: str, pool: AgentPool) -> None:
        self.client, self.kernel_id, self._pool = client, kernel_id, pool
        self.where = str(client.target)
        self._ended = False

    async def exited(self) -> bool:
        if self._ended:
            return True
        try:
            status = await self.client.status(self.kernel_id, timeout=3.0)
        except HostAgentError:
            return (
                True  # an agent that cannot be reached took its nodes with it (they end with their launcher)
            )
        return bool(status.exited)

    async def last_words(self) -> str:
        return await self.client.last_words(self.kernel_id)

    async def stop(self, grace: float) -> None:
        """``grace`` seconds to leave by itself, then the agent kills it and removes its scratch space."""
        if self._ended:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while loop.time() < deadline and not await self.exited():
            await asyncio.sleep(0.2)
        with contextlib.suppress(HostAgentError):
            await self.client.kill(self.kernel_id)
        self._ended = True
        self._pool.release(self.client)


class AgentPool:
    """The agents a cluster may place nodes on; each node goes to the agent with the fewest of this cluster's
    nodes (then the least loaded) that offers the backend and has room. An unreachable agent is skipped, so a
    node replacing one lost with its agent lands on another."""

    def __init__(self, hosts: Sequence[str], credentials: AgentCredentials, backend: str) -> None:
        if not hosts:
            raise ConfigError("TeeCluster(hosts=...) names no host agent")
        targets = {str(target): target for target in (HostTarget.parse(text) for text in hosts)}
        self.backend = backend
        self.clients = [
            HostClient(
                target,
                credentials.token,
                ca=credentials.ca,
                client_certificate=credentials.client_certificate,
            )
            for target in targets.values()
        ]
        self.placed: dict[str, int] = {str(client.target): 0 for client in self.clients}

    async def _room(self, client: HostClient) -> tuple[float, str]:
        """(load, "") for an agent that can take a node now, else (-1, why not)."""
        try:
            listing: host_pb2.ListReply = await client.list(timeout=5.0)
        except HostAgentError as error:
            return -1.0, error.message
        if self.backend not in listing.backends:
            return -1.0, f"{client.target} offers {', '.join(listing.backends)}, not {self.backend}"
        mine = sum(1 for k in listing.kernels if not k.exited)
        if listing.capacity == 0 or listing.running >= listing.capacity or mine >= listing.per_gateway:
            return -1.0, f"{client.target} has no room for another node"
        return listing.running / listing.capacity, ""

    async def choose(self) -> HostClient:
        rooms = await asyncio.gather(*(self._room(client) for client in self.clients))
        # Decided and counted with no await in between: nodes started together spread over the agents.
        candidates = [
            (self.placed[str(client.target)], load, index)
            for index, (client, (load, _)) in enumerate(zip(self.clients, rooms, strict=True))
            if load >= 0
        ]
        if not candidates:
            raise HostAgentError(
                "no host agent can take the node: " + "; ".join(why for _, why in rooms if why)
            )
        client = self.clients[min(candidates)[2]]
        self.placed[str(client.target)] += 1
        return client

    def release(self, client: HostClient) -> None:
        key = str(client.target)
        self.placed[key] = max(0, self.placed[key] - 1)

    @contextlib.asynccontextmanager
    async def launched(
        self, image: str, nonce: bytes, controller_key: bytes
    ) -> AsyncIterator[tuple[AgentNode, tuple[int, ...], Channel]]:
        """Launch a Dask node on a chosen agent; yield it, the ports the agent reports free on its host
        (untrusted: a scheduler's listening port, which the sealed bundle carries) and the relayed handshake."""
        client = await self.choose()
        try:
            reply = await client.launch(self.backend, image, nonce, controller_key, entry=ENTRY_DASK_NODE)
        except BaseException:
            self.release(client)
            raise
        node = AgentNode(client, reply.kernel_id, self)
        ports = tuple(int(port) for port in reply.ports)
        try:
            async with client.relay(reply.kernel_id) as channel:
                yield node, ports, channel
        except BaseException:
            await node.stop(0.0)
            raise

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
