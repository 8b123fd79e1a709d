"""A client of a host agent (protos/teelab/host/v1/host.proto): addresses, calls, the relay.

Its callers are the gateway's remote provisioner (teelab.kernel) and a Dask cluster's controller placing
nodes on agents (teelab.dask.agents): it lives beside the agent's protocol so both parts may import it.

``grpc://HOST:PORT`` is plaintext and allowed on loopback only (the gateway token is a bearer credential);
``grpcs://HOST:PORT`` is TLS with the system's roots or the operator's CA, and with this gateway's client
certificate when the agent requires one (``--client-ca``). Every error of the agent becomes a
:class:`HostAgentError`. :meth:`HostClient.relay` turns the agent's Relay stream into the ordinary
(reader, writer) pair that :func:`teelab.gateway.session.attest_and_seal` talks on, so the remote handshake is
the local one, byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from teelab.enclave_runtime.agent.auth import is_loopback
from teelab.enclave_runtime.agent.v1 import host_pb2, host_pb2_grpc
from teelab.errors import ConfigError, TeelabError

Channel = tuple[asyncio.StreamReader, asyncio.StreamWriter]
CALL_TIMEOUT = 10.0
RELAY_CHUNK = 64 * 1024


class HostAgentError(TeelabError):
    """A host agent refused a call or could not be reached."""


@dataclass(frozen=True)
class HostTarget:
    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, text: str) -> HostTarget:
        scheme, sep, rest = text.strip().partition("://")
        if not sep or scheme not in ("grpc", "grpcs"):
            raise ConfigError(f"a host agent address is grpc://HOST:PORT or grpcs://HOST:PORT, not {text!r}")
        host, colon, port = rest.rpartition(":")
        host = host.strip("[]")
        # isdigit() alone admits '²' and 5000-digit strings, on which int() raises ValueError, not ConfigError.
        digits = port.isascii() and port.isdigit() and len(port) <= 5
        if not colon or not host or not digits or not 0 < int(port) < 65536 or "/" in host:
            raise ConfigError(
                f"the host agent address {text!r} is not grpc[s]://HOST:PORT",
                hint="a port is 1 to 65535, e.g. grpcs://tee-host.example:7443",
            )
        if not host.isprintable() or any(c.isspace() for c in host):
            raise ConfigError(f"the host agent address {text!r} has a control or space character in its host")
        target = cls(host, int(port), scheme == "grpcs")
        if not target.tls and not is_loopback(host):
            raise ConfigError(
                f"refusing plaintext to the host agent {text!r}: the gateway token would cross the network",
                hint="use grpcs://",
            )
        return target

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{'grpcs' if self.tls else 'grpc'}://{self.address}"


class HostClient:
    """One agent. A grpc.aio channel belongs to the event loop it was made on, and jupyter_client drives a
    kernel manager from more than one loop (a blocking manager, nbclient), so each loop gets its own."""

    def __init__(
        self,
        target: HostTarget,
        token: str | None,
        *,
        ca: bytes | None = None,
        client_certificate: tuple[bytes, bytes] | None = None,
    ) -> None:
        """``token`` is this gateway's bearer token (None: the agent names it by ``client_certificate``, a
        (PEM chain, PEM key) pair presented in the TLS handshake)."""
        if client_certificate is not None and not target.tls:
            raise ConfigError(f"a client certificate needs TLS: use grpcs:// for {target}")
        self.target = target
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._ca = ca
        self._client_certificate = client_certificate
        self._channels: dict[
            asyncio.AbstractEventLoop, tuple[grpc.aio.Channel, host_pb2_grpc.HostAgentStub]
        ] = {}

    @property
    def _stub(self) -> host_pb2_grpc.HostAgentStub:
        loop = asyncio.get_running_loop()
        for other in [other for other in self._channels if other.is_closed()]:
            del self._channels[other]  # its channel went with it
        if loop not in self._channels:
            if self.target.tls:
                chain, key = self._client_certificate or (None, None)
                credentials = grpc.ssl_channel_credentials(self._ca, private_key=key, certificate_chain=chain)
                channel = grpc.aio.secure_channel(self.target.address, credentials)
            else:
                channel = grpc.aio.insecure_channel(self.target.address)
            self._channels[loop] = (channel, host_pb2_grpc.HostAgentStub(channel))  # type: ignore[no-untyped-call]
        return self._channels[loop][1]

    async def close(self) -> None:
        """Close this loop's channel (channels of other loops cannot be closed from here)."""
        entry = self._channels.pop(asyncio.get_running_loop(), None)
        if entry is not None:
            await entry[0].close()

    async def _call(self, method: str, request: object, timeout: float = CALL_TIMEOUT) -> object:
        try:
            return await getattr(self._stub, method)(request, metadata=self._metadata, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            raise HostAgentError(
                f"host agent {self.target}: {method}: {error.code().name}: {error.details()}"
            ) from None

    async def launch(
        self, backend: str, image: str, nonce: bytes, controller_key: bytes, entry: str = ""
    ) -> host_pb2.LaunchReply:
        """``entry``: which boot of the image answers ("" a kernel; "dask-node"). An agent older than the
        field ignores it and boots a kernel, whose hello a Dask controller refuses (it binds no TLS key)."""
        request = host_pb2.LaunchRequest(
            backend=backend, image=image, nonce=nonce, controller_key=controller_key, entry=entry
        )
        reply = await self._call("Launch", request, timeout=120.0)
        assert isinstance(reply, host_pb2.LaunchReply)
        return reply

    async def status(self, kernel_id: str, timeout: float = CALL_TIMEOUT) -> host_pb2.KernelStatus:
        reply = await self._call("Status", host_pb2.KernelRef(kernel_id=kernel_id), timeout)
        assert isinstance(reply, host_pb2.KernelStatus)
        return reply

    async def last_words(self, kernel_id: str, settle: float = 1.0) -> str:
        """The last line the kernel wrote to stdout/stderr as the agent reports it (untrusted, printable, at most
        300 characters; "" if none or the agent cannot say). Waits up to ``settle`` for a boot on its way out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settle
        try:
            while not (status := await self.status(kernel_id, timeout=2.0)).exited and loop.time() < deadline:
                await asyncio.sleep(0.1)
        except HostAgentError:
            return ""
        lines = status.output_tail.strip().splitlines()
        return "".join(c if c.isprintable() else "?" for c in lines[-1])[:300] if lines else ""

    async def kill(self, kernel_id: str) -> None:
        await self._call("Kill", host_pb2.KernelRef(kernel_id=kernel_id), 30.0)

    async def list(self, timeout: float = CALL_TIMEOUT) -> host_pb2.ListReply:
        reply = await self._call("List", host_pb2.ListRequest(), timeout)
        assert isinstance(reply, host_pb2.ListReply)
        return reply

    @contextlib.asynccontextmanager
    async def relay(self, kernel_id: str) -> AsyncIterator[Channel]:
        """The boot's handshake connection, through the agent, as a local (reader, writer) pair."""
        ours, pump_side = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=ours)
        pump_reader, pump_writer = await asyncio.open_connection(sock=pump_side)

        async def outgoing() -> AsyncIterator[host_pb2.RelayFrame]:
            yield host_pb2.RelayFrame(kernel_id=kernel_id)
            while chunk := await pump_reader.read(RELAY_CHUNK):
                yield host_pb2.RelayFrame(kernel_id=kernel_id, data=chunk)

        call = self._stub.Relay(outgoing(), metadata=self._metadata)

        async def incoming() -> None:
            try:
                async for frame in call:
                    pump_writer.write(frame.data)
                    await pump_writer.drain()
            except grpc.aio.AioRpcError:
                pass  # the gateway sees the end of the stream: the handshake fails with its own error
            finally:
                pump_writer.close()

        task = asyncio.create_task(incoming())
        try:
            yield reader, writer
        finally:
            call.cancel()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            writer.close()
            pump_writer.close()
