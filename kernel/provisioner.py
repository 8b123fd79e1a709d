"""The ``teelab`` kernel provisioner: a Jupyter kernel that is attested before any code reaches it.

Lifecycle (ARCHITECTURE §3, docs/protocols/session-handshake.md):

``pre_launch``
    Fresh session values in the trusted domain, exactly as a local kernel gets them: five ports, the HMAC
    key, the CURVE keypair (jupyter_client's ``transport_encryption`` keys on the manager), the connection
    file; and a fresh 32-byte nonce. Every (re)start makes new ones.
``launch_kernel``
    Refuse a real-TEE kernel whose policy pins no image (``require_identity_pin``, as install does). Launch the
    measured kernel image through the TEE backend, passing only the nonce and where to answer, and hand the
    answer to :func:`teelab.gateway.session.attest_and_seal`: it verifies the evidence with the operator's
    policy (:mod:`teelab.kernel.policy_files`) and seals the bundle to the enclave's key only then. Any failure
    kills the launched process and raises :class:`~teelab.errors.AttestationFailed` naming the check.
``poll`` / ``wait`` / ``send_signal`` / ``kill`` / ``terminate``
    On the launched process. Interrupts travel as messages (the kernelspec says ``interrupt_mode:
    message``); a host signal never reaches a real enclave.
``cleanup``
    Removes what the launch left on the host and returns the ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
import subprocess
import uuid
from pathlib import Path
from typing import Any

import zmq
from jupyter_client.connect import KernelConnectionInfo, LocalPortCache
from jupyter_client.manager import KernelManager
from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase

from teelab.enclave_runtime.backend import EnclaveBackend, EnclaveProcess
from teelab.enclave_runtime.backends import get_backend
from teelab.enclave_runtime.images import KERNEL_IMAGE
from teelab.errors import ConfigError, EnclaveError, TeelabError
from teelab.gateway.result import AttestationResult
from teelab.gateway.session import SessionRefused, answer_channel, appraiser, attest_and_seal
from teelab.kernel.boot_output import BootOutput
from teelab.kernel.errors import KernelMisconfigured, KernelRefused
from teelab.kernel.policy_files import load_kernel_policy
from teelab.kernel.registry import REGISTRY
from teelab.kernel.settings import ProvisionerSettings
from teelab.paths import data_dir
from teelab.protocols.session import BOOT_REQUEST_ENV, NONCE_SIZE, PORT_NAMES, BootRequest, SessionBundle

_BACKENDS: dict[tuple[str, str], EnclaveBackend] = {}
# Settings a kernelspec may carry. The policy is deliberately not one of them: kernelspecs are user-editable.
_KERNELSPEC_SETTINGS = frozenset({"backend"})
PORT_ATTEMPTS = 3  # launches when the kernel finds a session port taken (then the refusal stands)


def ports_taken(failure: BaseException) -> bool:
    """The boot could not bind a session port: another process took it after the gateway chose it."""
    return isinstance(failure, KernelRefused) and "Address already in use" in failure.detail


class TeeProvisioner(ProvisionerSettings, KernelProvisionerBase):  # type: ignore[misc,metaclass]
    port_attempts = PORT_ATTEMPTS  # launches while the kernel finds a session port taken

    def __init__(self, **kwargs: Any) -> None:
        # The factory passes a kernelspec's `metadata.kernel_provisioner.config` as keyword arguments.
        refused = sorted(
            set(kwargs) - {"kernel_id", "kernel_spec", "parent", "config", "log"} - _KERNELSPEC_SETTINGS
        )
        if refused:
            raise KernelMisconfigured(
                f"teelab kernelspecs may only set {', '.join(sorted(_KERNELSPEC_SETTINGS))}; "
                f"refusing {', '.join(refused)}",
                hint="attestation policy belongs to the operator: `teelab kernel install --policy FILE`",
            )
        super().__init__(**kwargs)
        # A class-level dict would be shared by every kernel (research/jupyter.md §1.1).
        self.connection_info: KernelConnectionInfo = {}
        self.process: EnclaveProcess | None = None
        self._nonce = b""
        self._ports: list[int] = []
        self._jupyter_session = ""
        self.host_output = BootOutput()  # what the TEE process wrote to stdout/stderr: the host sees as much
        self.result: AttestationResult | None = None

    @property
    def km(self) -> KernelManager:
        if self.parent is None:
            raise ConfigError("the teelab provisioner runs only under a jupyter_client KernelManager")
        return self.parent  # type: ignore[no-any-return]

    @property
    def has_process(self) -> bool:
        return self.process is not None

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        km = self.km
        kwargs.pop("extra_arguments", None)
        kwargs.pop("transport_encryption", None)  # CURVE is not optional for a TEE kernel
        if km.transport != "tcp":
            raise ConfigError(
                "teelab kernels use the tcp transport (a TEE cannot share IPC sockets with the host)"
            )
        self._jupyter_session = (kwargs.get("env") or {}).get("JPY_SESSION_NAME", "")
        self._new_local_session()
        return await super().pre_launch(cmd=list(self.kernel_spec.argv), **kwargs)

    def _new_local_session(self) -> None:
        """New ports, HMAC key, CURVE keypair and nonce, and the connection file for them."""
        km = self.km
        self._release_ports()
        cache = LocalPortCache.instance()
        self._ports = [cache.find_available_port(km.ip) for _ in PORT_NAMES]
        for name, port in zip(PORT_NAMES, self._ports, strict=True):
            setattr(km, name, port)
        # Fresh on every (re)start; these never leave the trusted domain except sealed to the enclave.
        km.session.key = secrets.token_hex(32).encode()
        km.curve_publickey, km.curve_secretkey = zmq.curve_keypair()
        self._nonce = secrets.token_bytes(NONCE_SIZE)
        km.cleanup_connection_file()
        km.write_connection_file(jupyter_session=self._jupyter_session)
        self.connection_info = km.get_connection_info()

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        for attempt in range(1, self.port_attempts + 1):
            try:
                await self._launch_and_attest()
                return self.connection_info
            except BaseException as error:
                failure = await self._explain(error)
                await self._abort()
                if failure is None:
                    raise
                if attempt == self.port_attempts or not ports_taken(failure):
                    raise failure from None
            # A port chosen here was taken by another process before the kernel bound it (jupyter_client's
            # ports have the same race): a whole new session on new ports. The host can cause this too, but
            # gains only port_attempts launches, each attested afresh.
            self.log.warning("teelab kernel %s: a session port was taken; starting again", self.kernel_id)
            self._new_local_session()
        raise AssertionError("unreachable")  # the last attempt returns or raises

    async def poll(self) -> int | None:
        return self.process.poll() if self.process is not None else 0

    async def wait(self) -> int | None:
        while self.process is not None and self.process.poll() is None:
            await asyncio.sleep(0.05)
        return self.process.returncode if self.process is not None else 0

    async def send_signal(self, signum: int) -> None:
        if self.process is not None:
            self.process.send_signal(signum)

    async def kill(self, restart: bool = False) -> None:
        if self.process is not None:
            self.process.kill()

    async def terminate(self, restart: bool = False) -> None:
        if self.process is not None:
            self.process.terminate()

    async def cleanup(self, restart: bool = False) -> None:
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)
            self.process.cleanup()
            self.process = None
        self._release_ports()
        if not restart and self.kernel_id:
            REGISTRY.forget(self.kernel_id)

    def get_stable_start_time(self, recommended: float = 10.0) -> float:
        # Enclave start plus attestation takes longer than a local process; don't call it unstable too soon.
        return max(recommended, 30.0)

    async def get_provisioner_info(self) -> dict[str, Any]:
        info: dict[str, Any] = await super().get_provisioner_info()
        info["backend"] = self.backend
        info["pid"] = self.process.pid if self.process is not None else None
        return info

    # -- launching and attesting ----------------------------------------------------------------------

    def _backend(self) -> EnclaveBackend:
        # One backend object per process and data directory, so what it caches (parsed images, the file
        # hash cache) serves every kernel this server starts.
        key = (self.backend, str(data_dir()))
        if key not in _BACKENDS:
            _BACKENDS[key] = get_backend(self.backend)
        return _BACKENDS[key]

    async def _launch_and_attest(self) -> None:
        backend = self._backend()
        policy = load_kernel_policy(self.km.kernel_name, self.policy_settings())
        policy.require_identity_pin(self.backend, simulated=backend.simulated)
        image = backend.load_image(KERNEL_IMAGE, Path(self.image_path) if self.image_path else None)
        identity = self.gateway_identity()  # G: this kernel obeys it alone, and its evidence names it
        self.result = None
        self.host_output.clear()
        async with answer_channel(self.response_host) as answer:
            request = BootRequest(self._nonce, answer.host, answer.port, controller_key=identity.public)
            # Off the event loop: launching checks every trusted file, and the server has other work. Everything
            # the TEE writes to stdout/stderr is host-visible; the tail is kept for error messages.
            self.process = process = await asyncio.get_running_loop().run_in_executor(
                None,
                functools.partial(
                    backend.launch,
                    image,
                    inputs={BOOT_REQUEST_ENV: request.to_env()},
                    controller=identity.controller,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                ),
            )
            self.host_output.follow(process)
            channel = await answer.accept(
                timeout=self.launch_timeout, gone=lambda: process.poll() is not None
            )
            if channel is None:
                await self._settle()  # let the output pump catch the boot's last words
                raise self._failure("boot", f"the kernel boot exited with status {process.returncode}")
            self.result = await attest_and_seal(
                channel,
                nonce=self._nonce,
                identity=identity,
                appraise=appraiser(backend, policy, controller=identity.controller),
                make_bundle=functools.partial(self._bundle, controller=identity.controller),
                timeout=self.launch_timeout,
            )

    async def _bundle(
        self, enclave_key: bytes, result: AttestationResult, *, controller: bytes
    ) -> SessionBundle:
        """The session bundle for the attested ``enclave_key`` (only ever called after acceptance)."""
        km = self.km
        assert km.curve_publickey is not None and km.curve_secretkey is not None  # set in pre_launch
        self.result = result
        REGISTRY.record(self.kernel_id, kernel_name=km.kernel_name, backend=self.backend, result=result)
        return SessionBundle(
            session_id=str(uuid.uuid4()),
            kernel_id=self.kernel_id,
            ip=km.ip,
            ports=tuple(getattr(km, name) for name in PORT_NAMES),
            key=km.session.key,
            signature_scheme=km.session.signature_scheme,
            curve_publickey=km.curve_publickey,
            curve_secretkey=km.curve_secretkey,
            attestation=result.to_json(),
            key_broker=await self.session_grants()(enclave_key, controller),
        )

    # -- failures -------------------------------------------------------------------------------------

    async def _explain(self, error: BaseException) -> BaseException | None:
        """The error to raise for a failed launch (None: re-raise ``error`` as it is)."""
        if isinstance(error, KernelRefused | KernelMisconfigured):
            return error
        if isinstance(error, ConfigError):
            return KernelMisconfigured(error.message, hint=error.hint)
        if isinstance(error, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
            return None
        if isinstance(error, SessionRefused):
            self.result = error.result or self.result
            return self._failure(error.check, error.detail)
        if not isinstance(error, TeelabError | TimeoutError):
            # A bug or hostile input we did not foresee: still refuse (the process is killed), say so, and keep
            # the traceback in the server log.
            self.log.error(
                "teelab: unexpected error while attesting kernel %s", self.kernel_id, exc_info=error
            )
            await self._settle()
            return self._failure("internal_error", f"unexpected {type(error).__name__} during the handshake")
        # A boot that gives up says why on its way out; let it finish before quoting it.
        await self._settle()
        if isinstance(error, TimeoutError):
            return self._failure("timeout", f"no answer from the kernel within {self.launch_timeout:.0f} s")
        if isinstance(error, EnclaveError):
            return self._failure("enclave_image", error.message, hint=error.hint)
        assert isinstance(error, TeelabError)
        return self._failure("handshake", error.message, hint=error.hint)

    def _failure(self, check: str, detail: str, *, hint: str | None = None) -> KernelRefused:
        if check in ("boot", "timeout", "handshake") and self.host_output.last_line():
            detail = f"{detail}; the kernel boot said: {self.host_output.last_line()}"
        if self.kernel_id:
            REGISTRY.record(
                self.kernel_id,
                kernel_name=self.km.kernel_name,
                backend=self.backend,
                result=self.result,
                failure=(check, detail),
            )
        self.log.error("teelab kernel %s refused: %s: %s", self.kernel_id, check, detail)
        return KernelRefused(check, detail, hint=hint)

    async def _settle(self, timeout: float = 1.0) -> None:
        """Give the TEE process up to ``timeout`` to exit by itself, and its output pump time to drain."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.process is not None and self.process.poll() is None:
            if asyncio.get_running_loop().time() > deadline:
                return
            await asyncio.sleep(0.05)
        await asyncio.get_running_loop().run_in_executor(None, self.host_output.drain, timeout)

    async def _abort(self) -> None:
        if self.process is not None:
            self.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.get_running_loop().run_in_executor(None, self.process.wait, 10)
            self.process.cleanup()
            self.process = None
        self._release_ports()
        # The refused session's keys must not outlive it, even in the trusted domain.
        self.km.cleanup_connection_file()

    def _release_ports(self) -> None:
        cache = LocalPortCache.instance()
        for port in self._ports:
            cache.return_port(port)
        self._ports = []
