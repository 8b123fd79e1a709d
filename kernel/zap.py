"""A ZAP allow-list for the kernel's sockets: only holders of the provisioned CURVE key may connect.

Stock ipykernel runs CURVE servers with no client authentication, so anyone who knows the server's public
key can subscribe to its outputs (shared/research/jupyter.md §2.2). teelab's kernel answers ZAP requests on
its socket context and accepts exactly the gateway's key — which, in jupyter_client's shared-keypair design,
is the server's own public key, so stock clients (jupyter_server, nbclient, jupyter console) work unchanged.
"""

from __future__ import annotations

import hmac
import logging

import zmq
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger("teelab.kernel.zap")


class AllowList:
    """The credentials provider ZAP asks about each CURVE client key (Z85 text)."""

    def __init__(self, allowed: set[bytes]) -> None:
        self._allowed = tuple(allowed)
        self.refused = 0

    def callback(self, domain: str, key: bytes) -> bool:
        # Compare against every entry without stopping early, so timing says nothing about the list.
        allowed = False
        for candidate in self._allowed:
            allowed |= hmac.compare_digest(candidate, key)
        if not allowed:
            self.refused += 1
            log.warning("refused a CURVE client that is not on the allow-list")
        return allowed


def start_allow_list(context: zmq.Context[zmq.Socket[bytes]], allowed: set[bytes]) -> ThreadAuthenticator:
    """Answer ZAP on ``context`` before any socket of it binds; returns the running authenticator."""
    authenticator = ThreadAuthenticator(context, log=log)
    authenticator.start()
    authenticator.configure_curve_callback(domain="*", credentials_provider=AllowList(allowed))
    return authenticator
