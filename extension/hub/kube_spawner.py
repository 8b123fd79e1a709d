"""TeeKubeSpawner: each single-user server a confidential pod (Kata with SEV-SNP or TDX), attested before routing.

``TeeSpawner`` over ``KubeSpawner``. ``launch_boot`` has KubeSpawner create the user's pod — its own manifest
(``get_pod_manifest``: profile, resources, volumes, the user's PVC), then :meth:`TeeKubeSpawner.boot_pod`
turns it into the boot's pod: the runtime class from the configuration (``kata-qemu-snp``/``kata-qemu-tdx``),
the Kata init-data annotation naming ``SHA-256(G_s.pub)`` (the platform measures its digest into ``HOST_DATA``
/ ``MRCONFIGID``), the boot as the command and the boot request as the only environment variable. Nothing else
of the server's configuration is in the pod spec: it travels sealed to the attested key, as for a local server.
The pod is checked again right before it is sent to the API server (after any ``modify_pod_hook``) and refused
if it carries a token, a key, a grant or a Secret anywhere.

Under ``internal_ssl`` KubeSpawner would make a Secret of a key the hub made and mount it into the pod. Here no
key is made in the hub (TeeSpawner's ``create_certs``/``move_certs``), no Secret is ever sent to the API server
(:meth:`TeeKubeSpawner._make_create_resource_request`), and the pod's Secret volume, mount and ``JUPYTERHUB_SSL_*``
variables are stripped; KubeSpawner's Service is still made, so the server has a stable DNS name. Once the
pod's evidence passed, the notebooks CA certifies the attested in-TEE key ``T`` for the Service's names
(:meth:`TeeKubeSpawner.kube_names`) and the certificate travels sealed; the hub and the proxy reach the server
at ``https://<service name>:<port>``.

The attestation is the same conversation as for a local boot, over the cluster network: the boot listens on
``boot_port`` and the hub connects to the pod's IP once Kubernetes reports it running; re-challenges go to the
pod's IP at ``challenge_port``. The controller check is by init-data (:func:`init_data_appraiser`): the launch
field must be the digest of the init-data this spawner made, and that init-data names this hub's key.

:class:`KubeBootProcess` is the pod as :class:`~teelab.extension.hub.tee_spawner.BootProcess`: ``poll`` reads
KubeSpawner's pod reflector (phase, the container's exit code, gone), ``kill`` deletes the pod, ``wait`` waits
until the reflector no longer lists it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import ipaddress
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kubespawner import KubeSpawner
from traitlets import Integer, List, Unicode

from teelab.errors import ConfigError
from teelab.extension.hub import spawner_protocol as protocol
from teelab.extension.hub.kubernetes import (
    BOOT_PORT,
    CHALLENGE_PORT,
    INIT_DATA_ANNOTATION,
    RUNTIME_CLASSES,
    ConfidentialPods,
    PodSecretError,
    check_init_data_controller,
    find_secrets,
    pod_json,
    strip_secrets,
)
from teelab.extension.hub.spawner_protocol import ServerBootRequest
from teelab.extension.hub.spawner_verdict import STATE_KEY
from teelab.extension.hub.tee_spawner import BootProcess, TeeSpawner
from teelab.gateway.checks import Check
from teelab.gateway.identity import GatewayIdentity
from teelab.gateway.policy import AppraisalPolicy
from teelab.gateway.result import AttestationResult
from teelab.gateway.session import Appraise, Channel, appraiser
from teelab.kernel.attested_module import EnclaveBackend, EnclaveImage, Evidence

BOOT_COMMAND = ["python3", "-s", "-m", "teelab.extension.hub.server_boot"]
CONTAINER = "notebook"  # KubeSpawner's name for the server's container
CONNECT_RETRY_SECONDS = 0.5
# In its pod the boot listens on every interface: the pod's own network namespace, reached at the pod's IP.
POD_ANY = "0.0.0.0"  # noqa: S104


def init_data_appraiser(inner: Appraise, init_data_toml: str, controller: bytes) -> Appraise:
    """``inner`` (the policy, no controller check) plus the check ``controller`` by init-data: the evidence's
    launch field is this init-data's digest and the init-data names ``controller``. A failed check makes the
    result contraindicated, as the gateway's own controller check does."""

    def appraise(evidence: Evidence, report_data: bytes) -> AttestationResult:
        result = inner(evidence, report_data)
        passed, detail = check_init_data_controller(result.claims, init_data_toml, controller)
        checks = (*result.checks, Check("controller", passed, detail))
        verdict = result.verdict if passed else "contraindicated"
        return dataclasses.replace(result, checks=checks, verdict=verdict)

    return appraise


class KubeBootProcess:
    """The boot's pod seen through KubeSpawner's pod reflector (no call of the API server but ``delete``)."""

    def __init__(
        self,
        pods: Callable[[], Mapping[str, Any]],
        key: str,
        delete: Callable[[], Awaitable[object]],
        *,
        loop: asyncio.AbstractEventLoop,
        wait_seconds: float,
    ) -> None:
        self._pods, self.key, self._delete, self._loop = pods, key, delete, loop
        self._wait_seconds = wait_seconds
        self._deleting: object | None = None

    def pod(self) -> Mapping[str, Any] | None:
        pod = self._pods().get(self.key)
        return pod if isinstance(pod, Mapping) else None

    def pod_ip(self) -> str | None:
        status = (self.pod() or {}).get("status")
        ip = status.get("podIP") if isinstance(status, Mapping) else None
        return ip if isinstance(ip, str) and ip else None

    def poll(self) -> int | None:
        """None while the pod runs (or is starting); the server container's exit code once it terminated; 1
        for a pod that failed without one, is being deleted, is gone, or whose status is malformed."""
        try:
            return self._poll()
        except (AttributeError, TypeError, ValueError, OverflowError):
            # The reflector holds the API server's JSON (the host's): a shape Kubernetes never sends
            # is a failed pod.
            return 1

    def _poll(self) -> int | None:
        pod = self.pod()
        if pod is None or "deletionTimestamp" in (pod.get("metadata") or {}):
            return 1
        status = pod.get("status") or {}
        for container in status.get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated")
            if container.get("name") == CONTAINER and terminated is not None:
                return int(terminated.get("exitCode", 1))
        phase = status.get("phase")
        if phase in ("Succeeded", "Failed"):
            return 0 if phase == "Succeeded" else 1
        return None

    def kill(self) -> None:
        """Delete the pod (at once: its TEE holds nothing worth a grace period before it is attested)."""
        if self._deleting is None:
            self._deleting = asyncio.run_coroutine_threadsafe(self._wrap(self._delete()), self._loop)

    @staticmethod
    async def _wrap(awaitable: Awaitable[object]) -> object:
        return await awaitable

    def wait(self, timeout: float | None = None) -> int:
        """Until the reflector no longer lists the pod; its container's exit code if it was seen, else 1. Call it
        from a thread (``run_in_executor``): the event loop is what updates the reflector."""
        deadline = time.monotonic() + (self._wait_seconds if timeout is None else timeout)
        status = 1
        while self.pod() is not None:
            status = self._exit_code(status)
            if time.monotonic() >= deadline:
                raise TimeoutError(f"pod {self.key} is still there")
            time.sleep(0.2)
        return status

    def _exit_code(self, default: int) -> int:
        try:
            return self._terminated_code(default)
        except (AttributeError, TypeError, ValueError, OverflowError):
            return default  # a malformed status (see poll)

    def _terminated_code(self, default: int) -> int:
        for container in ((self.pod() or {}).get("status") or {}).get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated")
            if container.get("name") == CONTAINER and terminated is not None:
                return int(terminated.get("exitCode", default))
        return default

    def cleanup(self) -> None:
        """Nothing: the pod was the whole launch (the user's PVC stays, as KubeSpawner keeps it)."""
        return None


class TeeKubeSpawner(TeeSpawner, KubeSpawner):  # type: ignore[misc]
    """``c.JupyterHub.spawner_class = "teelab.extension.hub.kube_spawner.TeeKubeSpawner"``; the policy, the key
    and the timeouts are ``c.TeeSpawner``'s, the pod's settings ``c.KubeSpawner``'s and these."""

    tee_backend = Unicode(
        "cvm", help="The teelab backend whose evidence the pods make (cvm: SEV-SNP, TDX)"
    ).tag(config=True)
    runtime_class = Unicode(
        "kata-qemu-snp", help=f"The pods' Kata runtime class: {', '.join(RUNTIME_CLASSES)}"
    ).tag(config=True)
    agent_policy_file = Unicode(
        "", help="The Kata agent policy (Rego, from genpolicy) for the init-data"
    ).tag(config=True)
    boot_port = Integer(BOOT_PORT, help="Where the boot listens for the hub in its pod").tag(config=True)
    challenge_port = Integer(CHALLENGE_PORT, help="Where the boot answers re-challenges in its pod").tag(
        config=True
    )
    boot_command = List(
        Unicode(),
        default_value=BOOT_COMMAND,
        help="The boot in the server image (teelab-hub-server's entrypoint)",
    ).tag(config=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._boot_request: ServerBootRequest | None = None
        self._init_data: str | None = None  # this server's init-data annotation (public)
        self._boot: KubeBootProcess | None = None
        self._pod_url: str | None = None  # KubeSpawner's URL for this spawn's pod (https under internal_ssl)

    # -- the pod ------------------------------------------------------------------------------------------

    def confidential_pods(self, controller: bytes) -> ConfidentialPods:
        if self._policy_choice is None:
            raise ConfigError("a TeeKubeSpawner pod is made by start() only (no policy chosen yet)")
        policy_digest = hashlib.sha256(Path(self._policy_choice.file).read_bytes()).hexdigest()
        agent_policy = Path(self.agent_policy_file).read_text() if self.agent_policy_file else None
        return ConfidentialPods(self.runtime_class, controller, policy_digest, agent_policy, digest="sha256")

    def boot_init_data(self, controller: bytes) -> str | None:
        self._init_data = self.confidential_pods(controller).init_data_annotation()
        return self._init_data

    async def get_pod_manifest(self) -> Any:
        """KubeSpawner's pod for this user, as the boot's pod (:meth:`boot_pod`)."""
        return self.boot_pod(await super().get_pod_manifest())

    def boot_pod(self, pod: Any) -> Any:
        from kubernetes_asyncio.client import V1ContainerPort, V1EnvVar

        if self._boot_request is None or self._init_data is None:
            raise ConfigError("a TeeKubeSpawner pod is made by start() only (no boot request yet)")
        (container,) = [c for c in pod.spec.containers if c.name == CONTAINER]
        container.command = list(self.boot_command)
        container.args = None
        container.env = [V1EnvVar(name=protocol.REQUEST_ENV, value=self._boot_request.to_env())]
        container.env_from = None
        container.ports = [
            *(container.ports or []),
            V1ContainerPort(name="teelab-boot", container_port=self.boot_port),
            V1ContainerPort(name="teelab-attest", container_port=self.challenge_port),
        ]
        pod.spec.runtime_class_name = self.runtime_class
        pod.spec.automount_service_account_token = False
        pod.metadata.annotations = {**(pod.metadata.annotations or {}), INIT_DATA_ANNOTATION: self._init_data}
        return strip_secrets(self, pod)

    def check_boot_pod(self, pod: Any) -> None:
        """What the API server receives (after any ``modify_pod_hook``): the runtime class, this spawn's
        init-data, the boot request as the only variable of the server's container, no secret anywhere."""
        manifest = pod_json(pod)
        spec, metadata = manifest.get("spec") or {}, manifest.get("metadata") or {}
        problems = list(find_secrets(manifest))
        if spec.get("runtimeClassName") != self.runtime_class:
            problems.append(
                f"runtimeClassName is {spec.get('runtimeClassName')!r}, not {self.runtime_class!r}"
            )
        if (metadata.get("annotations") or {}).get(INIT_DATA_ANNOTATION) != self._init_data:
            problems.append("the init-data annotation is not this spawn's")
        for container in spec.get("containers") or []:
            if container.get("name") == CONTAINER:
                names = [entry.get("name") for entry in container.get("env") or []]
                if names != [protocol.REQUEST_ENV] or container.get("envFrom"):
                    problems.append(
                        f"the server container's environment is {names}, not the boot request only"
                    )
        if problems:
            raise PodSecretError("refusing the server's pod: " + "; ".join(problems))

    async def _make_create_pod_request(self, pod: Any, request_timeout: float) -> Any:
        self.check_boot_pod(pod)
        return await super()._make_create_pod_request(pod, request_timeout)

    # -- internal_ssl: a Service for the certificate's name, never a Secret ------------------------------------

    def get_secret_manifest(self, owner_reference: Any) -> Any:
        """KubeSpawner's ``internal_ssl`` Secret would hold a key the hub made (``create_certs``) for the node to
        mount. TeeSpawner's ``create_certs`` makes none: ``T`` is made in the pod's TEE and its certificate
        travels sealed. A Secret with a name and no data, which :meth:`_make_create_resource_request` never sends
        (KubeSpawner's ``_start`` asks for it under ``internal_ssl``; ``make_secret`` would read key files)."""
        from kubernetes_asyncio.client import V1ObjectMeta, V1Secret

        return V1Secret(metadata=V1ObjectMeta(name=self.secret_name, owner_references=[owner_reference]))

    async def _make_create_resource_request(self, kind: str, manifest: Any) -> Any:
        """Services go to the API server (under ``internal_ssl`` the certificate names the pod's Service);
        a Secret never does: nothing of a TEE server's belongs where the node reads it."""
        if kind == "secret":
            self.log.info("teelab %s: no Secret for the server's TLS key (made in its TEE)", self._log_name)
            return True
        return await super()._make_create_resource_request(kind, manifest)

    async def _ensure_not_exists(self, kind: str, name: str) -> Any:
        if kind == "secret":
            return True  # the hub never reads or deletes Secrets: it needs no permission on them
        return await super()._ensure_not_exists(kind, name)

    def kube_names(self) -> list[str]:
        """The names the proxy and the hub reach this pod by under ``internal_ssl``, for its certificate:
        KubeSpawner's (its ``ssl_alt_names`` default: the Service's DNS names, from the current pod name and
        namespace) and the host of the URL KubeSpawner gave for the pod (``dns_name``, or ``pod_connect_ip``)."""
        names = [
            f"DNS:{self.dns_name}",
            f"DNS:{self.pod_name}",
            f"DNS:{self.pod_name}.{self.namespace}",
            f"DNS:{self.pod_name}.{self.namespace}.svc",
        ]
        host = urlsplit(self._pod_url).hostname if self._pod_url else None
        if host:
            try:
                names.append(f"IP:{ipaddress.ip_address(host)}")
            except ValueError:
                names.append(f"DNS:{host}")
        return names

    async def _alt_names(self) -> list[str]:
        names = await super()._alt_names()
        return [*names, *(name for name in dict.fromkeys(self.kube_names()) if name not in names)]

    # -- TeeSpawner's hooks ---------------------------------------------------------------------------------

    def load_server_image(self, backend: EnclaveBackend) -> EnclaveImage | None:
        return None  # the image is the pod's (c.KubeSpawner.image); the CVM's measurement is the policy's

    def describe_launch(self, backend: EnclaveBackend, image: EnclaveImage | None) -> str:
        digest = hashlib.sha256(decode_init_data_toml(self._init_data or "").encode()).hexdigest()
        return f"a confidential pod (runtime class {self.runtime_class}, init-data SHA-256 {digest[:16]}…)"

    def boot_listen(self) -> tuple[str, int] | None:
        return POD_ANY, self.boot_port

    def attest_listen(self, ip: str) -> tuple[str, int]:
        self._attest_port = self.challenge_port
        return POD_ANY, self.challenge_port

    async def launch_boot(
        self,
        backend: EnclaveBackend,
        image: EnclaveImage | None,
        request: ServerBootRequest,
        controller: bytes,
    ) -> BootProcess:
        self._boot_request = request
        # Creates the pod (get_pod_manifest -> boot_pod) and, under internal_ssl, its Service (no Secret: see
        # below), and waits until it runs; returns the URL the hub and the proxy will use.
        self._pod_url = str(await KubeSpawner.start(self))
        self._boot = self._boot_process()
        return self._boot

    def _boot_process(self) -> KubeBootProcess:
        async def delete() -> None:
            await KubeSpawner.stop(self, now=True)

        return KubeBootProcess(
            lambda: self.pod_reflector.pods if self.pod_reflector is not None else {},
            f"{self.namespace}/{self.pod_name}",
            delete,
            loop=asyncio.get_running_loop(),
            wait_seconds=float(self.k8s_api_request_retry_timeout),
        )

    async def connect_boot(self, process: BootProcess, timeout: float) -> Channel | None:
        assert isinstance(process, KubeBootProcess)
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            if process.poll() is not None:
                return None
            ip = process.pod_ip()
            if ip:
                try:
                    return await asyncio.wait_for(asyncio.open_connection(ip, self.boot_port), timeout=5)
                except (OSError, TimeoutError):
                    pass  # the boot is not listening yet
            await asyncio.sleep(CONNECT_RETRY_SECONDS)
        raise TimeoutError(f"the pod's boot did not answer at port {self.boot_port} within {timeout} s")

    def challenge_host(self) -> str:
        ip = self._boot_process().pod_ip() if self.pod_reflector is not None else None
        return ip or self.ip or "127.0.0.1"

    def server_url(self, ip: str, process: BootProcess) -> str:
        assert isinstance(process, KubeBootProcess)
        pod = process.pod()
        if pod is None:
            raise ConfigError("the server's pod is gone")
        return str(self._get_pod_url(pod))

    def appraise_for(
        self, backend: EnclaveBackend, policy: AppraisalPolicy, identity: GatewayIdentity
    ) -> Appraise:
        inner = appraiser(backend, policy, controller=None)

        def appraise(evidence: Evidence, report_data: bytes) -> AttestationResult:
            # The init-data of this spawn (made with its boot request) or, after a hub restart, the recorded one.
            if self._init_data is None:
                raise ConfigError("no init-data recorded for this server: its controller cannot be checked")
            toml = decode_init_data_toml(self._init_data)
            return init_data_appraiser(inner, toml, identity.controller)(evidence, report_data)

        return appraise

    # -- state: the init-data the running pod was launched with -------------------------------------------

    def get_state(self) -> dict[str, Any]:
        state: dict[str, Any] = super().get_state()
        if STATE_KEY in state and self._init_data is not None:
            state[STATE_KEY] = {**state[STATE_KEY], "init_data": self._init_data}
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        if self._verdict is not None:
            self._init_data = self._verdict.pop("init_data", None) or self._init_data


def decode_init_data_toml(annotation: str) -> str:
    """The TOML text of an init-data annotation (this spawner's own)."""
    import base64
    import gzip

    return gzip.decompress(base64.b64decode(annotation)).decode()
