"""An evil host agent: the genuine agent with one dishonest step, run as its own process by the tests.

    python evil_agent.py MODE --listen HOST:0 --tokens FILE

MODE is one of: replay (send the first session's hello in every later session), key (substitute its own
enclave key in the hello), drop (swallow the hello), controller (launch the kernel under its own controller
key), ports (report ports where its own listeners wait, recording what reaches them to FILE.ports-log),
ready-first (relay a readiness message before the hello it holds back), hello-twice (relay the hello again in
place of the kernel's readiness message), garble (give the boot a malformed boot request, so it exits
saying why), squat (not evil: on its first launch another process on the host takes one of the promised
ports before the kernel binds it; every launch is counted in FILE.launches). The reordering modes record every byte the gateway sends towards
the boot to FILE.to-boot-log.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from teelab.enclave_runtime.agent.auth import GatewayAuth, GatewayTokens
from teelab.enclave_runtime.agent.kernels import HostedKernel, KernelTable
from teelab.enclave_runtime.agent.server import AgentConfig, serve
from teelab.enclave_runtime.agent.service import HostAgentService
from teelab.enclave_runtime.agent.v1 import host_pb2
from teelab.enclave_runtime.backends import get_backend
from teelab.protocols.session import BootRequest, Hello, Ready, encode_frame, read_frame

_RAW = (Encoding.Raw, PublicFormat.Raw)


class ReplayingService(HostAgentService):
    first_hello: bytes | None = None

    async def from_boot(self, kernel: HostedKernel, reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
        hello = encode_frame(Hello.from_json(await read_frame(reader)))
        if ReplayingService.first_hello is None:
            ReplayingService.first_hello = hello
        yield ReplayingService.first_hello
        async for chunk in super().from_boot(kernel, reader):
            yield chunk


class KeySwappingService(HostAgentService):
    async def from_boot(self, kernel: HostedKernel, reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
        genuine = Hello.from_json(await read_frame(reader))
        own = X25519PrivateKey.generate().public_key().public_bytes(*_RAW)
        yield encode_frame(Hello(own, genuine.evidence))
        async for chunk in super().from_boot(kernel, reader):
            yield chunk


class DroppingService(HostAgentService):
    marker: Path  # touched once a hello was swallowed: the gateway is then waiting in the handshake

    async def from_boot(self, kernel: HostedKernel, reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
        await read_frame(reader)  # the hello goes nowhere; the gateway hears nothing
        DroppingService.marker.touch()
        await asyncio.Event().wait()
        yield b""


class RecordingService(HostAgentService):
    log: Path  # what the gateway sent towards the boot: a sealed bundle would show up here

    async def to_boot(
        self,
        kernel: HostedKernel,
        frames: AsyncIterator[host_pb2.RelayFrame],
        writer: asyncio.StreamWriter,
    ) -> None:
        async for frame in frames:
            with RecordingService.log.open("ab") as out:
                out.write(frame.data)
            writer.write(frame.data)
            await writer.drain()


class ReadyFirstService(RecordingService):
    async def from_boot(self, kernel: HostedKernel, reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
        hello = encode_frame(Hello.from_json(await read_frame(reader)))  # held back
        yield encode_frame(Ready(os.urandom(32)))
        yield hello
        async for chunk in super().from_boot(kernel, reader):
            yield chunk


class HelloTwiceService(RecordingService):
    async def from_boot(self, kernel: HostedKernel, reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
        hello = encode_frame(Hello.from_json(await read_frame(reader)))
        yield hello
        await read_frame(reader)  # the kernel's readiness, after the gateway's bundle
        yield hello


class OwnControllerTable(KernelTable):
    def boot_request(self, nonce: bytes, port: int, controller_key: bytes) -> tuple[BootRequest, bytes]:
        own = Ed25519PrivateKey.generate().public_key().public_bytes(*_RAW)
        return super().boot_request(nonce, port, own)


class GarblingTable(KernelTable):
    def boot_request(self, nonce: bytes, port: int, controller_key: bytes) -> tuple[BootRequest, bytes]:
        request, controller = super().boot_request(nonce, port, controller_key)
        return BootRequest(nonce, request.host, request.port, controller_key=b"short"), controller


class OwnPortsTable(KernelTable):
    log: Path

    async def launch(self, gateway: str, **request: object) -> HostedKernel:
        kernel = await super().launch(gateway, **request)  # type: ignore[arg-type]
        servers = []
        for port in kernel.ports:  # the agent's own listeners take the ports it reports
            servers.append(await asyncio.start_server(self._record, host=self.host, port=port))
        kernel.extra["servers"] = servers
        return kernel

    async def _record(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(65536)
        with self.log.open("ab") as out:
            out.write(data or b"<connected>")
        writer.close()


class SquattedTable(KernelTable):
    launches: Path

    async def launch(self, gateway: str, **request: object) -> HostedKernel:
        kernel = await super().launch(gateway, **request)  # type: ignore[arg-type]
        with self.launches.open("a") as out:
            out.write(f"{kernel.kernel_id}\n")
        if len(self.launches.read_text().splitlines()) == 1:
            squatter = socket.socket()
            squatter.bind((self.host, kernel.ports[0]))
            squatter.listen()
            kernel.extra["squatter"] = squatter
        return kernel


def main(argv: list[str]) -> None:
    mode, listen, tokens = argv[0], argv[argv.index("--listen") + 1], Path(argv[argv.index("--tokens") + 1])
    services: dict[str, type[HostAgentService]] = {
        "replay": ReplayingService,
        "key": KeySwappingService,
        "drop": DroppingService,
        "ready-first": ReadyFirstService,
        "hello-twice": HelloTwiceService,
    }
    service = services.get(mode, HostAgentService)
    config = AgentConfig(
        listen=listen,
        tokens=GatewayTokens.load(tokens),
        backends={"sim": get_backend("sim")},
        service=service,
    )
    DroppingService.marker = Path(f"{tokens}.dropped")
    RecordingService.log = Path(f"{tokens}.to-boot-log")
    tables = {
        "controller": OwnControllerTable,
        "ports": OwnPortsTable,
        "garble": GarblingTable,
        "squat": SquattedTable,
    }
    if mode in tables:
        table_class = tables[mode]
        OwnPortsTable.log = Path(f"{tokens}.ports-log")
        SquattedTable.launches = Path(f"{tokens}.launches")

        def with_table(table: KernelTable, auth: GatewayAuth) -> HostAgentService:
            table.__class__ = table_class
            return HostAgentService(table, auth)

        config.service = with_table
    asyncio.run(serve(config, announce=lambda line: print(line, flush=True)))


if __name__ == "__main__":
    main(sys.argv[1:])
