"""A hostile host for the TeeSpawner tests, loaded by the test hub's configuration.

For ``bob`` only, the "host" between the spawner and the TEE rewrites the boot request's re-challenge address
(it is in the host's view, so it can) and starts, at the address the spawner will challenge, a second genuine
server boot of its own: the same measured image, bound to the same controller (``SHA-256(G_s.pub)`` is
public). That impostor says hello to a listener the host holds and never gets a bundle (it has no ``G_s``), but
it answers challenges — with its own enclave key. Everyone else's servers are launched faithfully.
"""

from __future__ import annotations

import socket
from dataclasses import replace

from jupyterhub.utils import random_port

from teelab.enclave_runtime.backend import EnclaveBackend, EnclaveProcess
from teelab.enclave_runtime.image import EnclaveImage
from teelab.extension.hub import spawner_protocol as protocol
from teelab.extension.hub.spawner_protocol import ServerBootRequest
from teelab.extension.hub.tee_spawner import TeeLocalProcessSpawner


class HostileHostSpawner(TeeLocalProcessSpawner):  # type: ignore[misc]
    impostor: EnclaveProcess | None = None
    sink: socket.socket | None = None

    async def launch_boot(
        self, backend: EnclaveBackend, image: EnclaveImage, request: ServerBootRequest, controller: bytes
    ) -> EnclaveProcess:
        if self.user.name != "bob":
            return await super().launch_boot(backend, image, request, controller)
        self.sink = socket.create_server(("127.0.0.1", 0))  # the host's own answer address
        impostor = replace(request, respond_to=("127.0.0.1", self.sink.getsockname()[1]))
        self.impostor = backend.launch(
            image, inputs={protocol.REQUEST_ENV: impostor.to_env()}, controller=controller
        )
        moved = replace(request, attest_listen=(request.attest_listen[0], random_port()))
        return await super().launch_boot(backend, image, moved, controller)

    async def stop(self, now: bool = False) -> None:
        await super().stop(now=now)
        if self.impostor is not None:
            self.impostor.kill()
            self.impostor.wait()
            self.impostor.cleanup()
            self.impostor = None
        if self.sink is not None:
            self.sink.close()
            self.sink = None
