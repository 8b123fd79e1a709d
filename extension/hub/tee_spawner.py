"""TeeSpawner: JupyterHub spawns each single-user server in a TEE and attests it before the proxy routes to it.

``TeeSpawnerMixin`` goes in front of a JupyterHub spawner; :class:`TeeLocalProcessSpawner` is the one for this
machine (the simulated TEE, or a local confidential VM). Inside ``start()``:

1. launch the server's boot (:mod:`~teelab.extension.hub.server_boot`) in the TEE through the backend, with
   the spawner's controller key ``G_s`` bound at launch — the host gets only a boot request, nothing secret;
2. verify the boot's evidence against the hub's policy for this user (``policy_for``), its report_data
   binding (E.pub, the in-TEE TLS key, the nonce, the server's name) and the controller field;
3. only then seal the server's environment and secrets (the hub API token, which is also the OAuth client
   secret) to the attested key, signed by ``G_s``, and wait for the server's HTTP to answer.

A failure raises from ``start()``: JupyterHub adds a proxy route only after ``start()`` returns, so an
unattested server is never reachable. ``progress()`` streams each step to the spawn-pending page; the verdict
(:mod:`~teelab.extension.hub.spawner_verdict`) is kept in the spawner's state; ``poll()`` re-challenges the
server's TEE and reports a server whose key changed as stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import secrets
import subprocess
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from jupyterhub.spawner import SimpleLocalProcessSpawner, Spawner
from jupyterhub.utils import random_port, url_path_join
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from traitlets import Any as AnyTrait
from traitlets import Bool, Dict, Float, Unicode

from teelab.errors import ConfigError, TeelabError
from teelab.extension.hub import spawner_protocol as protocol
from teelab.extension.hub.spawner_attest import attest_and_deliver, challenge
from teelab.extension.hub.spawner_certs import DEFAULT_NAMES, NOTEBOOKS_CA, certify_server_key
from teelab.extension.hub.spawner_image import SERVER_IMAGE
from teelab.extension.hub.spawner_protocol import ServerBootRequest, ServerBundle, ServerHello, ServerSecrets
from teelab.extension.hub.spawner_verdict import (
    STATE_KEY,
    PolicyChoice,
    challenge_record,
    make_verdict,
)
from teelab.gateway.identity import GatewayIdentity
from teelab.gateway.policy import AppraisalPolicy, load_policy
from teelab.gateway.result import AttestationResult
from teelab.gateway.session import Appraise, Channel, SessionRefused, answer_channel, appraiser
from teelab.kernel.attested_module import EnclaveBackend, EnclaveImage, EnclaveProcess, get_backend
from teelab.protocols.session import HandshakeError
from teelab.timeutil import utcnow


class BootProcess(Protocol):
    """What :meth:`TeeSpawner.launch_boot` returns: the launched boot as the host sees it (an
    :class:`~teelab.enclave_runtime.backend.EnclaveProcess` here; a pod or a VM for other spawners)."""

    def poll(self) -> int | None: ...

    def kill(self) -> None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def cleanup(self) -> None: ...


# The sealed server argv's switch when c.TeeSpawner.allow_terminals is off (the default): a terminal is a shell
# in the server's TEE, beside the process that holds the hub token. Command line beats configuration files.
NO_TERMINALS = "--ServerApp.terminals_enabled=False"


class AttestationFailed(TeelabError):
    """The server's TEE was not accepted; JupyterHub shows ``Spawn failed: <message>``."""


def choose_policy(policy_for: dict[str, str], user: str, groups: Sequence[str]) -> PolicyChoice:
    """``user:<name>`` before ``group:<name>`` before ``*``; a user in two groups with different policies and
    no policy of their own is an error (which one applies must not depend on an order)."""
    if f"user:{user}" in policy_for:
        return PolicyChoice(f"user:{user}", policy_for[f"user:{user}"])
    matches = {f"group:{g}": policy_for[f"group:{g}"] for g in sorted(groups) if f"group:{g}" in policy_for}
    if len(set(matches.values())) > 1:
        raise ConfigError(
            f"{user} is in groups with different server policies: {', '.join(matches)}",
            hint=f"give user:{user} a policy of its own in c.TeeSpawner.policy_for",
        )
    if matches:
        selector = next(iter(matches))
        return PolicyChoice(selector, matches[selector])
    if "*" in policy_for:
        return PolicyChoice("*", policy_for["*"])
    raise ConfigError(f"no server attestation policy applies to {user} (c.TeeSpawner.policy_for)")


class TeeSpawner(Spawner):  # type: ignore[misc]
    """The mixin (also importable as ``TeeSpawnerMixin``; its configuration section is ``c.TeeSpawner``):
    attests the server inside ``start()``; the spawner after it in the MRO launches the TEE
    (:meth:`launch_boot`) and stops it."""

    tee_backend = Unicode("sim", help="The teelab backend the servers' TEEs run on").tag(config=True)
    sim_platform = Unicode("", help="The simulated platform's folder (sim backend; default: the hub's)").tag(
        config=True
    )
    image_dir = Unicode("", help="The built teelab-hub-server image (spawner_image.image_folder)").tag(
        config=True
    )
    identity_file = Unicode(
        "", help="G_s, the spawner's controller key (Ed25519 PEM, 0600, in the hub's trust domain)"
    ).tag(config=True)
    policy_for = Dict(
        help='Policy file per "user:<name>", "group:<name>" or "*": the hub\'s reference values for servers'
    ).tag(config=True)
    answer_host = Unicode("127.0.0.1", help="Where the hub listens for the boot's hello").tag(config=True)
    handshake_timeout = Float(120.0, help="Seconds for the boot to say hello and confirm").tag(config=True)
    challenge_timeout = Float(30.0, help="Seconds for a re-challenge answer in poll()").tag(config=True)
    allow_terminals = Bool(
        False,
        help="Let users open terminals in their TEE servers (off: the sealed argv disables them; a terminal is a "
        "shell beside the process holding the server's hub token)",
    ).tag(config=True)
    allow_plaintext_server_hop = Bool(
        False,
        help="Start servers on a TEE backend without c.JupyterHub.internal_ssl: the proxy and the hub then reach "
        "the server over plain HTTP across the host's network, where the host reads every notebook and takes "
        "the user's cookie. Only where the hub and the servers share one confidential VM.",
    ).tag(config=True)
    kbs_credential = AnyTrait(
        None,
        allow_none=True,
        help="callable(spawner) -> str | None (may be async): a key broker credential for the server other than "
        "its hub token, sent sealed after attestation (the server reads it from a file in its TEE)",
    ).tag(config=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._events: list[dict[str, Any]] = []
        self._new_event = asyncio.Event()
        self._began = asyncio.Event()  # start() of this spawn has begun (cleared with the state)
        self._starting = False
        self._verdict: dict[str, Any] | None = None
        self._attest_port = 0
        self._stopping = False
        self._policy_choice: PolicyChoice | None = None  # this spawn's (a pod's init-data names its digest)

    # -- what the host sees ----------------------------------------------------------------------------

    def get_env(self) -> dict[str, str]:
        """The environment without a secret: the hub API token (also the OAuth client secret) and the TLS
        paths travel sealed to the attested server, never where a host, a pod spec or a log can read them."""
        env: dict[str, str] = super().get_env()
        return {name: value for name, value in env.items() if name not in protocol.SECRET_ENV}

    # -- progress --------------------------------------------------------------------------------------

    def _step(self, progress: int, message: str) -> None:
        self._events.append({"progress": progress, "message": message})
        self._new_event.set()
        self.log.info("teelab %s: %s", self._log_name, message)

    async def progress(self) -> AsyncIterator[dict[str, Any]]:
        """Every step of this spawn, from the first (the page may connect late), until ``start()`` ends."""
        # The page may also connect early, while the hub runs its pre-spawn hooks: then wait for start(), so
        # no step of an earlier spawn is shown as this one's.
        while not self._began.is_set() and getattr(self, "_spawn_pending", False):
            try:
                await asyncio.wait_for(self._began.wait(), timeout=0.5)
            except TimeoutError:
                pass
        sent = 0
        while True:
            while sent < len(self._events):
                yield self._events[sent]
                sent += 1
            if not self._starting:
                return
            self._new_event.clear()
            try:
                await asyncio.wait_for(self._new_event.wait(), timeout=1.0)
            except TimeoutError:
                pass

    # -- state ---------------------------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        state: dict[str, Any] = super().get_state()
        if self._verdict is not None:
            state[STATE_KEY] = {**self._verdict, "attest_port": self._attest_port}
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        verdict = state.get(STATE_KEY)
        if isinstance(verdict, dict):
            self._attest_port = int(verdict.pop("attest_port", 0) or 0)
            self._verdict = verdict

    def clear_state(self) -> None:
        # The last verdict stays (why a spawn failed, or why a server was stopped); its status says so.
        super().clear_state()
        self._attest_port = 0
        self._began.clear()

    # -- the hooks the concrete spawner provides -------------------------------------------------------

    async def launch_boot(
        self,
        backend: EnclaveBackend,
        image: EnclaveImage | None,
        request: ServerBootRequest,
        controller: bytes,
    ) -> BootProcess:
        """Start the server's boot in a TEE whose evidence binds ``controller``, with ``request`` (its
        ``to_env()`` under ``spawner_protocol.REQUEST_ENV``) as the only input from the host. ``image`` is
        :meth:`load_server_image`'s."""
        raise NotImplementedError

    def server_cwd(self, env: dict[str, str]) -> str:
        return env.get("HOME") or "/"

    def load_server_image(self, backend: EnclaveBackend) -> EnclaveImage | None:
        """The measured image the backend launches (None where the spawner launches something else, a pod)."""
        return backend.load_image(SERVER_IMAGE, Path(self.image_dir) if self.image_dir else None)

    def describe_launch(self, backend: EnclaveBackend, image: EnclaveImage | None) -> str:
        assert image is not None
        label, value = backend.describe_measurement(image)
        return f"the {backend.name} TEE (image {label} {value[:16]}…)"

    def boot_listen(self) -> tuple[str, int] | None:
        """None: the boot connects to the hub's answer channel. An address: the boot listens there and the
        hub connects (:meth:`connect_boot`), for a boot whose address the hub learns only once it runs."""
        return None

    async def connect_boot(self, process: BootProcess, timeout: float) -> Channel | None:
        """The connection to a listening boot (None: it exited first)."""
        raise NotImplementedError

    def boot_init_data(self, controller: bytes) -> str | None:
        """The init-data annotation the boot's platform binds instead of the controller hash (a pod)."""
        return None

    def attest_listen(self, ip: str) -> tuple[str, int]:
        """Where the boot answers re-challenges (the hub asks :meth:`challenge_host` at the same port)."""
        return ip, self._attest_port

    def challenge_host(self) -> str:
        return self.ip or "127.0.0.1"

    def server_url(self, ip: str, process: BootProcess) -> str:
        """The attested server's base URL as the hub and the proxy reach it."""
        return f"http://{ip}:{self.port}"

    def appraise_for(
        self, backend: EnclaveBackend, policy: AppraisalPolicy, identity: GatewayIdentity
    ) -> Appraise:
        """How evidence is judged: the policy and the controller check (a pod's is by its init-data)."""
        return appraiser(backend, policy, controller=identity.controller)

    # -- start -------------------------------------------------------------------------------------------

    def _backend(self) -> EnclaveBackend:
        platform = Path(self.sim_platform) if self.sim_platform else None
        return get_backend(self.tee_backend, sim_platform=platform)

    def _identity(self) -> GatewayIdentity:
        if not self.identity_file:
            raise ConfigError("c.TeeSpawner.identity_file is not set (the spawner's controller key G_s)")
        return GatewayIdentity.load_or_create(Path(self.identity_file))

    async def start(self) -> tuple[str, int] | str:
        self._events, self._starting = [], True
        self._began.set()
        self._new_event.set()
        try:
            return await self._attested_start()
        finally:
            self._starting = False
            self._new_event.set()

    def check_server_hop(self) -> None:
        """Called first by :meth:`start`: a server in a real TEE is reached over TLS with its attested key
        (``internal_ssl``) unless the operator explicitly accepts a plaintext hop. The simulated TEE is not
        confidential anyway, so it only warns."""
        if self.internal_ssl:
            return
        if self.tee_backend == "sim":
            self.log.warning(
                "teelab: c.JupyterHub.internal_ssl is off: the proxy reaches %s's server over plain HTTP",
                self.user.name,
            )
            return
        if self.allow_plaintext_server_hop:
            self.log.warning(
                "teelab: plain HTTP to %s's attested server (c.TeeSpawner.allow_plaintext_server_hop): "
                "whoever runs the network between the proxy and the server reads the user's traffic",
                self.user.name,
            )
            return
        raise ConfigError(
            f"refusing to start a {self.tee_backend} server without c.JupyterHub.internal_ssl: the proxy would "
            "reach it over plain HTTP, readable by the host",
            hint="set c.JupyterHub.internal_ssl = True (the server's TLS key is made in its TEE and certified "
            "after attestation), or c.TeeSpawner.allow_plaintext_server_hop = True where the hub and the "
            "servers share one confidential VM",
        )

    async def _attested_start(self) -> tuple[str, int] | str:
        self.check_server_hop()
        groups = [group.name for group in getattr(self.user, "groups", [])]
        choice = choose_policy(dict(self.policy_for), self.user.name, groups)
        policy = load_policy(choice.file)
        identity = self._identity()
        backend = self._backend()
        image = self.load_server_image(backend)
        ip = self.ip or "127.0.0.1"
        port: int = getattr(self, "port", 0) or random_port()
        self.port = port
        self._attest_port = random_port()
        self._policy_choice = choice
        nonce = os.urandom(protocol.NONCE_SIZE)
        server = protocol.server_id(self.user.name, self.name)
        appraise = self.appraise_for(backend, policy, identity)
        record: dict[str, Any] = {"observed": None}

        def verdict(status: str, reason: str | None, result: AttestationResult | None) -> None:
            self._verdict = make_verdict(
                status=status,
                user=self.user.name,
                server_name=self.name,
                backend=backend.name,
                controller_key=identity.public,
                policy=choice,
                observed=record["observed"],
                result=result,
                reason=reason,
                at=utcnow(),
            )

        async with contextlib.AsyncExitStack() as stack:
            listen = self.boot_listen()
            channel = None if listen else await stack.enter_async_context(answer_channel(self.answer_host))
            request = ServerBootRequest(
                nonce,
                listen or (self.answer_host, channel.port if channel else 0),
                identity.public,
                server,
                self.attest_listen(ip),
                listen=listen is not None,
                init_data=self.boot_init_data(identity.controller),
            )
            try:
                process = await self.launch_boot(backend, image, request, identity.controller)
            except TeelabError as error:
                verdict("failed", f"the TEE did not launch: {error.message}", None)
                self._step(100, f"The server's TEE did not launch: {error.message}")
                raise
            self._step(
                10,
                f"Launched the server's boot in {self.describe_launch(backend, image)}, bound to "
                f"this hub's spawner key (controller {identity.controller.hex()[:16]}…)",
            )
            try:
                if channel is not None:
                    connection = await channel.accept(
                        timeout=self.handshake_timeout, gone=lambda: process.poll() is not None
                    )
                else:
                    connection = await self.connect_boot(process, self.handshake_timeout)
                    if connection is not None:
                        stack.callback(connection[1].close)
                if connection is None:
                    raise HandshakeError(
                        f"the server's boot exited (status {process.poll()}) before its hello"
                    )

                def step(name: str, message: str) -> None:
                    self._step(
                        {"evidence": 30, "verified": 50, "controller": 60, "sealed": 75}[name], message
                    )

                attested = await attest_and_deliver(
                    connection,
                    nonce=nonce,
                    server=server,
                    identity=identity,
                    appraise=appraise,
                    make_bundle=lambda hello, result: self._bundle(hello, result, server),
                    step=step,
                    timeout=self.handshake_timeout,
                    on_hello=lambda observed: record.__setitem__("observed", observed),
                )
            except SessionRefused as refused:
                await self._discard(process)
                verdict("refused", f"{refused.check}: {refused.detail}", refused.result)
                self._step(
                    100, f"Attestation refused by policy {choice.selector}: {refused.check}: {refused.detail}"
                )
                raise AttestationFailed(f"attestation failed: {refused.check}: {refused.detail}") from None
            except (HandshakeError, TimeoutError, OSError) as error:
                await self._discard(process)
                reason = str(error) or "the server's boot did not answer in time"
                verdict("failed", reason, None)
                self._step(100, f"Attestation failed: {reason}")
                raise AttestationFailed(f"attestation failed: {reason}") from None
        verdict("attested", None, attested.result)
        url = self.server_url(ip, process)
        try:
            await self._wait_http(url, process)
        except AttestationFailed as error:
            await self._discard(process)
            verdict("failed", error.message, attested.result)
            self._step(100, f"The attested server did not start: {error.message}")
            raise
        self._step(
            95, f"Server ready: its TEE is attested ({attested.result.verdict}, policy {choice.selector})"
        )
        return url if self.boot_listen() else (ip, self.port)

    # -- internal_ssl: the server's key is made in its TEE, never in the hub ------------------------------

    async def create_certs(self) -> dict[str, str]:
        """No key, no certificate yet: only the CA bundle the server trusts (its key is made in the TEE and
        certified in :meth:`_bundle` once attested)."""
        return {"keyfile": "", "certfile": "", "cafile": self.internal_trust_bundles[NOTEBOOKS_CA]}

    async def move_certs(self, paths: dict[str, str]) -> dict[str, str]:
        return paths  # nothing to ship: no Secret, no file for the host

    async def _alt_names(self) -> list[str]:
        names = self.ssl_alt_names(self) if callable(self.ssl_alt_names) else self.ssl_alt_names
        if inspect.isawaitable(names):
            names = await names
        return [*(DEFAULT_NAMES if self.ssl_alt_names_include_local else ()), *names]

    async def _kbs_credential(self) -> str | None:
        if self.kbs_credential is None:
            return None
        value = self.kbs_credential(self)
        if inspect.isawaitable(value):
            value = await value
        return str(value) if value else None

    async def _server_secrets(self, hello: ServerHello) -> ServerSecrets:
        kbs_token = await self._kbs_credential()
        if not self.internal_ssl:
            return ServerSecrets(api_token=self.api_token, kbs_token=kbs_token)
        certificate = certify_server_key(
            hello.tls_spki,
            certs_location=self.internal_certs_location,
            common_name=f"user-{self.user.name}",
            alt_names=await self._alt_names(),
        )
        trusted = Path(self.internal_trust_bundles[NOTEBOOKS_CA]).read_text()
        return ServerSecrets(
            api_token=self.api_token, kbs_token=kbs_token, tls_cert_pem=certificate, tls_ca_pem=trusted
        )

    async def _bundle(self, hello: ServerHello, result: AttestationResult, server: str) -> ServerBundle:
        env = self.get_env()
        argv = tuple(self.get_args())
        return ServerBundle(
            server=server,
            env=env,
            argv=argv if self.allow_terminals else (*argv, NO_TERMINALS),
            cwd=self.server_cwd(env),
            confirm_key=secrets.token_bytes(protocol.CONFIRM_KEY_SIZE),
            secrets=await self._server_secrets(hello),
            verdict={"verdict": result.verdict, "policy_id": result.policy_id, "simulated": result.simulated},
        )

    async def _wait_http(self, base: str, process: BootProcess) -> None:
        """The server answers HTTP (its ``/api``, which needs no login) — or its process exited. Under
        ``internal_ssl`` the server wants the hub's client certificate: JupyterHub's own wait covers that."""
        if self.internal_ssl:
            return
        url = base + url_path_join(self.server.base_url if self.server else "/", "api")
        deadline = asyncio.get_running_loop().time() + self.http_timeout
        while asyncio.get_running_loop().time() < deadline:
            if process.poll() is not None:
                raise AttestationFailed(f"the attested server exited with status {process.poll()}")
            try:
                await AsyncHTTPClient().fetch(HTTPRequest(url, request_timeout=5))
                return
            except (HTTPClientError, OSError):
                await asyncio.sleep(0.2)
        raise AttestationFailed(f"the attested server did not answer HTTP within {self.http_timeout} s")

    async def _discard(self, process: BootProcess) -> None:
        process.kill()
        try:
            await asyncio.get_running_loop().run_in_executor(None, process.wait)
        except (TimeoutError, subprocess.TimeoutExpired):
            self.log.warning("teelab %s: the discarded server's TEE did not go away in time", self._log_name)
        process.cleanup()

    # -- poll: the server's TEE is still the one attested ------------------------------------------------

    async def poll(self) -> int | None:
        status: int | None = await super().poll()
        if status is not None or self._starting or self._stopping:
            return status
        if not self._verdict or not self._verdict.get("ok") or not self._attest_port:
            return status
        outcome = await challenge(
            self.challenge_host(),
            self._attest_port,
            server=self._verdict["server"],
            enclave_key=protocol.unb64(self._verdict["enclave_key"], "enclave_key"),
            tls_spki=protocol.unb64(self._verdict["tls_spki"], "tls_spki"),
            appraise=self.appraise_for(
                self._backend(), load_policy(self._verdict["policy"]["file"]), self._identity()
            ),
            timeout=self.challenge_timeout,
        )
        answer = outcome.answer.to_json() if outcome.answer is not None else None
        self._verdict["last_challenge"] = challenge_record(
            at=utcnow(), nonce=outcome.nonce, ok=outcome.ok, reason=outcome.reason, answer=answer
        )
        if outcome.ok:
            return None
        self.log.warning("teelab %s: stopping the server: %s", self._log_name, outcome.reason)
        self._verdict.update(status=outcome.status, ok=False, reason=outcome.reason)
        await self.stop(now=True)
        return 1

    async def stop(self, now: bool = False) -> None:
        self._stopping = True  # stopping polls: no re-challenge of a server on its way out
        try:
            await super().stop(now=now)
        finally:
            self._stopping = False


TeeSpawnerMixin = TeeSpawner


class TeeLocalProcessSpawner(TeeSpawner, SimpleLocalProcessSpawner):  # type: ignore[misc]
    """Each server a process in a TEE on this machine (the sim backend in tests and demos)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._enclave: EnclaveProcess | None = None

    async def launch_boot(
        self,
        backend: EnclaveBackend,
        image: EnclaveImage | None,
        request: ServerBootRequest,
        controller: bytes,
    ) -> EnclaveProcess:
        if image is None:
            raise ConfigError("no server image to launch (c.TeeSpawner.image_dir)")
        os.makedirs(self.home_dir, mode=0o755, exist_ok=True)
        # The launch checks the image's trusted files (hashes, cached): off the event loop.
        process = await asyncio.get_running_loop().run_in_executor(
            None,
            lambda: backend.launch(
                image, inputs={protocol.REQUEST_ENV: request.to_env()}, controller=controller
            ),
        )
        self._enclave, self.proc, self.pid = process, process.popen, process.pid
        return process

    def server_cwd(self, env: dict[str, str]) -> str:
        return str(self.home_dir)

    async def poll(self) -> int | None:
        return await super().poll()

    async def stop(self, now: bool = False) -> None:
        await super().stop(now=now)
        if self._enclave is not None and self._enclave.poll() is not None:
            self._enclave.cleanup()
            self._enclave = None
