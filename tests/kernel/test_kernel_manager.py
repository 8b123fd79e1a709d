"""A plain ``jupyter_client.KernelManager(kernel_name="teelab-sim")`` gets an attested kernel: the
lifecycle (start, execute, interrupt by message, restart with a fresh handshake, shutdown) works unchanged,
and shutdown leaves no process, file or port behind."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

from teelab.kernel.registry import REGISTRY

from .conftest import KERNEL, KernelEnv


def run(kc: BlockingKernelClient, code: str, timeout: float = 60) -> tuple[dict[str, object], str]:
    chunks: list[str] = []

    def collect(msg: dict[str, object]) -> None:
        content = msg["content"]
        assert isinstance(content, dict)
        if msg["msg_type"] == "stream":
            chunks.append(str(content["text"]))
        elif msg["msg_type"] == "error":
            chunks.append(f"{content['ename']}: {content['evalue']}")

    reply = kc.execute_interactive(code, timeout=timeout, output_hook=collect)
    return reply["content"], "".join(chunks)


@pytest.fixture
def km(kernel_env: KernelEnv) -> Iterator[KernelManager]:
    manager = KernelManager(kernel_name=KERNEL)
    manager.start_kernel()
    yield manager
    if manager.has_kernel:
        manager.shutdown_kernel(now=True)


@pytest.fixture
def kc(km: KernelManager) -> Iterator[BlockingKernelClient]:
    client = km.client()
    client.start_channels()
    client.wait_for_ready(timeout=60)
    yield client
    client.stop_channels()


def test_executes_code_and_knows_its_own_attestation(
    km: KernelManager, kc: BlockingKernelClient, kernel_env: KernelEnv
) -> None:
    content, out = run(kc, "print(6 * 7)")
    assert content["status"] == "ok" and out == "42\n"
    content, out = run(
        kc,
        "import teelab.session as s; a = s.attestation(); "
        "print(a['verdict'], a['tee'], a['simulated'], a.measurement, a['claims']['debug'])",
    )
    assert out.split() == ["warning", "sgx", "True", kernel_env.mrenclave, "False"]
    record = REGISTRY.get(km.kernel_id)
    assert record is not None and record.ok and record.result is not None
    assert record.result.claims["mrenclave"] == kernel_env.mrenclave
    assert "simulated TEE — not confidential" in record.result.warnings


def test_interrupt_travels_as_a_message(km: KernelManager, kc: BlockingKernelClient) -> None:
    assert km.kernel_spec is not None and km.kernel_spec.interrupt_mode == "message"
    msg_id = kc.execute("import time\nprint('running', flush=True)\nfor _ in range(600): time.sleep(0.1)")
    while True:  # interrupt only once the loop runs, not while the request is still being dispatched
        msg = kc.get_iopub_msg(timeout=30)
        if msg["msg_type"] == "stream" and "running" in msg["content"]["text"]:
            break
    km.interrupt_kernel()
    reply = kc.get_shell_msg(timeout=30)
    assert reply["parent_header"]["msg_id"] == msg_id
    assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"


def test_restart_is_a_fresh_handshake(km: KernelManager) -> None:
    first = (km.session.key, km.curve_publickey, km.curve_secretkey, km.shell_port)
    first_record = REGISTRY.get(km.kernel_id)
    km.restart_kernel(now=True)
    second = (km.session.key, km.curve_publickey, km.curve_secretkey, km.shell_port)
    assert all(a != b for a, b in zip(first, second, strict=True))
    record = REGISTRY.get(km.kernel_id)
    assert record is not None and first_record is not None and record.started_at > first_record.started_at
    assert record.result is not None and first_record.result is not None
    assert record.result.expected_report_data != first_record.result.expected_report_data  # new nonce
    client = km.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        assert run(client, "print('again')")[1] == "again\n"
    finally:
        client.stop_channels()


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            assert error.errno == errno.EADDRINUSE
            return False
        return True


def test_shutdown_leaves_no_process_file_or_port(kernel_env: KernelEnv) -> None:
    km = KernelManager(kernel_name=KERNEL)
    km.start_kernel()
    process = km.provisioner.process  # type: ignore[union-attr]
    assert process is not None
    pid, scratch = process.pid, process.scratch
    ports = [km.shell_port, km.iopub_port, km.stdin_port, km.control_port, km.hb_port]
    connection_file = Path(km.connection_file)
    assert connection_file.exists() and scratch is not None and scratch.exists()
    kernel_id = km.kernel_id
    km.shutdown_kernel(now=False)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not connection_file.exists()
    assert not scratch.exists()
    assert all(_port_free(port) for port in ports)
    assert REGISTRY.get(kernel_id) is None


GATEWAY = """
import json, sys, time
from jupyter_client.manager import KernelManager
km = KernelManager(kernel_name="teelab-sim")
km.start_kernel()
process = km.provisioner.process
print(json.dumps({"pid": process.pid, "scratch": str(process.scratch)}), flush=True)
time.sleep(600)
"""


def test_a_kernel_does_not_outlive_its_gateway(kernel_env: KernelEnv) -> None:
    """kill -9 of the gateway (the Jupyter server): its kernel stops and removes its scratch space."""
    import json
    import signal
    import subprocess
    import sys
    import time

    gateway = subprocess.Popen([sys.executable, "-c", GATEWAY], stdout=subprocess.PIPE, text=True)
    assert gateway.stdout is not None
    started = json.loads(gateway.stdout.readline())
    kernel_pid, scratch = started["pid"], Path(started["scratch"])
    assert scratch.exists()
    os.kill(kernel_pid, 0)
    gateway.send_signal(signal.SIGKILL)
    gateway.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(kernel_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(kernel_pid, signal.SIGKILL)
        pytest.fail("the kernel outlived its gateway")
    assert not scratch.exists()
