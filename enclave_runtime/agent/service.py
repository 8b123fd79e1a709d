"""The host agent's gRPC surface (protos/teelab/host/v1/host.proto): authentication, then the kernel table.

Every call names its gateway first, by bearer token or by the client certificate TLS verified
(:class:`~.auth.GatewayAuth`); a caller it cannot name gets UNAUTHENTICATED and nothing happens. A gateway sees, relays to and kills only its own kernels. Relay passes the boot's bytes
verbatim: the agent does not parse the handshake (an evil agent may, which is what the gateway's checks are
for).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TypeVar

import grpc

from teelab.enclave_runtime.agent.auth import GatewayAuth
from teelab.enclave_runtime.agent.kernels import AgentRefusal, HostedKernel, KernelTable
from teelab.enclave_runtime.agent.v1 import host_pb2, host_pb2_grpc
from teelab.protocols.session import ENTRY_KERNEL

RELAY_CHUNK = 64 * 1024
_M = TypeVar("_M")


def _status(kernel: HostedKernel) -> host_pb2.KernelStatus:
    code = kernel.exit_code
    return host_pb2.KernelStatus(
        kernel_id=kernel.kernel_id,
        state=kernel.state,
        exited=code is not None or kernel.process is None,
        exit_code=code or 0,
        backend=kernel.backend,
        ports=kernel.ports,
        output_tail=kernel.output.text(),
    )


class HostAgentService(host_pb2_grpc.HostAgentServicer):
    def __init__(self, table: KernelTable, auth: GatewayAuth) -> None:
        self.table = table
        self.auth = auth

    async def _caller(self, context: grpc.aio.ServicerContext) -> str:  # type: ignore[type-arg]
        gateway = self.auth.caller(context.invocation_metadata(), context.auth_context())  # type: ignore[arg-type]
        if gateway is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"{self.auth.what} is required")
        assert gateway is not None
        return gateway

    @staticmethod
    async def _parsed(request: object, kind: type[_M], context: grpc.aio.ServicerContext) -> _M:  # type: ignore[type-arg]
        """``request`` if it parsed as ``kind`` (see :mod:`.malformed`); otherwise the call ends INVALID_ARGUMENT."""
        if not isinstance(request, kind):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a {kind.__name__}")
        assert isinstance(request, kind)
        return request

    @staticmethod
    async def _refuse(context: grpc.aio.ServicerContext, refusal: AgentRefusal) -> None:  # type: ignore[type-arg]
        await context.abort(getattr(grpc.StatusCode, refusal.code), refusal.message)

    async def Launch(
        self,
        request: host_pb2.LaunchRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> host_pb2.LaunchReply:
        gateway = await self._caller(context)
        request = await self._parsed(request, host_pb2.LaunchRequest, context)
        try:
            kernel = await self.table.launch(
                gateway,
                backend=request.backend,
                image=request.image,
                nonce=request.nonce,
                controller_key=request.controller_key,
                entry=request.entry or ENTRY_KERNEL,
            )
        except AgentRefusal as refusal:
            await self._refuse(context, refusal)
            raise
        return host_pb2.LaunchReply(kernel_id=kernel.kernel_id, ports=kernel.ports)

    async def Status(
        self,
        request: host_pb2.KernelRef,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> host_pb2.KernelStatus:
        gateway = await self._caller(context)
        request = await self._parsed(request, host_pb2.KernelRef, context)
        try:
            return _status(self.table.owned(request.kernel_id, gateway))
        except AgentRefusal as refusal:
            await self._refuse(context, refusal)
            raise

    async def Kill(
        self,
        request: host_pb2.KernelRef,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> host_pb2.KernelStatus:
        gateway = await self._caller(context)
        request = await self._parsed(request, host_pb2.KernelRef, context)
        try:
            kernel = self.table.owned(request.kernel_id, gateway)
        except AgentRefusal as refusal:
            await self._refuse(context, refusal)
            raise
        await self.table.forget(kernel)
        return _status(kernel)

    async def List(
        self,
        request: host_pb2.ListRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> host_pb2.ListReply:
        gateway = await self._caller(context)
        await self._parsed(request, host_pb2.ListRequest, context)
        table = self.table
        return host_pb2.ListReply(
            kernels=[_status(k) for k in table.kernels.values() if k.gateway == gateway],
            running=len(table.live()),
            capacity=table.capacity,
            per_gateway=table.per_gateway,
            backends=sorted(table.backends),
        )

    async def Relay(
        self,
        request_iterator: AsyncIterator[host_pb2.RelayFrame],
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> AsyncIterator[host_pb2.RelayFrame]:
        gateway = await self._caller(context)
        try:
            first = await anext(aiter(request_iterator))
        except StopAsyncIteration:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first frame names the kernel")
            return
        first = await self._parsed(first, host_pb2.RelayFrame, context)
        try:
            kernel = self.table.owned(first.kernel_id, gateway)
            if kernel.relayed:
                raise AgentRefusal("ALREADY_EXISTS", "this kernel's handshake is already relayed")
            kernel.relayed = True
            reader, writer = await self.table.boot_channel(kernel)
        except AgentRefusal as refusal:
            await self._refuse(context, refusal)
            return
        if first.data:
            writer.write(first.data)
        upstream = asyncio.create_task(self.to_boot(kernel, request_iterator, writer))
        try:
            async for chunk in self.from_boot(kernel, reader):
                yield host_pb2.RelayFrame(kernel_id=kernel.kernel_id, data=chunk)
        finally:
            upstream.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await upstream
            writer.close()

    # The two directions, overridable by the evil agents of tests/host.

    async def from_boot(self, kernel: HostedKernel, reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
        while chunk := await reader.read(RELAY_CHUNK):
            yield chunk

    async def to_boot(
        self,
        kernel: HostedKernel,
        frames: AsyncIterator[host_pb2.RelayFrame],
        writer: asyncio.StreamWriter,
    ) -> None:
        async for frame in frames:
            if not isinstance(frame, host_pb2.RelayFrame):
                break  # a frame that did not parse ends the relay; the gateway's checks see a cut handshake
            writer.write(frame.data)
            await writer.drain()
