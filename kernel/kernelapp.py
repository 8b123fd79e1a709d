"""The ipykernel application that runs inside the TEE.

Differences from stock ``IPKernelApp``, each for a reason:
- its connection information arrives in memory from the sealed session bundle and is never written to a
  file (a host-visible disk is the one place it must not be);
- a ZAP allow-list answers on the socket context *before* any socket binds, so there is no moment at which
  an unauthenticated CURVE client could complete a handshake;
- nothing reaches the process's stdout/stderr, which the host reads: ipykernel copies every fd-level write
  (C extensions, subprocesses) to the original stdout "for terminals" whatever ``quiet`` says, so the
  original descriptors are pointed at /dev/null before it captures them;
- no plaintext channel crosses the loopback, which under a LibOS is the host's network stack: forked
  children hand their output to the kernel over an inherited pipe instead of ipykernel's unencrypted
  ``tcp://127.0.0.1`` socket (``fork_output``), and there is no debugger — debugpy is unimportable and a
  ``debug_request`` gets a refusal (``no_debugger``);
- nothing forks while the kernel starts (``startup``), and ``!cmd`` runs without a pty where the TEE has
  none (``shell``);
- every socket binds through a descriptor the kernel opened (``tcp_bind``): libzmq's own bind asks
  ``getifaddrs()``, which aborts the process in a LibOS without AF_NETLINK.
The heartbeat runs on its own context without the allow-list: it only echoes bytes, and the stock client's
heartbeat channel connects with a throwaway key.

``init_sockets`` follows ipykernel 7.4's own implementation (pinned in pyproject.toml) with the allow-list
started between creating the context and binding the first socket.
"""

from __future__ import annotations

import atexit
import os
from typing import Any

import zmq
from ipykernel.kernelapp import IPKernelApp
from zmq.auth.thread import ThreadAuthenticator

from teelab.kernel.fork_output import ForkPipeIOPubThread
from teelab.kernel.no_debugger import refuse_debugpy
from teelab.kernel.startup import no_processes
from teelab.kernel.tcp_bind import PreopenedHeartbeat, bind_preopened
from teelab.kernel.tee_kernel import TeeKernel
from teelab.kernel.zap import start_allow_list


class TeeKernelApp(IPKernelApp):  # type: ignore[misc]
    authenticator: ThreadAuthenticator | None = None
    # A plain class attribute, not a configurable trait: no configuration may bring the debugger back.
    kernel_class: type = TeeKernel

    def initialize(self, argv: list[str] | None = None) -> None:
        # Before ipykernel's kernel looks for debugpy (it imports ipykernel.debugger in its constructor).
        refuse_debugpy()
        # No fork while the kernel starts (under Gramine a fork is a new enclave, and one in flight while a
        # client connected crashed the kernel); the boot reports ready only after this returns.
        with no_processes():
            super().initialize(argv)

    def init_connection_file(self) -> None:
        """The connection information is already loaded from the bundle; there is no file."""

    def write_connection_file(self, **kwargs: Any) -> None:
        """Never write the keys anywhere."""

    def cleanup_connection_file(self) -> None:
        """Nothing was written."""

    def log_connection_info(self) -> None:
        """Nothing to tell the host."""

    def init_sockets(self) -> None:
        self.log.info("Starting the attested kernel at pid: %i", os.getpid())
        assert self.context is None, "init_sockets cannot be called twice!"
        assert self.curve_publickey is not None and self.curve_secretkey is not None, (
            "CURVE keys are required"
        )
        self.context = context = zmq.Context()
        atexit.register(self.close)
        self.authenticator = start_allow_list(context, {self.curve_publickey})

        self.shell_socket = context.socket(zmq.ROUTER)
        self.shell_socket.linger = 1000
        self._apply_curve_server_options(self.shell_socket)
        self.shell_port = self._bind_socket(self.shell_socket, self.shell_port)

        self.stdin_socket = context.socket(zmq.ROUTER)
        self.stdin_socket.linger = 1000
        self._apply_curve_server_options(self.stdin_socket)
        self.stdin_port = self._bind_socket(self.stdin_socket, self.stdin_port)

        if hasattr(zmq, "ROUTER_HANDOVER"):
            self.shell_socket.router_handover = self.stdin_socket.router_handover = 1

        self.init_control(context)
        self.init_iopub(context)

    def _try_bind_socket(self, s: zmq.Socket[bytes], port: int) -> int:
        if self.transport != "tcp":
            raise ValueError(f"the TEE kernel serves tcp only, not {self.transport!r}")
        return bind_preopened(s, self.ip, port)

    def init_heartbeat(self) -> None:
        """ipykernel 7.4's init_heartbeat with the heartbeat bound through ``tcp_bind``."""
        self.heartbeat = PreopenedHeartbeat(
            zmq.Context(),  # its own context, as ipykernel's: the GIL must not block the echo
            (self.transport, self.ip, self.hb_port),
            curve_publickey=self.curve_publickey,
            curve_secretkey=self.curve_secretkey,
        )
        self.hb_port = self.heartbeat.port
        self.heartbeat.start()

    def init_control(self, context: zmq.Context[zmq.Socket[bytes]]) -> None:
        super().init_control(context)
        # Only the debugger uses this second connection to the shell socket.
        self.debug_shell_socket.close(linger=0)
        self.debug_shell_socket = None

    def init_iopub(self, context: zmq.Context[zmq.Socket[bytes]]) -> None:
        """ipykernel 7.4's init_iopub with forked children's output on a pipe instead of loopback TCP."""
        self.iopub_socket = context.socket(zmq.XPUB)
        self.iopub_socket.linger = 1000
        self._apply_curve_server_options(self.iopub_socket)
        self.iopub_port = self._bind_socket(self.iopub_socket, self.iopub_port)
        self.configure_tornado_logger()
        self.iopub_thread = ForkPipeIOPubThread(self.iopub_socket, pipe=True, session=self.session)
        self.iopub_thread.start()
        # ipykernel's backward-compatible wrapper: the socket API, run on the IOPub thread.
        self.iopub_socket = self.iopub_thread.background_socket

    def init_io(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            for fd in (1, 2):
                os.dup2(devnull, fd)
        finally:
            os.close(devnull)
        super().init_io()

    def close(self) -> None:
        # The authenticator's ZAP socket lives on the kernel's context; the context cannot terminate
        # while it is open.
        if self.authenticator is not None:
            self.authenticator.stop()
            self.authenticator = None
        super().close()
