"""The hub pod's part of its measured ``jupyterhub_config.py`` (docs/hosted-hub.md, "The hub pod").

Inside the pod (:mod:`.hub_pod`) the hub, configurable-http-proxy and the ``teelab-kbs`` service listen on
loopback ports the pod picks, and every secret they share is made inside the TEE at start: the hub's cookie
secret, the proxy's auth token, the crypt key for auth state, the service's API token. The pod hands them to
the hub in :class:`PodSettings` through an inherited pipe (``TEELAB_HUB_POD_SETTINGS_FD``), never through an
environment variable, argv or a file the host sees. The operator's config calls::

    from teelab.extension.hub.hub_pod_config import configure_hub_pod
    c = get_config()
    c.JupyterHub.authenticator_class = ...      # the operator's own choices
    configure_hub_pod(c, root="/srv/teelab", groups=..., operator_groups=...)   # configure_hub's options

and that file is a trusted file of the pod's image: a change to it changes the pod's measurement. With
``tee_spawner=True`` it also turns on JupyterHub's ``internal_ssl`` with the store in the pod's scratch
(:mod:`.hub_pod_tls` makes it before the proxy starts), and keeps TeeSpawner's controller key ``G_s`` in the
same scratch (:attr:`PodSettings.spawner_identity`, made by the pod at start): never under ``root``, which the
host sees.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from typing import Any

from traitlets.config import Config

from teelab.errors import ConfigError
from teelab.extension.hub.scopes import SERVICE_NAME

SETTINGS_FD_ENV = "TEELAB_HUB_POD_SETTINGS_FD"
SERVICE_PREFIX = f"/services/{SERVICE_NAME}/"
INTERNAL_CERTS = "internal-ssl"
SPAWNER_IDENTITY = "spawner-identity.pem"


@dataclass(frozen=True)
class PodSettings:
    """What the pod decided at start: loopback ports, its scratch folder and the secrets it made."""

    scratch: str
    proxy_port: int
    proxy_api_port: int
    hub_port: int
    service_port: int
    kbs_port: int
    # The secrets: never in a repr (a log line or a traceback that shows the settings shows ports only).
    cookie_secret: str = field(repr=False)  # hex, 32 bytes
    proxy_token: str = field(repr=False)
    crypt_key: str = field(repr=False)  # hex, 32 bytes
    service_token: str = field(repr=False)

    @classmethod
    def make(cls, scratch: str, ports: tuple[int, int, int, int, int]) -> PodSettings:
        proxy_port, proxy_api_port, hub_port, service_port, kbs_port = ports
        return cls(
            scratch=scratch,
            proxy_port=proxy_port,
            proxy_api_port=proxy_api_port,
            hub_port=hub_port,
            service_port=service_port,
            kbs_port=kbs_port,
            cookie_secret=secrets.token_hex(32),
            proxy_token=secrets.token_hex(32),
            crypt_key=secrets.token_hex(32),
            service_token=secrets.token_hex(32),
        )

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> PodSettings:
        try:
            fields = json.loads(data)
            return cls(**{k: fields[k] for k in cls.__dataclass_fields__})
        except (ValueError, TypeError, KeyError) as error:
            raise ConfigError(f"malformed hub pod settings: {error}") from None

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def hub_api_url(self) -> str:
        return f"http://127.0.0.1:{self.hub_port}/hub/api"

    @property
    def internal_certs(self) -> str:
        """JupyterHub's internal CAs and certificates (``internal_ssl``): in the TEE's scratch, made at start."""
        return f"{self.scratch}/{INTERNAL_CERTS}"

    @property
    def spawner_identity(self) -> str:
        """TeeSpawner's controller key ``G_s``: in the TEE's scratch, made fresh (0600) at each pod start.

        Whoever holds ``G_s`` signs bundles a genuine server image accepts, so it must not sit in ``root`` (a
        host-visible folder). The price: a restarted pod has a new ``G_s`` (docs/hosted-hub.md, "The hub pod").
        """
        return f"{self.scratch}/{SPAWNER_IDENTITY}"

    @property
    def service_url(self) -> str:
        return f"http://127.0.0.1:{self.service_port}"


_current: PodSettings | None = None


def use_settings(settings: PodSettings) -> None:
    """The pod itself loads the same config (to learn the service's environment) with its own settings."""
    global _current
    _current = settings


def current_settings() -> PodSettings:
    """This process's pod settings: set by the pod, or read once from the pipe the pod passed the hub."""
    global _current
    if _current is None:
        fd_text = os.environ.pop(SETTINGS_FD_ENV, None)
        if fd_text is None:
            raise ConfigError(
                "configure_hub_pod: not started by the hub pod (no settings pipe)",
                hint="this configuration runs inside `teelab hub pod` only",
            )
        try:
            with os.fdopen(int(fd_text), "rb") as pipe:
                _current = PodSettings.from_bytes(pipe.read())
        except (OSError, ValueError) as error:
            raise ConfigError(f"cannot read the hub pod settings: {error}") from None
    return _current


def configure_hub_pod(c: Any, *, root: str, **hub_options: Any) -> None:
    """Everything pod-specific, then :func:`~teelab.extension.hub.configure_hub` with the pod's ports.

    With ``tee_spawner=True`` the hub runs ``internal_ssl``: the hub, the proxy's API and every server speak
    TLS with JupyterHub's internal CAs, made inside the pod (:mod:`.hub_pod_tls`), and the proxy reaches each
    server only with the key attested inside its TEE. There is no opt-out: the pod refuses a TeeSpawner
    config with ``internal_ssl`` off (:func:`~.hub_pod_tls.require_internal_ssl`)."""
    from teelab.extension.hub.config import configure_hub

    pod = current_settings()
    tls = bool(hub_options.get("tee_spawner", False))
    scheme = "https" if tls else "http"
    c.JupyterHub.bind_url = pod.proxy_url
    c.JupyterHub.hub_bind_url = f"{scheme}://127.0.0.1:{pod.hub_port}"
    # The pod starts the proxy itself: JupyterHub would hand it the token in its environment.
    c.ConfigurableHTTPProxy.should_start = False
    c.ConfigurableHTTPProxy.api_url = f"{scheme}://127.0.0.1:{pod.proxy_api_port}"
    if tls:
        c.JupyterHub.internal_ssl = True
        # Made by the pod before the proxy starts, reused by the hub: a recreated store would no longer match
        # the certificates the running proxy holds.
        c.JupyterHub.internal_certs_location = pod.internal_certs
        c.JupyterHub.recreate_internal_certs = False
    c.ConfigurableHTTPProxy.auth_token = pod.proxy_token
    c.JupyterHub.cookie_secret = bytes.fromhex(pod.cookie_secret)
    c.CryptKeeper.keys = [bytes.fromhex(pod.crypt_key)]
    # The hub's database lives in the TEE's scratch (a tmpfs inside a CVM, or its encrypted disk).
    c.JupyterHub.db_url = f"sqlite:///{pod.scratch}/jupyterhub.sqlite"
    c.JupyterHub.pid_file = f"{pod.scratch}/jupyterhub.pid"
    configure_hub(
        c,
        root=root,
        public_url=pod.proxy_url,
        kbs_listen=f"127.0.0.1:{pod.kbs_port}",
        service_port=pod.service_port,
        **hub_options,
    )
    if tls:
        # configure_tee_spawner put G_s under root; in the pod it lives in the TEE's scratch instead.
        c.TeeSpawner.identity_file = pod.spawner_identity
    services = []
    for service in c.JupyterHub.services:
        if service.get("name") == SERVICE_NAME:
            # Started by the pod (its token through a pipe), not by the hub (its token in the environment).
            service = {k: v for k, v in service.items() if k != "command"}
            service["api_token"] = pod.service_token
        services.append(service)
    c.JupyterHub.services = services


def load_hub_config(config_file: str, settings: PodSettings) -> Config:
    """The measured config as the hub will load it, with this pod's settings."""
    from traitlets.config.loader import PyFileConfigLoader

    use_settings(settings)
    return PyFileConfigLoader(os.path.basename(config_file), path=os.path.dirname(config_file)).load_config()


def service_environment(loaded: Config, settings: PodSettings) -> dict[str, str]:
    """The (public) environment the hub would give the managed ``teelab-kbs`` service, from the config."""
    entry = next((s for s in loaded.JupyterHub.services if s.get("name") == SERVICE_NAME), None)
    if entry is None:
        raise ConfigError(f"the hub's config configures no {SERVICE_NAME} service: call configure_hub_pod")
    # Under internal_ssl the hub's own port wants a client certificate the hub issues only to services it
    # starts; the pod starts the service, which asks the hub through the proxy's loopback port instead (the
    # proxy forwards to the hub over TLS with its client certificate). Both hops stay inside the pod.
    hub_api = (
        f"{settings.proxy_url}/hub/api" if loaded.JupyterHub.get("internal_ssl") else settings.hub_api_url
    )
    return {
        **{str(k): str(v) for k, v in entry.get("environment", {}).items()},
        "JUPYTERHUB_SERVICE_NAME": SERVICE_NAME,
        "JUPYTERHUB_SERVICE_URL": settings.service_url,
        "JUPYTERHUB_SERVICE_PREFIX": SERVICE_PREFIX,
        "JUPYTERHUB_API_URL": hub_api,
        "JUPYTERHUB_CLIENT_ID": f"service-{SERVICE_NAME}",
        "JUPYTERHUB_OAUTH_CALLBACK_URL": f"{SERVICE_PREFIX}oauth_callback",
        "JUPYTERHUB_BASE_URL": "/",
        "JUPYTERHUB_HOST": "",
    }
