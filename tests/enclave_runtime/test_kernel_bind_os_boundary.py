"""The kernel binds its sockets in a process without AF_NETLINK, as under Gramine (tee_runtimes.md §1.7).

The stand-in (``libos_standin``) takes netlink away from a real process; there, libzmq's own bind of a numeric
``tcp://127.0.0.1`` address aborts the process exactly as it did under gramine-direct, and the TEE kernel's
binding (a descriptor opened by the kernel, handed over with ZMQ_USE_FD) binds and serves.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import zmq

from .libos_standin import build_no_netlink

KERNEL_BINDS = """
import sys, zmq
from teelab.kernel.kernelapp import TeeKernelApp
from teelab.kernel.tcp_bind import PreopenedHeartbeat
app = TeeKernelApp(ip="127.0.0.1", transport="tcp")
router = zmq.Context().socket(zmq.ROUTER)
port = app._bind_socket(router, 0)
heartbeat = PreopenedHeartbeat(zmq.Context(), ("tcp", "127.0.0.1", 0))
heartbeat.start()
print(port, heartbeat.port, flush=True)
sys.stdin.readline()
"""
STOCK_BIND = """
import zmq
from ipykernel.kernelapp import IPKernelApp
app = IPKernelApp(ip="127.0.0.1", transport="tcp")
app._bind_socket(zmq.Context().socket(zmq.ROUTER), 0)
print("bound")
"""


@pytest.fixture(scope="module")
def no_netlink(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    library = build_no_netlink(tmp_path_factory.mktemp("libos"))
    return {**os.environ, "LD_PRELOAD": str(library)}


def test_os_boundary_the_stand_in_reproduces_libzmqs_bind_abort(no_netlink: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-c", STOCK_BIND], env=no_netlink, capture_output=True, text=True
    )
    assert result.returncode == -signal.SIGABRT
    assert "Address family not supported by protocol (src/ip_resolver.cpp" in result.stderr
    assert "bound" not in result.stdout


def test_os_boundary_the_kernel_binds_and_serves_without_netlink(no_netlink: dict[str, str]) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", KERNEL_BINDS],
        env=no_netlink,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stdin is not None
        line = process.stdout.readline()
        assert line, f"the kernel's binding died (exit {process.wait()})"
        port, hb_port = (int(p) for p in line.split())
        context = zmq.Context()
        heartbeat = context.socket(zmq.REQ)
        heartbeat.connect(f"tcp://127.0.0.1:{hb_port}")
        heartbeat.send(b"ping")
        assert heartbeat.poll(20000) and heartbeat.recv() == b"ping"  # the heartbeat echoes
        dealer = context.socket(zmq.DEALER)
        dealer.connect(f"tcp://127.0.0.1:{port}")
        assert dealer.poll(0, zmq.POLLOUT)
        context.destroy(linger=0)
        assert process.poll() is None
    finally:
        process.kill()
        process.wait()


def test_a_host_name_is_refused_before_any_lookup() -> None:
    from teelab.kernel.tcp_bind import bind_preopened

    with zmq.Context() as context, context.socket(zmq.ROUTER) as router:
        with pytest.raises(ValueError, match="numeric"):
            bind_preopened(router, "localhost", 0)


def test_the_port_in_use_is_a_zmq_error_as_ipykernel_expects() -> None:
    import errno

    from teelab.kernel.tcp_bind import bind_preopened

    with zmq.Context() as context, context.socket(zmq.ROUTER) as a, context.socket(zmq.ROUTER) as b:
        port = bind_preopened(a, "127.0.0.1", 0)
        with pytest.raises(zmq.ZMQError) as caught:
            bind_preopened(b, "127.0.0.1", port)
        assert caught.value.errno == errno.EADDRINUSE
