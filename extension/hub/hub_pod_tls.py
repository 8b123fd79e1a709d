"""The hub pod under ``internal_ssl``: JupyterHub's internal CAs made inside the pod, and the proxy's TLS options.

JupyterHub makes its internal CAs and the hub's, the proxy API's and the proxy client's certificates in
``JupyterHub.init_internal_ssl`` and hands them to configurable-http-proxy in ``ConfigurableHTTPProxy.start``.
The pod starts the proxy itself, before the hub (``should_start = False``: JupyterHub would put the proxy's
token in its environment), so the pod runs those two steps of JupyterHub's own code first, with the measured
config: the same store (``internal_certs_location``, in the TEE's scratch), the same certificates, the same
proxy flags. The hub then finds every record in the store and reuses it.

With TeeSpawner the notebooks CA certifies only a server key the hub has seen attested (``spawner_certs``); the
proxy reaches servers with ``--client-ssl-reject-unauthorized`` against the proxy-client trust bundle (the hub's
and the notebooks CA), so it talks to nothing whose certificate the pod did not issue.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import Any

from teelab.errors import ConfigError


@dataclass(frozen=True)
class PodTls:
    """The proxy's TLS flags and what the pod needs to reach the hub's TLS port as a client."""

    proxy_flags: tuple[str, ...]
    hub_key: str
    hub_cert: str
    hub_ca: str

    def hub_client_context(self) -> ssl.SSLContext:
        """A client context with the hub's own internal certificate (the hub requires a client certificate)."""
        from jupyterhub.utils import make_ssl_context

        context: ssl.SSLContext = make_ssl_context(self.hub_key, self.hub_cert, cafile=self.hub_ca)
        return context


def uses_tee_spawner(config: Any) -> bool:
    """Whether ``config``'s spawner is a TeeSpawner (an entry-point name like ``simple`` is JupyterHub's own)."""
    from traitlets.utils.importstring import import_item

    from teelab.extension.hub.tee_spawner import TeeSpawner

    spawner = config.JupyterHub.get("spawner_class", "")
    if isinstance(spawner, str):
        if "." not in spawner:
            return False
        try:
            spawner = import_item(spawner)
        except (ImportError, AttributeError) as error:
            raise ConfigError(f"the hub's spawner_class {spawner!r} does not import: {error}") from None
    return isinstance(spawner, type) and issubclass(spawner, TeeSpawner)


def require_internal_ssl(config: Any) -> bool:
    """Whether the pod runs ``internal_ssl``; a TeeSpawner hub without it is refused, not started: its proxy
    would reach the attested servers over plain HTTP on the host's network."""
    if config.JupyterHub.get("internal_ssl", False):
        return True
    if uses_tee_spawner(config):
        raise ConfigError(
            "the hub pod refuses TeeSpawner without internal_ssl: the proxy would reach every attested server "
            "over plain HTTP on the host's network",
            hint="configure_hub_pod(c, ..., tee_spawner=True) turns it on; do not set "
            "c.JupyterHub.internal_ssl = False after it",
        )
    return False


def make_internal_tls(config: Any) -> PodTls:
    """Run JupyterHub's ``init_internal_ssl`` with ``config`` and take the flags its proxy launch would pass."""
    from jupyterhub.app import JupyterHub
    from jupyterhub.proxy import ConfigurableHTTPProxy

    if not config.JupyterHub.get("internal_ssl", False):
        raise ConfigError("the hub's config does not enable internal_ssl")

    async def make() -> PodTls:
        # init_internal_ssl ends by making JupyterHub's HTTP client, which wants a running loop.
        app = JupyterHub(config=config, log_level="WARN")
        app.init_internal_ssl()
        flags = ConfigurableHTTPProxy(app=app)._get_ssl_options()
        return PodTls(
            proxy_flags=tuple(str(flag) for flag in flags),
            hub_key=app.internal_ssl_key,
            hub_cert=app.internal_ssl_cert,
            hub_ca=app.internal_ssl_ca,
        )

    try:
        return asyncio.run(make())
    except (OSError, ValueError, KeyError) as error:
        raise ConfigError(f"cannot make the hub's internal TLS certificates: {error}") from None
