"""``teelab-remote``: the teelab provisioner with its kernels on remote TEE hosts (docs/remote-hosts.md).

The lifecycle is :class:`~teelab.kernel.provisioner.TeeProvisioner`'s; what differs is where the kernel
runs. The operator lists host agents (``c.RemoteTeeProvisioner.hosts``); a launch picks the least loaded
agent that offers the kernel's backend, asks it to launch the image under this gateway's controller, and runs
the same :func:`~teelab.gateway.session.attest_and_seal` over the agent's relay. Evidence is verified with
this gateway's own backend object (its roots and collateral), never with anything the agent supplies. The
kernel's ports are the agent's (untrusted: they go into the sealed bundle, and a listener that is not the
attested kernel cannot complete CURVE with the session's key). The client connects to the address the
gateway dialled, not to one the agent names. A kernelspec may name its own hosts within the operator's
allow-list, and the gateway authenticates with a token or a client certificate (:mod:`.host_pool`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
from pathlib import Path
from typing import Any

import grpc
import zmq
from jupyter_core.paths import SYSTEM_JUPYTER_PATH
from traitlets import Dict, Enum, List, Unicode

from teelab.enclave_runtime.backend import EnclaveBackend
from teelab.enclave_runtime.images import KERNEL_IMAGE
from teelab.errors import ConfigError, TeelabError
from teelab.gateway.identity import GatewayIdentity
from teelab.gateway.policy import AppraisalPolicy
from teelab.gateway.session import appraiser, attest_and_seal
from teelab.kernel.host_client import HostAgentError, HostClient, HostTarget
from teelab.kernel.host_pool import (
    KERNELSPEC_HOST_KEYS,
    HostCredentials,
    kernelspec_host_list,
    kernelspec_pool,
    load_credentials,
)
from teelab.kernel.placement import placed
from teelab.kernel.policy_files import load_kernel_policy
from teelab.kernel.provisioner import TeeProvisioner
from teelab.protocols.session import NONCE_SIZE, PORT_NAMES, HandshakeError

LOCAL_IP = "127.0.0.1"  # where pre_launch's placeholder ports are taken before a host is chosen
PORT_RETRIES = 1
LOST_A_PORT = "failed to start inside the TEE: ZMQError"  # the boot could not bind a port it was given


class RemoteTeeProvisioner(TeeProvisioner):
    port_attempts = 1  # _launch_and_attest starts again itself when the host loses a port (PORT_RETRIES)

    hosts = List(
        Unicode(),
        config=True,
        help="Host agents (grpcs://HOST:PORT; grpc:// on loopback only) that run this server's kernels.",
    )
    host_token_file = Unicode(
        None, allow_none=True, config=True, help="This gateway's token for the host agents (a 0600 file)."
    )
    host_ca_file = Unicode(
        None,
        allow_none=True,
        config=True,
        help="PEM CA of the host agents' TLS certificates (default: system).",
    )
    client_cert_file = Unicode(
        None,
        allow_none=True,
        config=True,
        help="This gateway's TLS client certificate (PEM chain) for agents run with --client-ca.",
    )
    client_key_file = Unicode(
        None, allow_none=True, config=True, help="The client certificate's private key (a 0600 file)."
    )
    host_settings = Dict(
        key_trait=Unicode(),
        value_trait=Dict(),
        config=True,
        help="Per host address: host_token_file, host_ca_file, client_cert_file, client_key_file for that "
        "agent only (overriding the settings above).",
    )
    allowed_hosts = List(
        Unicode(),
        config=True,
        help="Host agents a kernelspec may name besides `hosts` (a kernelspec may name no others).",
    )
    kernelspec_hosts = Enum(
        ["never", "system", "any"],
        "system",
        config=True,
        help="Which kernelspecs may name their own hosts (within hosts + allowed_hosts): none, those in "
        "system_kernelspec_dirs (default), or any, including a user's own.",
    )
    system_kernelspec_dirs = List(
        Unicode(),
        [str(Path(path) / "kernels") for path in SYSTEM_JUPYTER_PATH],
        config=True,
        help="Kernelspec folders only the administrator writes (default: Jupyter's system paths).",
    )

    def __init__(self, **kwargs: Any) -> None:
        # A kernelspec's own hosts (metadata.kernel_provisioner.config), judged at launch by host_pool's rules.
        named = [kwargs.pop(key) for key in sorted(KERNELSPEC_HOST_KEYS & set(kwargs))]
        super().__init__(**kwargs)
        self._kernelspec_hosts = named
        self.remote: tuple[HostClient, str] | None = None
        self._dead: int | None = None
        self._session_name = ""

    @property
    def has_process(self) -> bool:
        return self.remote is not None

    def pool(self) -> list[str]:
        """This kernel's host agents: the kernelspec's own if the operator allows them, else ``hosts``."""
        if not self._kernelspec_hosts:
            if not self.hosts:
                raise ConfigError("c.RemoteTeeProvisioner.hosts names no host agent")
            return list(self.hosts)
        spec = self.kernel_spec
        return kernelspec_pool(
            kernelspec_host_list(self._kernelspec_hosts),
            kernelspec=self.km.kernel_name,
            resource_dir=getattr(spec, "resource_dir", None),
            operator_hosts=self.hosts,
            allowed_hosts=self.allowed_hosts,
            mode=self.kernelspec_hosts,
            system_dirs=self.system_kernelspec_dirs,
        )

    def credentials(self, target: HostTarget) -> HostCredentials:
        """What this gateway presents to ``target``: its ``host_settings`` entry over the general settings."""
        own: dict[str, Any] = {}
        for text, entry in self.host_settings.items():
            if str(HostTarget.parse(text)) == str(target):
                own = dict(entry)
        unknown = sorted(
            set(own) - {"host_token_file", "host_ca_file", "client_cert_file", "client_key_file"}
        )
        if unknown:
            raise ConfigError(f"c.RemoteTeeProvisioner.host_settings[{str(target)!r}]: unknown {unknown}")
        return load_credentials(
            own.get("host_token_file", self.host_token_file),
            own.get("host_ca_file", self.host_ca_file),
            own.get("client_cert_file", self.client_cert_file),
            own.get("client_key_file", self.client_key_file),
        )

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        self.km.ip = LOCAL_IP  # placeholders; the chosen agent's address and ports replace them
        self._session_name = (kwargs.get("env") or {}).get("JPY_SESSION_NAME", "")
        return await super().pre_launch(**kwargs)

    async def _launch_and_attest(self) -> None:
        backend = self._backend()  # this gateway's: its roots and collateral judge the remote evidence
        policy = load_kernel_policy(self.km.kernel_name, self.policy_settings())
        # As the local provisioner: a real-TEE kernel's policy must pin its image.
        policy.require_identity_pin(self.backend, simulated=backend.simulated)
        identity = self.gateway_identity()
        targets = [HostTarget.parse(text) for text in self.pool()]
        pool = [(target, self.credentials(target)) for target in targets]  # all checked before any call
        for attempt in range(PORT_RETRIES + 1):
            try:
                return await self._start(pool, backend, policy, identity)
            except HandshakeError as error:
                if attempt == PORT_RETRIES or LOST_A_PORT not in error.message:
                    raise
            # A process on the host took a port the agent promised before the kernel bound it. A new session
            # (nonce, keys) on new ports; at most PORT_RETRIES times, so a lying agent gains nothing by it.
            self.log.warning("teelab: kernel %s lost a port on its host; starting it again", self.kernel_id)
            await self._drop_remote()
            self._fresh_session()

    async def _start(
        self,
        pool: list[tuple[HostTarget, HostCredentials]],
        backend: EnclaveBackend,
        policy: AppraisalPolicy,
        identity: GatewayIdentity,
    ) -> None:
        self.result, self._dead = None, None
        self.host_output.clear()
        async with placed(pool, self.backend) as client:
            try:
                reply = await client.launch(self.backend, KERNEL_IMAGE, self._nonce, identity.public)
            except BaseException:
                await client.close()
                raise
        self.remote = (client, reply.kernel_id)
        ports = tuple(reply.ports)
        if (
            len(ports) != len(PORT_NAMES)
            or len(set(ports)) != len(ports)
            or not all(0 < p < 65536 for p in ports)
        ):
            raise HostAgentError(f"host agent {client.target} reported unusable ports {list(ports)[:8]}")
        km = self.km
        self._release_ports()  # the local placeholders
        km.ip = client.target.host
        for name, port in zip(PORT_NAMES, ports, strict=True):
            setattr(km, name, port)
        km.cleanup_connection_file()
        km.write_connection_file(jupyter_session=self._session_name)
        self.connection_info = km.get_connection_info()
        async with client.relay(reply.kernel_id) as channel:
            self.result = await attest_and_seal(
                channel,
                nonce=self._nonce,
                identity=identity,
                appraise=appraiser(backend, policy, controller=identity.controller),
                make_bundle=functools.partial(self._bundle, controller=identity.controller),
                timeout=self.launch_timeout,
            )

    def _fresh_session(self) -> None:
        """New session secrets for another start, as pre_launch makes them."""
        km = self.km
        km.session.key = secrets.token_hex(32).encode()
        km.curve_publickey, km.curve_secretkey = zmq.curve_keypair()
        self._nonce = secrets.token_bytes(NONCE_SIZE)

    async def _explain(self, error: BaseException) -> BaseException | None:
        if isinstance(error, HostAgentError):
            return self._failure("host_agent", error.message)
        if self.remote is not None and isinstance(error, TeelabError | TimeoutError):
            said = await self.remote[0].last_words(self.remote[1])  # the host saw it; the agent may lie
            if said:
                self.host_output.append(f"{said} (as host agent {self.remote[0].target} reports it)")
        return await super()._explain(error)

    # -- the remote kernel's lifecycle -----------------------------------------------------------------

    async def poll(self) -> int | None:
        if self.remote is None:
            return 0
        if self._dead is not None:
            return self._dead
        client, kernel_id = self.remote
        try:
            status = await client.status(kernel_id, timeout=3.0)
        except HostAgentError:
            # An agent that cannot be reached took its kernels with it (they end with their launcher).
            self._dead = -1
            return self._dead
        if status.exited:
            self._dead = status.exit_code or -1
            return self._dead
        return None

    async def wait(self) -> int | None:
        while (code := await self.poll()) is None:
            await asyncio.sleep(0.1)
        return code

    async def send_signal(self, signum: int) -> None:
        pass  # interrupts are messages (interrupt_mode: message); a remote host is not signalled

    async def kill(self, restart: bool = False) -> None:
        await self._kill_remote()

    async def terminate(self, restart: bool = False) -> None:
        await self._kill_remote()

    async def cleanup(self, restart: bool = False) -> None:
        await self._drop_remote()
        await super().cleanup(restart)

    async def get_provisioner_info(self) -> dict[str, Any]:
        info = await super().get_provisioner_info()
        info["host"] = str(self.remote[0].target) if self.remote else None
        return info

    async def _abort(self) -> None:
        await self._drop_remote()
        await super()._abort()

    async def _drop_remote(self) -> None:
        await self._kill_remote()
        if self.remote is not None:
            await self.remote[0].close()
            self.remote = None

    async def _kill_remote(self) -> None:
        if self.remote is not None and self._dead is None:
            client, kernel_id = self.remote
            with contextlib.suppress(HostAgentError, grpc.aio.AioRpcError):
                await client.kill(kernel_id)
            self._dead = -9
