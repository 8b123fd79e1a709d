"""The ``teelab`` kernel provisioner: a Jupyter kernel that is attested before any code reaches it.

Lifecycle (ARCHITECTURE §3, docs/protocols/session-handshake.md):

``pre_launch``
    Fresh session values in the trusted domain, exactly as a local kernel gets them: five ports, the HMAC
    key, the CURVE keypair (jupyter_client's ``transport_encryption`` keys on the manager), the connection
    file; and a fresh 32-byte nonce. Every (re)start makes new ones.
``launch_kernel``
    Launch the measured kernel image through the TEE backend, passing only the nonce and where to answer.
    Verify the evidence it sends with the operator's policy and the session binding; only then seal the
    bundle (HMAC key, CURVE keypair, ports, session id, the attestation result) to the enclave's key, and
    return once the kernel confirms, with a MAC over the HMAC key, that it is listening. Any failure kills
    the launched process and raises :class:`~teelab.errors.AttestationFailed` naming the check.
``poll`` / ``wait`` / ``send_signal`` / ``kill`` / ``terminate``
    On the launched process. Interrupts travel as messages (the kernelspec says ``interrupt_mode:
    message``); a host signal never reaches a real enclave.
``cleanup``
    Removes what the launch left on the host and returns the ports.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import os
import secrets
import subprocess
import threading
import uuid
from pathlib import Path
from typing import Any

import zmq
from jupyter_client.connect import KernelConnectionInfo, LocalPortCache
from jupyter_client.manager import KernelManager
from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase
from traitlets import Bool, Float, Unicode

from teelab.enclave_runtime.backend import EnclaveBackend, EnclaveProcess, Evidence
from teelab.enclave_runtime.backends import get_backend
from teelab.enclave_runtime.images import KERNEL_IMAGE
from teelab.errors import ConfigError, EnclaveError, TeelabError
from teelab.gateway.anchors import TrustAnchors
from teelab.gateway.handshake import (
    BootRequest,
    b64,
    check_ready,
    parse_hello,
    parse_ready,
    seal_bundle,
    session_report_data,
)
from teelab.gateway.policy import AppraisalPolicy, load_policy
from teelab.gateway.result import AttestationResult
from teelab.gateway.verifier import default_anchors, verify_evidence
from teelab.gateway.wire import encode_frame, read_frame
from teelab.kernel.errors import KernelMisconfigured, KernelRefused
from teelab.kernel.policy_files import find_policy, policy_dirs
from teelab.kernel.registry import REGISTRY
from teelab.paths import data_dir
from teelab.timeutil import utcnow

_BACKENDS: dict[tuple[str, str], EnclaveBackend] = {}
_PORT_NAMES = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
# Settings a kernelspec may carry. The policy is deliberately not one of them: kernelspecs are user-editable.
_KERNELSPEC_SETTINGS = frozenset({"backend"})


class TeeProvisioner(KernelProvisionerBase):  # type: ignore[misc]
    backend = Unicode("sim", config=True, help="The TEE backend that runs the kernel (sim, gramine, ...).")
    policy_file = Unicode(
        None,
        allow_none=True,
        config=True,
        help="The appraisal policy for every teelab kernel of this server (default: the policy installed "
        "for the kernelspec by `teelab kernel install`). Server configuration only, never a kernelspec.",
    )
    allow_user_policies = Bool(
        True,
        config=True,
        help="Look for policies in the user's configuration folder too (turn off on shared servers).",
    )
    image_path = Unicode(None, allow_none=True, config=True, help="The enclave image folder to launch.")
    launch_timeout = Float(
        120.0, config=True, help="Seconds to wait for the kernel's evidence and readiness."
    )
    response_host = Unicode("127.0.0.1", config=True, help="Where the kernel boot answers the gateway.")
    kbs_address = Unicode(
        None,
        allow_none=True,
        config=True,
        help="The key broker (HOST:PORT, or grpcs://HOST:PORT for TLS) that releases dataset keys to this server's kernels "
        "(default: $TEELAB_KBS, or the local broker started by `teelab kbs serve`).",
    )
    kbs_token_file = Unicode(
        None,
        allow_none=True,
        config=True,
        help="The key broker's gateway token (default: the local broker's).",
    )
    kbs_ca_file = Unicode(
        None,
        allow_none=True,
        config=True,
        help="PEM CA certificate of a key broker at grpcs://HOST:PORT with a private CA (default: "
        "$TEELAB_KBS_CA; else the system's roots). The kernel receives it in its sealed session bundle.",
    )
    dataset_store = Unicode(
        None, allow_none=True, config=True, help="Where sealed datasets are (an fsspec URL; default: local)."
    )
    kbs_user = Unicode(
        None,
        allow_none=True,
        config=True,
        help="Whom the session grants name (default: $JUPYTERHUB_USER under JupyterHub, else the login name).",
    )

    def __init__(self, **kwargs: Any) -> None:
        # The factory passes a kernelspec's `metadata.kernel_provisioner.config` as keyword arguments.
        spec_settings = set(kwargs) - {"kernel_id", "kernel_spec", "parent", "config", "log"}
        refused = sorted(spec_settings - _KERNELSPEC_SETTINGS)
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
        # What the TEE process wrote to its stdout/stderr: the host sees exactly this much.
        self.host_output: collections.deque[str] = collections.deque(maxlen=200)
        self.result: AttestationResult | None = None
        self._pump: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------------

    @property
    def km(self) -> KernelManager:
        manager = self.parent
        if manager is None:
            raise ConfigError("the teelab provisioner runs only under a jupyter_client KernelManager")
        return manager  # type: ignore[no-any-return]

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
        self._release_ports()
        cache = LocalPortCache.instance()
        self._ports = [cache.find_available_port(km.ip) for _ in _PORT_NAMES]
        for name, port in zip(_PORT_NAMES, self._ports, strict=True):
            setattr(km, name, port)
        # Fresh on every (re)start; these never leave the trusted domain except sealed to the enclave.
        km.session.key = secrets.token_hex(32).encode()
        km.curve_publickey, km.curve_secretkey = zmq.curve_keypair()
        self._nonce = secrets.token_bytes(32)
        km.cleanup_connection_file()
        env = kwargs.get("env") or {}
        km.write_connection_file(jupyter_session=env.get("JPY_SESSION_NAME", ""))
        self.connection_info = km.get_connection_info()
        return await super().pre_launch(cmd=list(self.kernel_spec.argv), **kwargs)

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        try:
            await self._handshake()
        except BaseException as error:
            failure = await self._explain(error)
            await self._abort()
            if failure is None:
                raise
            raise failure from None
        return self.connection_info

    async def _explain(self, error: BaseException) -> BaseException | None:
        """The error to raise for a failed launch (None: re-raise ``error`` as it is)."""
        if isinstance(error, KernelRefused | KernelMisconfigured):
            return error
        if isinstance(error, ConfigError):
            return KernelMisconfigured(error.message, hint=error.hint)
        if isinstance(error, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
            return None
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

    async def _settle(self, timeout: float = 1.0) -> None:
        """Give the TEE process up to ``timeout`` to exit by itself, and its output pump time to drain."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.process is not None and self.process.poll() is None:
            if asyncio.get_running_loop().time() > deadline:
                return
            await asyncio.sleep(0.05)
        if self._pump is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._pump.join, timeout)

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

    # -- the handshake --------------------------------------------------------------------------------

    def _backend(self) -> EnclaveBackend:
        # One backend object per process and data directory, so what it caches (parsed images, the file
        # hash cache) serves every kernel this server starts.
        key = (self.backend, str(data_dir()))
        if key not in _BACKENDS:
            _BACKENDS[key] = get_backend(self.backend)
        return _BACKENDS[key]

    def _policy(self) -> AppraisalPolicy:
        if self.policy_file:
            return load_policy(self.policy_file)
        name = self.km.kernel_name
        found = find_policy(name, allow_user=self.allow_user_policies)
        if found is None:
            searched = ", ".join(str(d) for d in policy_dirs(allow_user=self.allow_user_policies))
            raise ConfigError(
                f"no attestation policy for kernel {name!r} (looked for {name}.toml in {searched})",
                hint=f"install one with `teelab kernel install --name {name} --policy FILE`",
            )
        return load_policy(found)

    def _anchors(self, backend: EnclaveBackend) -> TrustAnchors:
        anchors = default_anchors()
        if backend.simulated:
            from teelab.enclave_runtime.sim.backend import SimBackend

            if isinstance(backend, SimBackend):
                anchors = anchors.with_simulated_root(
                    backend.platform.root_fingerprint, f"teelab simulated platform ({backend.platform_path})"
                )
        return anchors

    def _failure(self, check: str, detail: str, *, hint: str | None = None) -> KernelRefused:
        tail = "".join(self.host_output).strip()
        if check in ("boot", "timeout", "handshake") and tail:
            detail = f"{detail}; the kernel boot said: {tail.splitlines()[-1][:300]}"
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

    def _collect_output(self, process: EnclaveProcess) -> None:
        stream = process.popen.stdout
        if stream is None:
            return

        def pump() -> None:
            for line in iter(stream.readline, b""):
                self.host_output.append(line.decode("utf-8", "replace"))

        self._pump = threading.Thread(target=pump, name="teelab-boot-output", daemon=True)
        self._pump.start()

    async def _handshake(self) -> None:
        backend = self._backend()
        policy = self._policy()
        image = backend.load_image(KERNEL_IMAGE, Path(self.image_path) if self.image_path else None)
        self.result = None
        self.host_output.clear()
        connection: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.get_running_loop().create_future()
        )

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if connection.done():
                writer.close()  # one boot answers per session; anything else is noise from the host
            else:
                connection.set_result((reader, writer))

        server = await asyncio.start_server(accept, host=self.response_host, port=0)
        try:
            port = server.sockets[0].getsockname()[1]
            request = BootRequest(nonce=self._nonce, host=self.response_host, port=port)
            # Everything the TEE writes to stdout/stderr is host-visible; keep the tail for error messages.
            # Off the event loop: launching checks every trusted file, and the server has other work.
            self.process = await asyncio.get_running_loop().run_in_executor(
                None,
                functools.partial(
                    backend.launch,
                    image,
                    inputs={"TEELAB_BOOT_REQUEST": request.to_env()},
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                ),
            )
            self._collect_output(self.process)
            reader, writer = await self._await_boot(connection)
            try:
                await self._converse(reader, writer, backend, policy)
            finally:
                writer.close()
        finally:
            server.close()

    async def _await_boot(
        self, connection: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        deadline = asyncio.get_running_loop().time() + self.launch_timeout
        while not connection.done():
            if self.process is not None and self.process.poll() is not None:
                await self._settle()  # let the output pump catch the boot's last words
                raise self._failure("boot", f"the kernel boot exited with status {self.process.returncode}")
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError
            await asyncio.wait([connection], timeout=0.05)
        return connection.result()

    async def _converse(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        backend: EnclaveBackend,
        policy: AppraisalPolicy,
    ) -> None:
        km = self.km
        assert km.curve_publickey is not None and km.curve_secretkey is not None  # set in pre_launch
        hello = await asyncio.wait_for(read_frame(reader), self.launch_timeout)
        enclave_key, evidence_json = parse_hello(hello)
        evidence = Evidence.from_json(evidence_json)
        at = utcnow()
        result = verify_evidence(
            evidence.blob,
            collateral=backend.collateral_for(evidence.blob, at),
            certs=evidence.certificates,
            at=at,
            anchors=self._anchors(backend),
            policy=policy,
            expected_report_data=session_report_data(enclave_key, self._nonce),
        )
        self.result = result
        if not result.ok:
            failed = result.failed_checks[0] if result.failed_checks else None
            writer.write(encode_frame({"type": "refused", "reason": failed.name if failed else "rejected"}))
            await writer.drain()
            raise self._failure(failed.name if failed else "policy", failed.detail if failed else "rejected")
        REGISTRY.record(self.kernel_id, kernel_name=km.kernel_name, backend=self.backend, result=result)
        bundle: dict[str, object] = {
            "session_id": str(uuid.uuid4()),
            "kernel_id": self.kernel_id,
            "ip": km.ip,
            "transport": "tcp",
            **{name: getattr(km, name) for name in _PORT_NAMES},
            "key": km.session.key.decode(),
            "signature_scheme": km.session.signature_scheme,
            "curve_publickey": km.curve_publickey.decode(),
            "curve_secretkey": km.curve_secretkey.decode(),
            "attestation": result.to_json(),
            "extras": await self.session_extras(enclave_key, result),
        }
        sealed = seal_bundle(enclave_key, self._nonce, bundle)
        writer.write(encode_frame({"type": "bundle", "sealed": b64(sealed)}))
        await writer.drain()
        confirmation = parse_ready(await asyncio.wait_for(read_frame(reader), self.launch_timeout))
        if not check_ready(km.session.key, self._nonce, enclave_key, confirmation):
            raise self._failure(
                "key_confirmation", "the kernel's readiness message was not made with this session's key"
            )

    async def session_extras(self, enclave_key: bytes, result: AttestationResult) -> dict[str, object]:
        """The key broker's session grant for this user and this attested key, delivered sealed.

        Only after the evidence was accepted; the grant names SHA-256(E.pub), so it is useless to any other
        enclave. Without a reachable broker the kernel still starts — reading datasets then says why not.
        """
        from teelab.sealed_store import services
        from teelab.sealed_store.kbs.client import KbsClient
        from teelab.sealed_store.kbs.transport import ca_from_environment, read_ca

        token_file = services.gateway_token_file(Path(self.kbs_token_file) if self.kbs_token_file else None)
        if not (self.kbs_address or os.environ.get("TEELAB_KBS") or services.local_kbs_running()):
            return {}
        address = services.kbs_address(self.kbs_address)
        user = services.session_user(self.kbs_user)

        def issue() -> dict[str, object]:
            ca = read_ca(Path(self.kbs_ca_file)) if self.kbs_ca_file else ca_from_environment()
            with KbsClient.with_token_file(address, token_file, timeout=10, tls_ca=ca) as client:
                grant = client.issue_session_grant(user, enclave_key=enclave_key)
                kbs_key = client.kbs_public_key()
            tls = {"kbs_ca": ca.decode("ascii")} if ca is not None and client.target.tls else {}
            return {
                **tls,
                "kbs": address,
                # Pinned for the kernel: it seals the grant to this key at every release, and its own
                # connection to the broker crosses the untrusted host.
                "kbs_key": kbs_key.hex(),
                "store": services.store_url(self.dataset_store),
                "user": user,
                "grant": grant.token,
                "grant_expires_at": grant.expires_at.isoformat(),
            }

        try:
            return await asyncio.get_running_loop().run_in_executor(None, issue)
        except (TeelabError, OSError) as error:
            self.log.warning("teelab: no session grant from the key broker at %s: %s", address, error)
            return {"kbs": address, "store": services.store_url(self.dataset_store), "user": user}

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
