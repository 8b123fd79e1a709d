"""TeeKubeSpawner's attested start while strangers on the pod network hold and hammer the pod's boot port.

The cluster is this machine, as in test_tee_kube_spawner_boot.py (whose simulated API server, node and TEE this
reuses): creating the pod launches the real boot in the simulated TEE, and before the pod shows as running —
so before the hub's spawner can connect — another tenant connects to the boot first: it holds a silent
connection open for the whole spawn, sends 50 connections of garbage and an unsigned ``refused``. The real
TeeKubeSpawner then attests the pod and the server answers.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from teelab.extension.hub.spawner_protocol import ServerHello
from teelab.protocols.session import Refused, recv_frame, send_frame
from tests.hub.test_tee_kube_spawner import no_cluster, with_reflector
from tests.hub.test_tee_kube_spawner_boot import SimCluster, Tee, cluster_spawner, hub_api, kubelet, tee

pytestmark = pytest.mark.slow
__all__ = ["hub_api", "no_cluster", "tee"]  # fixtures: the module's TEE, the hub API, no cluster config


class Stranger:
    """Another tenant of the cluster at the pod's boot port."""

    def __init__(self, port: int, process: Any) -> None:
        self.port = port
        self.process = process
        self.held: list[socket.socket] = []

    def connect(self) -> socket.socket:
        deadline = time.monotonic() + 60
        while True:
            try:
                return socket.create_connection(("127.0.0.1", self.port), timeout=60)
            except OSError:
                assert time.monotonic() < deadline and self.process.poll() is None, "the boot never listened"
                time.sleep(0.1)

    def hammer(self) -> None:
        self.held.append(self.connect())  # silent, open until the spawn is over
        for index in range(50):
            with self.connect() as channel:
                channel.sendall(os.urandom(64) if index % 2 else struct.pack(">I", 1 << 30))
                channel.shutdown(socket.SHUT_WR)
                while channel.recv(65536):
                    pass  # until the boot closes it
        with self.connect() as channel:
            ServerHello.from_json(recv_frame(channel))
            send_frame(channel, Refused("policy"))
            assert channel.recv(65536) == b""  # closed by the boot, which listens on
        assert self.process.poll() is None

    def close(self) -> None:
        for channel in self.held:
            channel.close()


def test_strangers_holding_and_hammering_the_pods_boot_port_do_not_stop_the_attested_spawn(
    tee: Tee, tmp_path: Path, hub_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """no Kubernetes API server here: the real TeeKubeSpawner and boot, strangers first at the boot's port."""
    strangers: list[Stranger] = []
    create = SimCluster._make_create_pod_request

    async def create_then_strangers(self: SimCluster, pod: Any, request_timeout: float) -> bool:
        created: bool = await create(self, pod, request_timeout)
        process = SimCluster.boots[f"{self.namespace}/{self.pod_name}"]
        stranger = Stranger(self.boot_port, process)
        strangers.append(stranger)
        await asyncio.get_running_loop().run_in_executor(None, stranger.hammer)
        return created

    monkeypatch.setattr(SimCluster, "_make_create_pod_request", create_then_strangers)

    async def run() -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
        spawner = cluster_spawner(tee, tmp_path, hub_api)
        await with_reflector(spawner)
        node = asyncio.ensure_future(kubelet(spawner))
        try:
            url = await spawner.start()
            state = spawner.get_state()
            await spawner.stop(now=True)
            return str(url), spawner._events, state
        finally:
            node.cancel()
            for stranger in strangers:
                stranger.close()
            for key in list(SimCluster.boots):
                await spawner._make_delete_pod_request(key.split("/", 1)[1])

    url, events, state = asyncio.run(run())
    assert strangers, "the strangers never reached the boot"
    assert url.startswith("http://127.0.0.1:"), url
    messages = [event["message"] for event in events]
    assert any(m.startswith("Secrets sealed") for m in messages), messages
    assert state["teelab_attestation"]["status"] == "attested"
