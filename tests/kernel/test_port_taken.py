"""A session port taken by another process between the gateway choosing it and the kernel binding it (the race
jupyter_client's own ports have): the gateway starts a whole new session on new ports, a bounded number of
times. Tested at the OS boundary with the sim backend: a socket of this test holds the port."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from jupyter_client.connect import LocalPortCache
from jupyter_client.manager import KernelManager

from teelab.kernel import provisioner
from teelab.kernel.errors import KernelRefused

from .conftest import KERNEL, KernelEnv
from .test_kernel_manager import run


@pytest.fixture
def held_port() -> Iterator[socket.socket]:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    yield holder
    holder.close()


def _first_port_taken(monkeypatch: pytest.MonkeyPatch, held: int, times: int) -> list[int]:
    """The port cache hands out ``held`` as the first port of the first ``times`` sessions."""
    handed: list[int] = []
    real: Callable[..., int] = LocalPortCache.find_available_port

    def find(cache: Any, ip: str) -> int:
        session, index = divmod(len(handed), len(provisioner.PORT_NAMES))
        port = held if index == 0 and session < times else real(cache, ip)
        handed.append(port)
        return port

    monkeypatch.setattr(LocalPortCache, "find_available_port", find)
    return handed


def test_a_taken_port_starts_a_new_session_on_new_ports(
    kernel_env: KernelEnv, held_port: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = held_port.getsockname()[1]
    handed = _first_port_taken(monkeypatch, held, times=1)
    km = KernelManager(kernel_name=KERNEL)
    km.start_kernel()
    try:
        assert handed.count(held) == 1 and len(handed) == 2 * len(provisioner.PORT_NAMES)
        assert held not in (km.shell_port, km.iopub_port, km.stdin_port, km.control_port, km.hb_port)
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        assert run(kc, "print(6 * 7)")[1] == "42\n"
        kc.stop_channels()
    finally:
        km.shutdown_kernel(now=True)


def test_a_port_taken_at_every_attempt_is_refused_and_says_why(
    kernel_env: KernelEnv, held_port: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = held_port.getsockname()[1]
    handed = _first_port_taken(monkeypatch, held, times=provisioner.PORT_ATTEMPTS)
    km = KernelManager(kernel_name=KERNEL)
    with pytest.raises(KernelRefused, match="Address already in use"):
        km.start_kernel()
    assert handed.count(held) == provisioner.PORT_ATTEMPTS  # bounded: no more launches than that
    assert km.provisioner is None or not km.provisioner.has_process
