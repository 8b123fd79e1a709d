"""An evil host agent for Dask nodes: the genuine agent with one dishonest step, run as its own process.

    python evil_dask_agent.py MODE --listen HOST:0 --tokens FILE

MODE is one of: replay (send the first node's hello in every later handshake), key (substitute its own
enclave key E in the hello, keeping the node's TLS key and evidence), tls-key (substitute its own TLS key T,
so a certificate would be for a key the agent holds), controller (launch the image under its own controller
key). Every byte the controller sends towards the boot is appended to FILE.to-boot-log: a sealed bundle would
show up there.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from teelab.enclave_runtime.agent.auth import GatewayAuth, GatewayTokens
from teelab.enclave_runtime.agent.kernels import HostedKernel, KernelTable
from teelab.enclave_runtime.agent.server import AgentConfig, serve
from teelab.enclave_runtime.agent.service import HostAgentService
from teelab.enclave_runtime.agent.v1 import host_pb2
from teelab.enclave_runtime.backends import get_backend
from teelab.protocols.session import BootRequest, Hello, encode_frame, read_frame

_RAW = (Encoding.Raw, PublicFormat.Raw)


class RecordingService(HostAgentService):
    log: Path

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


class ReplayingService(RecordingService):
    first_hello: bytes | None = None

    async def from_boot(self, kernel: HostedKernel, reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
        hello = encode_frame(Hello.from_json(await read_frame(reader)))
        if ReplayingService.first_hello is None:
            ReplayingService.first_hello = hello
        yield ReplayingService.first_hello
        async for chunk in super().from_boot(kernel, reader):
            yield chunk


class KeySwappingService(RecordingService):
    async def from_boot(self, kernel: HostedKernel, reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
        genuine = Hello.from_json(await read_frame(reader))
        own = X25519PrivateKey.generate().public_key().public_bytes(*_RAW)
        yield encode_frame(Hello(own, genuine.evidence, genuine.tls_key))
        async for chunk in super().from_boot(kernel, reader):
            yield chunk


class TlsKeySwappingService(RecordingService):
    async def from_boot(self, kernel: HostedKernel, reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
        genuine = Hello.from_json(await read_frame(reader))
        own = ec.generate_private_key(ec.SECP256R1()).public_key()
        spki = own.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        yield encode_frame(Hello(genuine.enclave_key, genuine.evidence, spki))
        async for chunk in super().from_boot(kernel, reader):
            yield chunk


class OwnControllerTable(KernelTable):
    def boot_request(self, nonce: bytes, port: int, controller_key: bytes) -> tuple[BootRequest, bytes]:
        own = Ed25519PrivateKey.generate().public_key().public_bytes(*_RAW)
        return super().boot_request(nonce, port, own)


def main(argv: list[str]) -> None:
    mode, listen, tokens = argv[0], argv[argv.index("--listen") + 1], Path(argv[argv.index("--tokens") + 1])
    RecordingService.log = Path(f"{tokens}.to-boot-log")
    services: dict[str, type[HostAgentService]] = {
        "replay": ReplayingService,
        "key": KeySwappingService,
        "tls-key": TlsKeySwappingService,
        "controller": RecordingService,
    }
    config = AgentConfig(
        listen=listen,
        tokens=GatewayTokens.load(tokens),
        backends={"sim": get_backend("sim")},
        service=services[mode],
    )
    if mode == "controller":

        def with_table(table: KernelTable, auth: GatewayAuth) -> HostAgentService:
            table.__class__ = OwnControllerTable
            return RecordingService(table, auth)

        config.service = with_table
    asyncio.run(serve(config, announce=lambda line: print(line, flush=True)))


if __name__ == "__main__":
    main(sys.argv[1:])
