"""The host agent's kernel table on its own (issue 15): what it does with kernels their gateways left behind.

A real sim kernel launched by the table; time is the table's injected clock, so nothing here waits for it.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from teelab.enclave_runtime.agent.kernels import KernelTable
from teelab.enclave_runtime.backends import get_backend

from .conftest import KernelEnv


def _gone(pid: int, within: float = 30.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def test_kernels_left_behind_by_their_gateways_are_killed_then_forgotten(kernel_env: KernelEnv) -> None:
    now = [1000.0]

    async def scenario() -> None:
        table = KernelTable(
            {"sim": get_backend("sim")},
            host="127.0.0.1",
            capacity=2,
            per_gateway=2,
            boot_timeout=60.0,
            retain_exited=300.0,
            clock=lambda: now[0],
        )
        kernel = await table.launch(
            "gw", backend="sim", image="python-kernel", nonce=os.urandom(32), controller_key=os.urandom(32)
        )
        assert kernel.process is not None
        pid = kernel.process.pid
        try:
            now[0] += 59.0
            assert await table.reap() == [] and kernel.state == "starting"
            assert len(table.live("gw")) == 1
            # No gateway came to relay its handshake within boot_timeout: killed, so it stops counting.
            now[0] += 2.0
            assert await table.reap() == []
            assert _gone(pid) and kernel.state == "exited" and table.live() == []
            # Still listed while its gateway might read the exit code, then forgotten with its scratch space.
            assert await table.reap() == [] and kernel.kernel_id in table.kernels
            now[0] += 299.0
            assert await table.reap() == []
            now[0] += 1.0
            assert await table.reap() == [kernel.kernel_id]
            assert table.kernels == {}
        finally:
            await table.close()

    asyncio.run(scenario())
