"""The hub pod: the front door, JupyterHub, configurable-http-proxy and the ``teelab-kbs`` service in one TEE.

Launched by :func:`~.hub_pod_image.launch_hub_pod`, inside the TEE this program

1. reads where the hub's config, node and the proxy are from its measured ``TEELAB_HUB_POD_LAYOUT`` (the
   loader checked each of those files against the measurement before this line runs);
2. picks five loopback ports and makes every secret the hub needs: cookie secret, proxy token, crypt key,
   the service's API token (:class:`~.hub_pod_config.PodSettings`); each child gets them through an inherited
   pipe, never an environment variable, argv or a file outside the TEE; the hub's database goes to the
   TEE's scratch folder;
3. under ``internal_ssl`` (on with TeeSpawner, :func:`~.hub_pod_config.configure_hub_pod`; a TeeSpawner
   config without it is refused) makes JupyterHub's
   internal CAs and certificates in the TEE's scratch with JupyterHub's own code (:mod:`.hub_pod_tls`),
   and TeeSpawner's controller key ``G_s`` there too (0600, new at every start: a restarted pod is a new
   controller);
4. starts configurable-http-proxy (``node --import`` a preload that takes the token from the pipe; under
   ``internal_ssl`` with the TLS flags JupyterHub's own proxy launch passes), then
   ``python -m jupyterhub -f <measured config>``, then the service, all on ``127.0.0.1``;
5. once the hub answers, runs the front door (:mod:`.front_door`) in this process on the host's listen
   address — the only socket of the pod off loopback — proxying to the proxy, with the layout as the ``pod``
   description of its attestation answers.

If any child exits the pod stops the others and exits; SIGTERM stops the hub first (it stops the servers it
spawned and removes their routes), then the service and the proxy.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from teelab.errors import ConfigError, TeelabError
from teelab.extension.hub.front_door import REQUEST_ENV, FrontDoorRequest, serve
from teelab.extension.hub.front_door_protocol import FrontDoorError
from teelab.extension.hub.hub_pod_config import (
    SETTINGS_FD_ENV,
    PodSettings,
    load_hub_config,
    service_environment,
)
from teelab.extension.hub.hub_pod_tls import make_internal_tls, require_internal_ssl
from teelab.gateway.identity import GatewayIdentity

LAYOUT_ENV = "TEELAB_HUB_POD_LAYOUT"
TOKEN_FD_ENV = "TEELAB_HUB_POD_TOKEN_FD"  # noqa: S105 (the name of a variable holding an fd number)
PRELOAD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hub_pod_chp_preload.mjs")
READY_SECONDS = 150.0
STOP_SECONDS = 40.0
# What the pod's children inherit from the image's (measured) environment; nothing the host passed.
KEPT_ENV = (
    "PATH",
    "LANG",
    "HOME",
    "TMPDIR",
    "PYTHONNOUSERSITE",
    "PYTHONPYCACHEPREFIX",
    "JUPYTER_PLATFORM_DIRS",
)


def _free_ports() -> tuple[int, int, int, int, int]:
    """Five distinct free loopback ports (held together while chosen, so none repeats)."""
    sockets = [socket.socket() for _ in range(5)]
    try:
        for probe in sockets:
            probe.bind(("127.0.0.1", 0))
        a, b, c, d, e = (int(s.getsockname()[1]) for s in sockets)
        return a, b, c, d, e
    finally:
        for probe in sockets:
            probe.close()


def _child_env(extra: Mapping[str, str]) -> dict[str, str]:
    return {**{k: os.environ[k] for k in KEPT_ENV if k in os.environ}, **extra}


def _start_with_pipe(
    argv: list[str], env: dict[str, str], fd_env: str, secret: bytes
) -> subprocess.Popen[bytes]:
    """``argv`` with ``secret`` readable from an inherited pipe named by ``fd_env`` (the fd's number only)."""
    read_end, write_end = os.pipe()
    try:
        # Standard output is the host's announcement pipe: the children log to standard error.
        child = subprocess.Popen(
            argv,
            env={**env, fd_env: str(read_end)},
            pass_fds=(read_end,),
            cwd=env["TMPDIR"],
            stdout=sys.stderr,
        )
    finally:
        os.close(read_end)
    # The whole secret fits the pipe's buffer (a few hundred bytes against 64 KiB): this write does not block.
    with os.fdopen(write_end, "wb") as pipe:
        pipe.write(secret)
    return child


def _make_spawner_identity(path: Path) -> None:
    """TeeSpawner's ``G_s``, new in the (fresh) scratch: an existing file there is not this start's key."""
    if path.exists():
        raise ConfigError(f"{path} exists at the pod's start: the TEE's scratch is not fresh")
    GatewayIdentity.load_or_create(path)


class Pod:
    def __init__(self, layout: dict[str, str], settings: PodSettings) -> None:
        self.layout = layout
        self.settings = settings
        self.children: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        s, layout = self.settings, self.layout
        config = load_hub_config(layout["hub_config"], s)
        # Under internal_ssl: JupyterHub's CAs and certificates made here, in the TEE, before the proxy needs them.
        tls = make_internal_tls(config) if require_internal_ssl(config) else None
        if tls:
            _make_spawner_identity(Path(s.spawner_identity))
        self.children["proxy"] = _start_with_pipe(
            [
                layout["node"],
                "--import",
                f"file://{PRELOAD}",
                layout["chp"],
                "--ip",
                "127.0.0.1",
                "--port",
                str(s.proxy_port),
                "--api-ip",
                "127.0.0.1",
                "--api-port",
                str(s.proxy_api_port),
                "--error-target",
                f"{'https' if tls else 'http'}://127.0.0.1:{s.hub_port}/hub/error",
                "--log-level",
                "warn",
                *(tls.proxy_flags if tls else ()),
            ],
            _child_env({}),
            TOKEN_FD_ENV,
            s.proxy_token.encode(),
        )
        if tls:
            # The proxy has read its certificates once its API listens; only then may the hub rewrite the
            # store's trust bundles (with the same content) at its own start.
            self._wait_port(s.proxy_api_port, "the proxy")
        self.children["hub"] = _start_with_pipe(
            [sys.executable, "-s", "-m", "jupyterhub", "-f", layout["hub_config"]],
            _child_env({}),
            SETTINGS_FD_ENV,
            s.to_bytes(),
        )
        if tls:
            hub_api = s.hub_api_url.replace("http://", "https://", 1)
            self._wait_http(f"{hub_api}/", "the hub", context=tls.hub_client_context())
        else:
            self._wait_http(f"{s.hub_api_url}/", "the hub")
        environment = service_environment(config, s)
        # The service needs its own token only: not the hub's cookie secret, crypt key or the proxy's token.
        own = dataclasses.replace(s, cookie_secret="", proxy_token="", crypt_key="")
        self.children["service"] = _start_with_pipe(
            [sys.executable, "-s", "-m", layout["service"]],
            _child_env({**environment, "PYTHONUNBUFFERED": "1"}),
            SETTINGS_FD_ENV,
            own.to_bytes(),
        )
        self._wait_port(s.service_port, "the teelab-kbs service")
        # The hub answers on its own port before it has added its route to the proxy.
        self._wait_http(f"{s.proxy_url}/hub/api/", "the hub's route", ok_only=True)

    def _check_alive(self, what: str) -> None:
        for name, child in self.children.items():
            if child.poll() is not None:
                raise ConfigError(
                    f"the pod's {name} exited with status {child.returncode} while {what} started"
                )

    def _wait_http(
        self, url: str, what: str, *, ok_only: bool = False, context: ssl.SSLContext | None = None
    ) -> None:
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            self._check_alive(what)
            try:
                with urllib.request.urlopen(url, timeout=5, context=context):  # noqa: S310 (loopback in the TEE)
                    return
            except urllib.error.HTTPError:
                if not ok_only:
                    return  # it answers
            except OSError:
                pass
            time.sleep(0.3)
        raise ConfigError(f"{what} did not answer within {READY_SECONDS:.0f} s")

    def _wait_port(self, port: int, what: str) -> None:
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            self._check_alive(what)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
                return
            except OSError:
                time.sleep(0.3)
        raise ConfigError(f"{what} did not listen within {READY_SECONDS:.0f} s")

    def first_exit(self) -> str | None:
        return next((name for name, child in self.children.items() if child.poll() is not None), None)

    def stop(self) -> None:
        # The hub first: it stops the servers it spawned and removes their routes from the running proxy.
        for name in ("hub", "service", "proxy"):
            child = self.children.get(name)
            if child is None or child.poll() is not None:
                continue
            child.terminate()
            try:
                child.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


async def _run(pod: Pod, request: FrontDoorRequest) -> str | None:
    """The front door until SIGTERM (None) or a child's exit (its name)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    door = asyncio.create_task(serve(request, pod.layout))
    try:
        while not stop.is_set():
            if door.done():
                door.result()  # the front door's own error
                return "front door"
            exited = pod.first_exit()
            if exited is not None:
                return exited
            try:
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            except TimeoutError:
                pass
        return None
    finally:
        door.cancel()


def pod_request(settings: PodSettings) -> FrontDoorRequest:
    """The host's request (listen address, host names, collateral), with the pod's own loopback upstream."""
    text = os.environ.get(REQUEST_ENV)
    if not text:
        raise FrontDoorError(f"no {REQUEST_ENV}: launch the hub pod through `launch_hub_pod`")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise FrontDoorError(f"malformed {REQUEST_ENV}: {error}") from None
    if not isinstance(data, dict):
        raise FrontDoorError(f"malformed {REQUEST_ENV}: not a JSON object")
    return FrontDoorRequest.from_data(
        {**data, "upstream_host": "127.0.0.1", "upstream_port": settings.proxy_port}
    )


def main() -> int:
    from teelab.kernel.attested_module import tee_name

    try:
        tee_name()  # first: the loader hands the TEE's identity over right after the start
        layout = json.loads(os.environ[LAYOUT_ENV])
        scratch = os.environ["TMPDIR"]
        settings = PodSettings.make(scratch, _free_ports())
        request = pod_request(settings)
    except (TeelabError, KeyError, ValueError) as error:
        print(f"teelab hub pod: {getattr(error, 'message', error)}", file=sys.stderr)
        return 2
    pod = Pod(layout, settings)
    try:
        pod.start()
        exited = asyncio.run(_run(pod, request))
    except TeelabError as error:
        print(f"teelab hub pod: {error.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        exited = None
    finally:
        pod.stop()
    if exited is not None:
        print(f"teelab hub pod: its {exited} exited; the pod stopped", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
