"""Evil-host tests: the host watches its own loopback while the attested kernel runs.

Under a LibOS the kernel's 127.0.0.1 is the host's network stack, so anything the kernel sends there without
encryption the host reads. The kernel's five channels are CURVE-encrypted; these tests check that nothing
else crosses: not the output of a forked child (stock ipykernel forwards it over an unencrypted loopback
socket) and not a debugger (stock ipykernel starts debugpy on a ``debug_request``).

The capture is a raw packet socket on ``lo`` (what the host's root would run, like tcpdump); it needs
CAP_NET_RAW. The socket inventory test needs no privilege: it lists every TCP socket of the kernel's
processes.
"""

from __future__ import annotations

import queue
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

from teelab.enclave_runtime.acceptance.loopback import LoopbackCapture

from .conftest import KERNEL, KernelEnv
from .test_kernel_manager import run

pytestmark = pytest.mark.evil_host


# The cells build their markers at run time, so the only way a marker's bytes can cross the loopback is as
# output (the cell's code travels on the encrypted shell channel anyway).
FORK_CELL = """
import multiprocessing, os, sys
def child(tag, n):
    # One write per line: each is one message, whole, however the children's messages interleave.
    for i in range(n):
        sys.stdout.write(tag + "-" + str(i) + "-" + "x" * 9000 + "\\n")
    sys.stderr.write(tag + "-stderr\\n")
    sys.stdout.flush(); sys.stderr.flush()
pids = []
for tag in ("FORKED" + "-CHILD-" + "A", "FORKED" + "-CHILD-" + "B"):
    pid = os.fork()
    if pid == 0:
        child(tag, 3)
        os._exit(0)
    pids.append(pid)
process = multiprocessing.get_context("fork").Process(target=child, args=("FORKED" + "-MP-" + "C", 1))
process.start()
for pid in pids:
    os.waitpid(pid, 0)
process.join()
print("parent done", process.exitcode)
"""
EXPECTED_FORK_OUTPUT = [
    *(f"FORKED-CHILD-{tag}-{i}-{'x' * 9000}\n" for tag in "AB" for i in range(3)),
    "FORKED-MP-C-0-" + "x" * 9000 + "\n",
]
EXPECTED_FORK_STDERR = ["FORKED-CHILD-A-stderr\n", "FORKED-CHILD-B-stderr\n", "FORKED-MP-C-stderr\n"]
FORK_MARKERS = [b"FORKED-CHILD-A", b"FORKED-CHILD-B", b"FORKED-MP-C", b"x" * 200]
DEBUG_MARKER = "DEBUG-CLIENT-7d41c0"
DAP_MESSAGE = re.compile(rb'Content-Length: \d+\r\n\r\n\{.{0,200}?"(command|event)"', re.DOTALL)


def _capture_or_skip() -> LoopbackCapture:
    try:
        capture = LoopbackCapture()
    except PermissionError:
        pytest.skip(
            "capturing the loopback needs CAP_NET_RAW (run as root); the socket inventory test still runs"
        )
    # Control experiment: the capture does see plaintext sent over the loopback.
    canary = b"LOOPBACK-CANARY-" + str(time.monotonic_ns()).encode()
    with socket.create_server(("127.0.0.1", 0)) as server:
        with socket.create_connection(server.getsockname()) as client:
            peer, _ = server.accept()
            with peer:
                client.sendall(canary)
                assert peer.recv(len(canary)) == canary
    seen = capture.stop()
    assert canary in seen, "the loopback capture does not work here"
    return LoopbackCapture()


@pytest.fixture
def capture() -> Iterator[LoopbackCapture]:
    capture = _capture_or_skip()
    yield capture
    capture.stop()


@pytest.fixture
def session(kernel_env: KernelEnv) -> Iterator[tuple[KernelManager, BlockingKernelClient]]:
    km = KernelManager(kernel_name=KERNEL)
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    yield km, kc
    kc.stop_channels()
    km.shutdown_kernel(now=True)


def _kernel_pids(km: KernelManager) -> list[int]:
    process = km.provisioner.process  # type: ignore[union-attr]
    assert process is not None
    root = psutil.Process(process.pid)
    return [root.pid, *(child.pid for child in root.children(recursive=True))]


def _foreign_sockets(km: KernelManager) -> list[str]:
    """TCP sockets of the kernel's processes other than its five CURVE channels."""
    ports = {km.shell_port, km.iopub_port, km.stdin_port, km.control_port, km.hb_port}
    foreign = []
    for pid in _kernel_pids(km):
        try:
            connections = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        for conn in connections:
            if conn.laddr and conn.laddr.port not in ports:
                foreign.append(f"pid {pid}: {conn.status} {conn.laddr} -> {conn.raddr or '-'}")
    return foreign


def _outputs_until(
    kc: BlockingKernelClient, msg_id: str, expected: list[str], timeout: float = 60
) -> dict[str, str]:
    """The stream output of ``msg_id`` by stream name, read until every ``expected`` text came (or timeout)."""
    streams = {"stdout": "", "stderr": ""}
    deadline = time.monotonic() + timeout
    while not all(text in "".join(streams.values()) for text in expected) and time.monotonic() < deadline:
        try:
            msg = kc.get_iopub_msg(timeout=1)
        except queue.Empty:
            continue
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
            streams[msg["content"]["name"]] += msg["content"]["text"]
    return streams


def _debug_request(kc: BlockingKernelClient, content: dict[str, Any]) -> dict[str, Any]:
    msg = kc.session.msg("debug_request", content)
    kc.control_channel.send(msg)
    reply: dict[str, Any] = kc.get_control_msg(timeout=60)
    assert reply["parent_header"]["msg_id"] == msg["header"]["msg_id"]
    assert reply["msg_type"] == "debug_reply"
    content = reply["content"]
    assert isinstance(content, dict)
    return content


def test_plaintext_of_a_forked_childs_output_never_crosses_the_loopback(
    session: tuple[KernelManager, BlockingKernelClient], capture: LoopbackCapture
) -> None:
    _km, kc = session
    msg_id = kc.execute(FORK_CELL)
    streams = _outputs_until(kc, msg_id, [*EXPECTED_FORK_OUTPUT, *EXPECTED_FORK_STDERR, "parent done 0\n"])
    seen = capture.stop()
    # Users still see what forked children print, whole and on the right stream, over the encrypted iopub.
    for line in [*EXPECTED_FORK_OUTPUT, "parent done 0\n"]:
        assert line in streams["stdout"], f"a forked child's output is missing: {line[:30]!r}"
    for line in EXPECTED_FORK_STDERR:
        assert line in streams["stderr"]
    for marker in FORK_MARKERS:
        assert marker not in seen, f"{marker[:20]!r} crossed the host's loopback in plaintext"


def test_plaintext_debug_request_is_refused_and_no_debug_adapter_traffic_crosses_the_loopback(
    session: tuple[KernelManager, BlockingKernelClient], capture: LoopbackCapture
) -> None:
    _km, kc = session
    initialize = {
        "seq": 1,
        "type": "request",
        "command": "initialize",
        "arguments": {"clientID": DEBUG_MARKER, "adapterID": "python", "pathFormat": "path"},
    }
    attach = {"seq": 2, "type": "request", "command": "attach", "arguments": {}}
    evaluate = {"seq": 3, "type": "request", "command": "evaluate", "arguments": {"expression": DEBUG_MARKER}}
    replies = [_debug_request(kc, request) for request in (initialize, attach, evaluate)]
    seen = capture.stop()
    assert DEBUG_MARKER.encode() not in seen, "debug adapter traffic crossed the host's loopback"
    # The capture sees the whole machine's loopback (other tests' HTTP too): look for DAP's framing + JSON.
    assert not DAP_MESSAGE.search(seen), "a Debug Adapter Protocol message crossed the host's loopback"
    # Each request gets a DAP error response that says why.
    for request, reply in zip((initialize, attach, evaluate), replies, strict=True):
        assert reply["type"] == "response" and reply["success"] is False
        assert reply["request_seq"] == request["seq"] and reply["command"] == request["command"]
        assert "debugger is disabled" in reply["message"] and "plaintext" in reply["message"]
    # The kernel advertises no debugger, so JupyterLab shows none.
    kc.kernel_info()
    info = kc.get_shell_msg(timeout=60)["content"]
    assert info["status"] == "ok" and "debugger" not in info["supported_features"]


def test_plaintext_debugpy_cannot_be_imported_in_the_kernel(
    session: tuple[KernelManager, BlockingKernelClient],
) -> None:
    _km, kc = session
    reply, output = run(kc, "import debugpy")
    assert reply["status"] == "error" and reply["ename"] == "ModuleNotFoundError"
    assert "debugger is disabled" in output and "plaintext" in output


def test_plaintext_kernel_holds_no_socket_but_its_encrypted_channels(
    session: tuple[KernelManager, BlockingKernelClient],
) -> None:
    km, kc = session
    # Control experiment: the inventory does see the kernel's own channels.
    ports = {
        conn.laddr.port
        for pid in _kernel_pids(km)
        for conn in psutil.Process(pid).net_connections(kind="tcp")
    }
    assert {km.shell_port, km.iopub_port, km.stdin_port, km.control_port, km.hb_port} <= ports
    msg_id = kc.execute(FORK_CELL)
    assert "parent done 0\n" in _outputs_until(kc, msg_id, ["parent done 0\n"])["stdout"]
    _debug_request(kc, {"seq": 1, "type": "request", "command": "initialize", "arguments": {}})
    assert _foreign_sockets(km) == []
