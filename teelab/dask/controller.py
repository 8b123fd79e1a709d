"""The cluster's controller: the party every node of one :class:`~teelab.dask.TeeCluster` obeys.

It holds, in its process memory only, the cluster's controller key ``G_c`` (Ed25519; ARCHITECTURE §3's
controller rule with the notebook kernel — or the Python process that made the cluster — as the gateway) and
the per-cluster CA (:class:`~teelab.dask.tls.ClusterCA`). Neither is ever written anywhere.

One node start (:meth:`ClusterController.start_node`): launch the kernel's measured image through the
backend with ``SHA-256(G_c.pub)`` bound at launch and a boot request asking for a Dask node; hold the
attested-session handshake of :mod:`teelab.gateway.session` on the answer channel — the evidence must carry
the session binding *with the node's TLS key*, pass the policy and name ``G_c`` as controller — and only then
certify the node's TLS key for its role and seal the :class:`~teelab.protocols.session.DaskNodeBundle` to it,
signed by ``G_c``. Any failure kills the launched process and is recorded.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import secrets
import socket
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from teelab.dask.agents import AgentNode, AgentPool, HostAgentError
from teelab.dask.own_kernel import OwnKernel, own_kernel
from teelab.dask.records import NodeAttestation, controller_outcome, measurement_of
from teelab.dask.tls import ClusterCA, InMemorySecurity, TlsIdentity, load_node_key
from teelab.enclave_runtime.backend import EnclaveBackend, EnclaveProcess
from teelab.enclave_runtime.backends import get_backend
from teelab.enclave_runtime.image import EnclaveImage
from teelab.enclave_runtime.images import KERNEL_IMAGE
from teelab.errors import ConfigError, EnclaveError, TeelabError
from teelab.gateway.identity import GatewayIdentity
from teelab.gateway.policy import AppraisalPolicy, SgxReference, load_policy
from teelab.gateway.result import AttestationResult
from teelab.gateway.session import (
    Channel,
    SessionRefused,
    answer_channel,
    appraiser,
    attest_hello_and_seal,
)
from teelab.protocols.session import (
    BOOT_REQUEST_ENV,
    ENTRY_DASK_NODE,
    NONCE_SIZE,
    BootRequest,
    DaskNodeBundle,
    Hello,
    KeyBrokerSection,
)
from teelab.timeutil import utcnow

log = logging.getLogger(__name__)
_TAIL_LINES = 20


class NodeRefused(TeelabError):
    """A node was not admitted: ``check`` names what failed (a policy check, ``boot``, ``timeout``, …)."""

    def __init__(self, name: str, check: str, detail: str) -> None:
        super().__init__(f"dask node {name} refused: {check}: {detail}")
        self.name, self.check, self.detail = name, check, detail


class OutputTail:
    """The last lines a node wrote to stderr (host-visible anyway): drained so the node never blocks on a
    full pipe, kept for the message when it fails."""

    def __init__(self, process: EnclaveProcess) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        stream = process.popen.stderr
        if stream is not None:
            threading.Thread(target=self._pump, args=(stream,), daemon=True, name="teelab-dask-out").start()

    def _pump(self, stream: object) -> None:
        with contextlib.suppress(OSError, ValueError):
            for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
                self.lines.append(raw.decode("utf-8", "replace").rstrip())

    def last(self) -> str:
        return next((line for line in reversed(self.lines) if line.strip()), "")


class LocalNode:
    """A node this process launched through its own backend."""

    where = "local"

    def __init__(self, process: EnclaveProcess) -> None:
        self.process = process
        self.output = OutputTail(process)

    @property
    def pid(self) -> int | None:
        return self.process.pid

    async def exited(self) -> bool:
        return self.process.poll() is not None

    async def last_words(self) -> str:
        await asyncio.sleep(0.2)  # the pump catches the boot's last words
        return self.output.last()

    async def stop(self, grace: float) -> None:
        await asyncio.get_running_loop().run_in_executor(None, stop_process, self.process, grace)


NodeHandle = LocalNode | AgentNode


@dataclass
class LaunchedNode:
    handle: NodeHandle
    record: NodeAttestation


def kernel_image(backend: EnclaveBackend, image_path: Path | None, own: OwnKernel | None) -> EnclaveImage:
    """The image every node is launched from: ``image_path`` if given; in a teelab kernel the very image the
    kernel runs in (teelab.dask.own_kernel: the launcher's folder, checked against the kernel's own verified
    measurement); elsewhere the one ``teelab kernel install`` built in this environment."""
    if image_path is not None or own is None:
        return backend.load_image(KERNEL_IMAGE, image_path)
    if own.image_dir is None:
        raise ConfigError(
            "this kernel cannot tell which image folder it was launched from",
            hint="pass it: TeeCluster(image='<the kernel image folder>') (or place the nodes on host agents)",
        )
    image = backend.load_image(KERNEL_IMAGE, own.image_dir)
    label, measured = backend.describe_measurement(image)
    if measured != own.measurement:
        raise ConfigError(
            f"the image at {own.image_dir} is not the one this kernel runs in: its {label} is {measured}, "
            f"this kernel's is {own.measurement}",
            hint="the host moved or rebuilt it; pass the kernel's image explicitly: TeeCluster(image=...)",
        )
    return image


def default_policy(
    backend: EnclaveBackend, image_path: Path | None, own: OwnKernel | None = None
) -> AppraisalPolicy:
    """Without a policy: in a teelab kernel, exactly the kernel's own measurement (teelab.dask.own_kernel); on
    the simulated TEE elsewhere, exactly the kernel image this environment built (as the sim policy ``teelab
    kernel install`` writes); on real TEEs outside a kernel there is no safe default."""
    if own is not None:
        return own.policy
    if not backend.simulated:
        raise ConfigError(
            f"a {backend.name} cluster needs an attestation policy",
            hint="TeeCluster(policy='kernel-policy.toml') — the policy that pins the kernel image (docs/policy.md)",
        )
    image = backend.load_image(KERNEL_IMAGE, image_path)
    return AppraisalPolicy(
        id=f"teelab-dask-{backend.name}",
        allow_simulation=True,
        allow_debug=image.sigstruct.debug,
        sgx=SgxReference(
            mrenclave=(image.mrenclave.hex(),),
            mrsigner=(image.mrsigner.hex(),),
            isv_prod_id=image.sigstruct.isv_prod_id,
        ),
    )


def resolve_policy(
    policy: str | Path | AppraisalPolicy | None,
    backend: EnclaveBackend,
    image_path: Path | None,
    own: OwnKernel | None = None,
) -> AppraisalPolicy:
    if isinstance(policy, AppraisalPolicy):
        resolved = policy
    elif policy is not None:
        resolved = load_policy(policy)
    else:
        resolved = default_policy(backend, image_path, own)
    resolved.require_identity_pin(backend.name, simulated=backend.simulated)
    return resolved


def tls_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def free_port(host: str) -> int:
    """A port for the scheduler to listen on, chosen by the controller (as a kernel's ports are)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def delegated_key_broker(enclave_key: bytes, controller: bytes) -> KeyBrokerSection | None:
    """The grant this process's key-release session delegates to a worker's attested E.pub, when it has one
    (teelab.sealed_store.dask_keys; no reader there, or no session here: no key broker for the worker)."""
    try:
        from teelab.sealed_store.dask_keys import delegate_grant
    except ImportError:
        return None
    try:
        return delegate_grant(enclave_key, controller)
    except TeelabError as error:
        log.warning("teelab dask: no delegated grant for a worker: %s", error.message)
        return None


class ClusterController:
    def __init__(
        self,
        *,
        backend: str,
        policy: str | Path | AppraisalPolicy | None,
        image: Path | None,
        host: str,
        launch_timeout: float,
        agents: AgentPool | None = None,
        remote_scheduler: bool = False,
        idle_timeout: float | None = None,
    ) -> None:
        """``agents``: place the workers (and with ``remote_scheduler`` the scheduler) on host agents;
        ``idle_timeout``: seconds without a client and a task after which the scheduler closes (None: never)."""
        if remote_scheduler and agents is None:
            raise ConfigError("a scheduler on a host agent needs TeeCluster(hosts=...)")
        self.agents = agents
        self.remote_scheduler = remote_scheduler
        self.idle_timeout = idle_timeout
        self.cluster_id = uuid.uuid4().hex[:12]
        self.host = host
        self.launch_timeout = launch_timeout
        own = own_kernel(backend)  # in a teelab kernel: its own backend, image and measurement
        self.backend = own.backend if own is not None else get_backend(backend)
        # Every node on an agent (its own copy of the image, judged by the policy): none is launched here, so
        # a kernel in a TEE, which cannot launch one, needs no image folder either.
        everything_remote = agents is not None and remote_scheduler and image is None
        self.image: EnclaveImage | None = (
            None if everything_remote else kernel_image(self.backend, image, own)
        )
        self.policy = resolve_policy(policy, self.backend, image, own)
        self.identity = GatewayIdentity.generate()  # G_c: in this process's memory, nowhere else
        self.ca = ClusterCA(self.cluster_id)
        self.appraise = appraiser(self.backend, self.policy, controller=self.identity.controller)
        self.records: list[NodeAttestation] = []
        client_key = ec.generate_private_key(ec.SECP256R1())
        client_certificate = self.ca.issue(client_key.public_key(), "client", self.cluster_id)
        self.security = InMemorySecurity(TlsIdentity(self.ca.certificate_pem, client_certificate, client_key))
        self.scheduler_address = f"tls://{host}:{free_port(host)}"

    def on_agents(self, role: str) -> bool:
        return self.agents is not None and (role == "worker" or self.remote_scheduler)

    async def start_node(self, role: str, name: str, *, nthreads: int = 1) -> LaunchedNode:
        """Launch, attest, certify and configure one node; raises :class:`NodeRefused` (process killed)."""
        loop = asyncio.get_running_loop()
        nonce = secrets.token_bytes(NONCE_SIZE)
        handle: NodeHandle | None = None
        accepted: list[AttestationResult] = []

        async def make_bundle(hello: Hello, result: AttestationResult) -> DaskNodeBundle:
            accepted.append(result)
            assert hello.tls_key is not None  # attest_hello_and_seal(tls_key=True) requires it
            certificate = self.ca.issue(load_node_key(hello.tls_key), role, name)
            key_broker = None
            if role == "worker":
                key_broker = await loop.run_in_executor(
                    None, delegated_key_broker, hello.enclave_key, self.identity.controller
                )
            return DaskNodeBundle(
                cluster_id=self.cluster_id,
                role=role,
                name=name,
                key=secrets.token_bytes(32),
                certificate=certificate,
                ca_certificate=self.ca.certificate_pem,
                address=self.scheduler_address,
                nthreads=nthreads,
                key_broker=key_broker,
                attestation=result.to_json(),
                idle_timeout=self.idle_timeout if role == "scheduler" else None,
            )

        def launched(node: NodeHandle) -> None:
            nonlocal handle
            handle = node

        try:
            async with self._boot_channel(role, name, nonce, launched) as channel:
                result = await attest_hello_and_seal(
                    channel,
                    nonce=nonce,
                    identity=self.identity,
                    appraise=self.appraise,
                    make_bundle=make_bundle,
                    timeout=self.launch_timeout,
                    tls_key=True,
                )
        except BaseException as error:
            said = ""
            if handle is not None and isinstance(error, TeelabError | TimeoutError):
                with contextlib.suppress(Exception):
                    said = await handle.last_words()
            refusal = self._refusal(name, error, said)
            self.records.append(self._record(name, role, error_result(error, accepted), refusal, handle))
            if handle is not None:
                await handle.stop(0.0)
            if refusal is None:
                raise
            raise refusal from None
        record = self._record(name, role, result, None, handle)
        self.records.append(record)
        assert handle is not None
        return LaunchedNode(handle, record)

    @contextlib.asynccontextmanager
    async def _boot_channel(
        self, role: str, name: str, nonce: bytes, launched: Callable[[NodeHandle], None]
    ) -> AsyncIterator[Channel]:
        """Launch the node (here, or on an agent) and yield the connection its boot answers on."""
        if self.agents is not None and self.on_agents(role):
            async with self.agents.launched(KERNEL_IMAGE, nonce, self.identity.public) as (
                node,
                ports,
                channel,
            ):
                launched(node)
                if role == "scheduler":
                    # It listens on a port the agent reports free on its host, at the address we dialled.
                    if not ports or not 0 < ports[0] < 65536:
                        raise NodeRefused(name, "host_agent", f"{node.where} reported no usable port")
                    self.scheduler_address = f"tls://{tls_host(node.client.target.host)}:{ports[0]}"
                yield channel
            return
        loop = asyncio.get_running_loop()
        assert self.image is not None  # loaded unless every node goes to an agent
        image = self.image
        async with answer_channel(self.host) as answer:
            request = BootRequest(
                nonce,
                answer.host,
                answer.port,
                controller_key=self.identity.public,
                entry=ENTRY_DASK_NODE,
            )
            process = await loop.run_in_executor(
                None,
                functools.partial(
                    self.backend.launch,
                    image,
                    inputs={BOOT_REQUEST_ENV: request.to_env()},
                    controller=self.identity.controller,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                ),
            )
            launched(LocalNode(process))
            answered = await answer.accept(
                timeout=self.launch_timeout, gone=lambda: process.poll() is not None
            )
            if answered is None:
                raise NodeRefused(name, "boot", f"the node boot exited with status {process.returncode}")
            yield answered

    async def close(self) -> None:
        if self.agents is not None:
            await self.agents.close()

    def _refusal(self, name: str, error: BaseException, last_words: str) -> NodeRefused | None:
        said = f"; the node said: {last_words}" if last_words else ""
        if isinstance(error, NodeRefused):
            return NodeRefused(name, error.check, error.detail + said)
        if isinstance(error, SessionRefused):
            return NodeRefused(name, error.check, error.detail)
        if isinstance(error, TimeoutError):
            return NodeRefused(name, "timeout", f"no answer within {self.launch_timeout:.0f} s{said}")
        if isinstance(error, EnclaveError):  # the launch itself: the image, its trusted files, the backend
            return NodeRefused(name, "enclave_image", error.message)
        if isinstance(error, HostAgentError):
            return NodeRefused(name, "host_agent", error.message)
        if isinstance(error, TeelabError):
            return NodeRefused(name, "handshake", error.message + said)
        return None  # cancelled, or a bug: re-raised as it is (the process is still killed)

    def _record(
        self,
        name: str,
        role: str,
        result: AttestationResult | None,
        refusal: NodeRefused | None,
        handle: NodeHandle | None,
    ) -> NodeAttestation:
        return NodeAttestation(
            name=name,
            role=role,
            verdict=result.verdict if result is not None else "refused",
            measurement=measurement_of(result.claims) if result is not None else None,
            controller=controller_outcome(result.checks) if result is not None else "not checked",
            time=result.verified_at if result is not None else utcnow(),
            tee=result.tee if result is not None else None,
            simulated=result.simulated if result is not None else False,
            failure=f"{refusal.check}: {refusal.detail}" if refusal is not None else None,
            pid=handle.pid if handle is not None else None,
            result=result.to_json() if result is not None else None,
        )


def error_result(error: BaseException, accepted: list[AttestationResult]) -> AttestationResult | None:
    if isinstance(error, SessionRefused) and error.result is not None:
        return error.result
    return accepted[0] if accepted else None


def stop_process(process: EnclaveProcess, grace: float) -> None:
    """End a node: ``grace`` seconds to leave by itself (the cluster has asked it to: a retired worker, a
    terminated scheduler), then SIGTERM, then SIGKILL; remove what its launch left."""
    for signal_it, wait in ((None, grace), (process.terminate, 2.0), (process.kill, 10.0)):
        if process.poll() is not None:
            break
        if signal_it is not None:
            signal_it()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=wait)
    process.cleanup()
