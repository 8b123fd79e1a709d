"""The kernels one host agent runs: launch with the gateway's controller, the boot's answer socket, limits.

A launch binds ``SHA-256(G.pub)`` of the requesting gateway (the controller rule), gives the boot a boot
request naming the agent's own answer socket, and reports five ports free on this host. Nothing here is
trusted by the gateway: it checks the evidence, seals to the attested key and connects with CURVE.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from teelab.enclave_runtime.agent.output import OutputTail
from teelab.enclave_runtime.backend import EnclaveBackend, EnclaveProcess
from teelab.errors import TeelabError
from teelab.protocols.session import (
    BOOT_REQUEST_ENV,
    ENTRIES,
    ENTRY_KERNEL,
    NONCE_SIZE,
    PORT_NAMES,
    BootRequest,
)

log = logging.getLogger("teelab.host")
_IMAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
CONTROLLER_KEY_SIZE = 32


class AgentRefusal(TeelabError):
    """A request the agent refuses; ``code`` is the gRPC status name to answer with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


Channel = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass
class HostedKernel:
    kernel_id: str
    gateway: str
    backend: str
    ports: tuple[int, ...]
    answer: asyncio.Server
    boot: asyncio.Future[Channel]
    process: EnclaveProcess | None = None
    relayed: bool = False
    killed: bool = False
    launched_at: float = 0.0
    exited_at: float | None = None  # when the table first saw it exited
    output: OutputTail = field(default_factory=OutputTail)
    extra: dict[str, object] = field(default_factory=dict)

    def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.boot.done():
            writer.close()  # one boot answers per kernel
        else:
            self.boot.set_result((reader, writer))

    @property
    def exit_code(self) -> int | None:
        return self.process.poll() if self.process is not None else None

    @property
    def state(self) -> str:
        if self.process is None or self.exit_code is not None:
            return "exited"
        return "running" if self.relayed and self.boot.done() else "starting"


def free_ports(host: str, count: int, taken: set[int]) -> tuple[int, ...]:
    """``count`` distinct ports free on ``host`` now and not in ``taken`` (ports handed to kernels that have
    not bound them yet: the OS would offer them again). Held open together so they differ."""
    sockets = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            sockets.append(s)
            s.bind((host, 0))
            port = s.getsockname()[1]
            if port not in taken:
                ports.append(port)
        return tuple(ports)
    finally:
        for s in sockets:
            s.close()


class KernelTable:
    def __init__(
        self,
        backends: Mapping[str, EnclaveBackend],
        *,
        host: str,
        capacity: int,
        per_gateway: int,
        boot_timeout: float = 120.0,
        retain_exited: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backends = dict(backends)
        self.host = host
        self.capacity = capacity
        self.per_gateway = per_gateway
        self.boot_timeout = boot_timeout
        self.retain_exited = retain_exited  # how long a gateway may still read an exited kernel's status
        self.clock = clock
        self.kernels: dict[str, HostedKernel] = {}
        self._lock = asyncio.Lock()

    def live(self, gateway: str | None = None) -> list[HostedKernel]:
        """Running kernels and those still launching (no process yet, reported "exited"): without the latter,
        launches made at once all passed the limits (tests/dask/test_remote_nodes.py, two nodes at once)."""
        return [
            k
            for k in self.kernels.values()
            if (k.state != "exited" or (k.process is None and not k.killed))
            and (gateway is None or k.gateway == gateway)
        ]

    def owned(self, kernel_id: str, gateway: str) -> HostedKernel:
        kernel = self.kernels.get(kernel_id)
        # Another gateway's kernel is answered exactly like a missing one: ids are not an oracle.
        if kernel is None or kernel.gateway != gateway:
            raise AgentRefusal("NOT_FOUND", "no such kernel")
        return kernel

    def check_request(
        self, backend: str, image: str, nonce: bytes, controller_key: bytes, entry: str = ENTRY_KERNEL
    ) -> EnclaveBackend:
        if backend not in self.backends:
            offered = ", ".join(sorted(self.backends))
            raise AgentRefusal(
                "FAILED_PRECONDITION", f"this host offers the backends {offered}, not {backend!r}"
            )
        if not _IMAGE_NAME.fullmatch(image):
            raise AgentRefusal("INVALID_ARGUMENT", "the image name is not a plain name")
        if len(nonce) != NONCE_SIZE:
            raise AgentRefusal("INVALID_ARGUMENT", f"the nonce must be {NONCE_SIZE} bytes")
        if len(controller_key) != CONTROLLER_KEY_SIZE:
            raise AgentRefusal("INVALID_ARGUMENT", f"the controller key must be {CONTROLLER_KEY_SIZE} bytes")
        if entry not in ENTRIES:
            raise AgentRefusal("INVALID_ARGUMENT", f"the image has the boots {', '.join(sorted(ENTRIES))}")
        return self.backends[backend]

    def boot_request(self, nonce: bytes, port: int, controller_key: bytes) -> tuple[BootRequest, bytes]:
        """The boot request and the controller hash the launch binds (an evil agent changes these)."""
        request = BootRequest(nonce, self.host, port, controller_key=controller_key)
        return request, hashlib.sha256(controller_key).digest()

    async def launch(
        self,
        gateway: str,
        *,
        backend: str,
        image: str,
        nonce: bytes,
        controller_key: bytes,
        entry: str = ENTRY_KERNEL,
    ) -> HostedKernel:
        tee = self.check_request(backend, image, nonce, controller_key, entry)
        async with self._lock:  # the limits count launches in progress too
            if len(self.live()) >= self.capacity:
                raise AgentRefusal("RESOURCE_EXHAUSTED", f"this host runs its {self.capacity} kernels")
            if len(self.live(gateway)) >= self.per_gateway:
                raise AgentRefusal(
                    "RESOURCE_EXHAUSTED", f"this gateway runs its {self.per_gateway} kernels on this host"
                )
            loop = asyncio.get_running_loop()
            kernel_id = uuid.uuid4().hex
            boot: asyncio.Future[Channel] = loop.create_future()
            holder: list[HostedKernel] = []
            # The answer socket too takes a port no kernel was promised (port 0 could be one of them).
            taken = {port for k in self.kernels.values() for port in k.ports}
            *ports, answer_port = free_ports(self.host, len(PORT_NAMES) + 1, taken)
            answer = await asyncio.start_server(
                lambda r, w: holder[0].accept(r, w), host=self.host, port=answer_port
            )
            kernel = HostedKernel(kernel_id, gateway, backend, tuple(ports), answer, boot)
            holder.append(kernel)
            self.kernels[kernel_id] = kernel
        try:
            loaded = await loop.run_in_executor(None, tee.load_image, image)
            request, controller = self.boot_request(nonce, answer.sockets[0].getsockname()[1], controller_key)
            request = dataclasses.replace(request, entry=entry)  # which genuine boot answers (not secret)
            kernel.process = await loop.run_in_executor(
                None,
                lambda: tee.launch(
                    loaded,
                    inputs={BOOT_REQUEST_ENV: request.to_env()},
                    controller=controller,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                ),
            )
            kernel.output.follow(kernel.process.popen.stdout)
            kernel.launched_at = self.clock()
        except BaseException as error:
            await self.kill(kernel)
            self.kernels.pop(kernel_id, None)
            if isinstance(error, TeelabError):
                raise AgentRefusal("FAILED_PRECONDITION", f"launch failed: {error.message}") from None
            if isinstance(error, OSError):
                raise AgentRefusal("FAILED_PRECONDITION", f"launch failed: {error}") from None
            raise
        return kernel

    async def boot_channel(self, kernel: HostedKernel) -> Channel:
        """The boot's connection to the agent; AgentRefusal if it exits or stays silent."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.boot_timeout
        while not kernel.boot.done():
            if kernel.exit_code is not None or kernel.killed:
                raise AgentRefusal("ABORTED", f"the kernel exited with status {kernel.exit_code}")
            if loop.time() > deadline:
                raise AgentRefusal("DEADLINE_EXCEEDED", "the kernel boot did not answer")
            await asyncio.wait([kernel.boot], timeout=0.05)
        return kernel.boot.result()

    async def kill(self, kernel: HostedKernel) -> None:
        kernel.killed = True
        kernel.answer.close()
        if kernel.boot.done() and not kernel.boot.cancelled():
            kernel.boot.result()[1].close()
        process = kernel.process
        if process is not None:
            process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.get_running_loop().run_in_executor(None, process.wait, 10)
            process.cleanup()

    async def reap(self) -> list[str]:
        """Kill kernels no gateway came to relay within ``boot_timeout`` of their launch, and forget (removing
        their scratch space) kernels exited for ``retain_exited``: a gateway that vanished never kills them."""
        now, forgotten = self.clock(), []
        for kernel in list(self.kernels.values()):
            if kernel.process is None:
                continue  # still launching
            if kernel.state == "exited":
                if kernel.exited_at is None:
                    kernel.exited_at = now
                elif now - kernel.exited_at >= self.retain_exited:
                    await self.forget(kernel)
                    forgotten.append(kernel.kernel_id)
            elif not kernel.relayed and now - kernel.launched_at >= self.boot_timeout:
                await self.kill(kernel)
        return forgotten

    async def reap_forever(self, interval: float = 10.0) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reap()
            except Exception:  # one kernel's cleanup failing must not stop the reaping of the others
                log.exception("teelab host agent: reaping kernels failed")

    async def forget(self, kernel: HostedKernel) -> None:
        await self.kill(kernel)
        self.kernels.pop(kernel.kernel_id, None)

    async def close(self) -> None:
        for kernel in list(self.kernels.values()):
            await self.forget(kernel)
