"""Binding the kernel's ZeroMQ sockets without libzmq resolving the address (no AF_NETLINK in a LibOS).

libzmq resolves a bind address by first asking whether it names a network interface, and for that it calls
``getifaddrs()``. Gramine has no ``AF_NETLINK``, so glibc's ``getifaddrs()`` fails with ``EAFNOSUPPORT`` and
libzmq aborts the whole process (``Address family not supported by protocol (src/ip_resolver.cpp:542)``) —
even for a numeric ``tcp://127.0.0.1:port`` (observed under gramine-direct v1.9, research/tee_runtimes.md §1.7).
Only ``*`` skips that lookup, and it binds every interface of the host.

Decision: the kernel opens, binds and listens on the TCP socket itself (Python's ``bind`` takes a numeric
address without any interface lookup) and hands the descriptor to libzmq with ``ZMQ_USE_FD``, which makes
libzmq ignore the address text entirely. The address must therefore be numeric; a host name would need a
resolver the TEE may not have, and is refused.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Any

import zmq
from ipykernel.heartbeat import Heartbeat

# The listen backlog libzmq itself uses for TCP listeners (ZMQ_BACKLOG's default).
_BACKLOG = 100


def numeric_address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(ip)
    except ValueError:
        raise ValueError(
            f"the kernel binds only numeric addresses (got {ip!r}): a name needs an interface or DNS lookup "
            "that a LibOS without AF_NETLINK cannot do"
        ) from None


def bind_preopened(zsocket: zmq.Socket[Any], ip: str, port: int) -> int:
    """Bind ``zsocket`` to ``ip:port`` (``port`` 0: any free port) through a descriptor opened here.

    Raises ``zmq.ZMQError(EADDRINUSE)`` when the port is taken, as ``zmq.Socket.bind`` does, so ipykernel's
    retry loops keep working.
    """
    address = numeric_address(ip)
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        # What libzmq sets on its own listeners: a restarted kernel can take its port back at once.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((str(address), port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise zmq.ZMQError(errno.EADDRINUSE) from exc
            raise
        listener.listen(_BACKLOG)
        bound = int(listener.getsockname()[1])
        zsocket.setsockopt(zmq.USE_FD, listener.fileno())
        host = f"[{address}]" if address.version == 6 else str(address)
        # With ZMQ_USE_FD libzmq takes the descriptor as it is and never parses this text.
        zsocket.bind(f"tcp://{host}:{bound}")
    except BaseException:
        listener.close()
        raise
    listener.detach()  # libzmq owns the descriptor now and closes it with the socket
    return bound


class PreopenedHeartbeat(Heartbeat):  # type: ignore[misc]
    """ipykernel's heartbeat, bound through ``bind_preopened``."""

    def _try_bind_socket(self) -> None:
        if self.transport != "tcp":
            raise ValueError(f"the TEE kernel serves tcp only, not {self.transport!r}")
        self.port = bind_preopened(self.socket, self.ip, int(self.port))
