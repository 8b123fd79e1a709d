"""The host side of the hub pod: its measured image (front door + JupyterHub + proxy + service) and its launch.

The image runs ``python -s -m teelab.extension.hub.hub_pod`` with everything that interpreter imports trusted
(JupyterHub, teelab, the service), and, as extra trusted files (``build_module_image(extra_trusted=...)``):

- the operator's ``jupyterhub_config.py`` (it calls :func:`~.hub_pod_config.configure_hub_pod`);
- the ``node`` executable and the ``node_modules`` folder holding configurable-http-proxy and its packages.

Where they are, and their digests, are a fixed variable of the image (``TEELAB_HUB_POD_LAYOUT``), so the
measurement changes when the hub's config, node or any proxy file changes, and the sim loader (a LibOS or a
CVM's measured disk, on hardware) refuses a file changed since the build.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from teelab.errors import ConfigError
from teelab.extension.hub.front_door import REQUEST_ENV
from teelab.extension.hub.front_door_launch import FRONT_DOOR_PACKAGES, RunningFrontDoor, wait_announced
from teelab.extension.hub.hub_pod import LAYOUT_ENV

if TYPE_CHECKING:
    from teelab.kernel.attested_module import EnclaveBackend, EnclaveImage, ImageSpec

HUB_POD_MODULE = "teelab.extension.hub.hub_pod"
HUB_POD_IMAGE = "hub-pod"
# The hub, the proxy and the service start before the front door announces itself.
START_SECONDS = 180.0
STOP_SECONDS = 60.0


@dataclass(frozen=True)
class ProxyFiles:
    """configurable-http-proxy as the pod runs it: ``node`` and the ``node_modules`` folder holding it."""

    node: Path
    node_modules: Path

    @property
    def chp(self) -> Path:
        return self.node_modules / "configurable-http-proxy" / "bin" / "configurable-http-proxy"

    @classmethod
    def find(cls) -> ProxyFiles:
        """The checkout's (``npm ci``) or PATH's configurable-http-proxy, and the ``node`` on PATH."""
        from teelab.extension.hub.demo import find_chp

        script = find_chp().resolve()  # node_modules/configurable-http-proxy/bin/configurable-http-proxy
        node = shutil.which("node")
        if node is None:
            raise ConfigError("node is not installed", hint="configurable-http-proxy runs on node")
        return cls(Path(node).resolve(), script.parents[2])

    def digest(self) -> str:
        """SHA-256 over every proxy file's path and content (what the pod reports; the measurement covers each)."""
        outer = hashlib.sha256()
        files = [self.node, *sorted(p for p in self.node_modules.rglob("*") if p.is_file())]
        for path in files:
            outer.update(f"{path}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
        return outer.hexdigest()

    def version(self) -> str:
        package = self.node_modules / "configurable-http-proxy" / "package.json"
        try:
            return str(json.loads(package.read_text())["version"])
        except (OSError, ValueError, KeyError) as error:
            raise ConfigError(f"cannot read configurable-http-proxy's version: {error}") from None


def hub_pod_layout(hub_config: Path, proxy: ProxyFiles) -> dict[str, str]:
    """The measured description of the pod's other programs (the pod reports it with its evidence)."""
    import jupyterhub

    return {
        "image": HUB_POD_IMAGE,
        "hub_config": str(hub_config),
        "hub_config_sha256": hashlib.sha256(hub_config.read_bytes()).hexdigest(),
        "jupyterhub": jupyterhub.__version__,
        "node": str(proxy.node),
        "chp": str(proxy.chp),
        "chp_version": proxy.version(),
        "proxy_sha256": proxy.digest(),
        "service": "teelab.extension.hub.hub_pod_service",
    }


def hub_pod_spec(hub_config: Path, proxy: ProxyFiles | None = None) -> ImageSpec:
    """The pod's image spec (``backend.measure(spec)`` is the value to pin, without building)."""
    from teelab.kernel.attested_module import module_image_spec

    hub_config = hub_config.resolve()
    proxy = proxy or ProxyFiles.find()
    layout = hub_pod_layout(hub_config, proxy)
    return module_image_spec(
        HUB_POD_MODULE,
        name=HUB_POD_IMAGE,
        packages=FRONT_DOOR_PACKAGES,
        inputs=(REQUEST_ENV,),
        extra_trusted=(str(hub_config), str(proxy.node), str(proxy.node_modules)),
        extra_env={LAYOUT_ENV: json.dumps(layout, sort_keys=True)},
    )


def build_hub_pod_image(
    backend: EnclaveBackend, hub_config: Path, proxy: ProxyFiles | None = None, *, out: Path | None = None
) -> EnclaveImage:
    """Build the pod's image (into ``out``, default the backend's folder for ``hub-pod``)."""
    return backend.build(hub_pod_spec(hub_config, proxy), out=out)


def launch_hub_pod(
    backend: EnclaveBackend,
    image: EnclaveImage,
    *,
    listen: tuple[str, int] = ("127.0.0.1", 0),
    hostnames: tuple[str, ...] = ("localhost", "127.0.0.1"),
    controller: bytes | None = None,
) -> RunningFrontDoor:
    """Start the pod in ``backend``'s TEE; return once its hub is up and its front door listens."""
    from teelab.kernel.attested_module import launch_module

    collateral = backend.collateral_path()
    request = {
        "listen_host": listen[0],
        "listen_port": listen[1],
        "hostnames": list(hostnames),
        "collateral": str(collateral) if collateral is not None else None,
    }
    process = launch_module(backend, image, inputs={REQUEST_ENV: json.dumps(request)}, controller=controller)
    return wait_announced(process, START_SECONDS, stop_seconds=STOP_SECONDS)


__all__ = [
    "HUB_POD_IMAGE",
    "ProxyFiles",
    "build_hub_pod_image",
    "hub_pod_spec",
    "launch_hub_pod",
]
