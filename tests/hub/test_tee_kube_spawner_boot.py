"""TeeKubeSpawner's attested start against a real server boot: no Kubernetes API server here.

This machine plays the cluster. Creating the pod (``_make_create_pod_request``, the one call that would reach
the API server) launches the boot the pod names — its command's module, its one environment variable — in the
simulated TEE, with the digest of the pod's init-data annotation as the platform's launch field, as Kata puts
it into ``HOST_DATA``/``MRCONFIGID`` (the simulated TEE reports it as SGX ``CONFIGID``); the pod then shows in
KubeSpawner's real pod reflector as running at 127.0.0.1, and a kubelet task reports the container's exit.
Deleting the pod kills the boot. Everything else is the real TeeKubeSpawner over the real KubeSpawner: the
hub connects to the listening boot at the pod's address, verifies its evidence with the controller checked
by init-data, seals the bundle, and the boot runs jupyterhub-singleuser, which answers at the pod's URL.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any
from urllib.parse import urlsplit

import pytest
from traitlets.config import Config

from teelab.enclave_runtime.backend import EnclaveProcess
from teelab.enclave_runtime.image import EnclaveImage
from teelab.enclave_runtime.sim.backend import SimBackend
from teelab.extension.hub.demo import free_port
from teelab.extension.hub.kube_spawner import TeeKubeSpawner, decode_init_data_toml
from teelab.extension.hub.kubernetes import INIT_DATA_ANNOTATION, ConfidentialPods, pod_json
from teelab.extension.hub.spawner_image import SERVER_IMAGE, image_folder
from teelab.extension.hub.tee_spawner import AttestationFailed
from teelab.gateway.identity import GatewayIdentity
from tests.hub.test_tee_kube_spawner import no_cluster, with_reflector

pytestmark = pytest.mark.slow
__all__ = ["no_cluster"]  # the fixture (autouse): a kubeconfig naming nobody, this test's own reflectors

HUB_TOKEN = "hub-api-token-of-the-pod"


@dataclass
class Tee:
    root: Path
    backend: SimBackend
    image: EnclaveImage


@pytest.fixture(scope="module")
def tee(tmp_path_factory: pytest.TempPathFactory) -> Tee:
    root = tmp_path_factory.mktemp("pod-tee")
    built = subprocess.run(
        [sys.executable, "-m", "teelab.extension.hub.spawner_image", str(root)],
        env={**os.environ, "TEELAB_DATA_DIR": str(root / "data")},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr
    backend = SimBackend(root / "data" / "sim-platform")
    return Tee(root, backend, backend.load_image(SERVER_IMAGE, image_folder(root)))


@pytest.fixture
def hub_api() -> Iterator[str]:
    """The hub's API as far as a starting single-user server asks it (its version)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"version": "6.1.1"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-JupyterHub-Version", "6.1.1")
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hub/api"
    finally:
        server.shutdown()


class SimCluster(TeeKubeSpawner):  # type: ignore[misc]
    """TeeKubeSpawner whose API server and node are this machine (see the module's docstring)."""

    tee: Tee
    host_init_data: str | None = None  # a node that launches the pod with this init-data instead
    boots: dict[str, EnclaveProcess] = {}

    async def _make_create_pod_request(self, pod: Any, request_timeout: float) -> bool:
        self.check_boot_pod(pod)  # as TeeKubeSpawner does before the real request
        manifest = pod_json(pod)
        (container,) = manifest["spec"]["containers"]
        assert container["command"][-1] == "teelab.extension.hub.server_boot"
        inputs = {entry["name"]: entry["value"] for entry in container["env"]}
        annotation = self.host_init_data or manifest["metadata"]["annotations"][INIT_DATA_ANNOTATION]
        launch_field = hashlib.sha256(decode_init_data_toml(annotation).encode()).digest()
        key = f"{self.namespace}/{self.pod_name}"
        process = await asyncio.get_running_loop().run_in_executor(
            None,
            lambda: self.tee.backend.launch(self.tee.image, inputs=inputs, controller=launch_field),
        )
        SimCluster.boots[key] = process
        status = {"name": "notebook", "ready": True, "state": {"running": {}}}
        self.pod_reflector.resources[key] = {
            **manifest,
            "metadata": {**manifest["metadata"], "uid": "uid-" + key},
            "status": {"phase": "Running", "podIP": "127.0.0.1", "containerStatuses": [status]},
        }
        return True

    async def _make_delete_pod_request(self, pod_name: str, *args: Any) -> bool:
        key = f"{self.namespace}/{pod_name}"
        process = SimCluster.boots.pop(key, None)
        if process is not None:
            process.kill()
            await asyncio.get_running_loop().run_in_executor(None, process.wait)
            process.cleanup()
        self.pod_reflector.resources.pop(key, None)
        return True


async def kubelet(spawner: SimCluster) -> None:
    """Report a boot that exited as the pod's terminated container, as the watch would."""
    while True:
        for key, process in list(SimCluster.boots.items()):
            pod = spawner.pod_reflector.resources.get(key)
            if pod is not None and process.poll() is not None:
                pod["status"]["containerStatuses"][0]["state"] = {"terminated": {"exitCode": process.poll()}}
        await asyncio.sleep(0.1)


def cluster_spawner(tee: Tee, tmp_path: Path, hub_api: str) -> SimCluster:
    from jupyterhub.objects import Server
    from kubespawner.spawner import MockObject

    c = Config()
    c.TeeSpawner.identity_file = str(tmp_path / "spawner-identity.pem")
    c.TeeSpawner.policy_for = {"*": str(tee.root / "policies" / "hub-server.toml")}
    c.TeeSpawner.tee_backend = "sim"  # the verifier of the evidence the pods make (here: simulated SGX)
    c.TeeSpawner.sim_platform = str(tee.root / "data" / "sim-platform")
    c.TeeSpawner.handshake_timeout = 120.0
    c.TeeKubeSpawner.boot_port = free_port()
    c.TeeKubeSpawner.challenge_port = free_port()
    c.KubeSpawner.port = free_port()
    c.KubeSpawner.events_enabled = False
    c.KubeSpawner.image = "registry.example.org/teelab-hub-server:1"
    c.Spawner.http_timeout = 120
    c.Spawner.args = ["--allow-root"] if os.geteuid() == 0 else []  # this machine's test user may be root
    hub = MockObject()
    hub.public_host, hub.url, hub.base_url, hub.api_url = "", "/hub/", "/hub/", hub_api
    user = MockObject()
    user.name, user.id, user.url, user.escaped_name, user.groups = "alice", 7, "/user/alice/", "alice", []
    SimCluster.tee = tee
    spawner = SimCluster(config=c, _mock=True, api_token=HUB_TOKEN, hub=hub, user=user)
    spawner.server = Server(base_url="/user/alice/")
    return spawner


def test_the_pods_boot_is_attested_over_the_network_with_the_controller_checked_by_init_data(
    tee: Tee, tmp_path: Path, hub_api: str
) -> None:
    """no Kubernetes API server here: the real attested start, a real boot in a (simulated) TEE."""

    async def run() -> tuple[str, list[dict[str, Any]], dict[str, Any], int | None]:
        spawner = cluster_spawner(tee, tmp_path, hub_api)
        await with_reflector(spawner)
        node = asyncio.ensure_future(kubelet(spawner))
        try:
            url = await spawner.start()
            # As JupyterHub does with what start() returns: the server's address (for KubeSpawner's poll).
            address = urlsplit(str(url))
            spawner.server.ip, spawner.server.port = address.hostname, address.port
            polled = await spawner.poll()  # KubeSpawner's pod check, then the re-challenge at the pod's IP
            state = spawner.get_state()
            await spawner.stop(now=True)
            return str(url), spawner._events, state, polled
        finally:
            node.cancel()
            for key in list(SimCluster.boots):
                await spawner._make_delete_pod_request(key.split("/", 1)[1])

    url, events, state, polled = asyncio.run(run())
    messages = [event["message"] for event in events]
    assert url.startswith("http://127.0.0.1:"), url
    order = [
        "Launched the server's boot in a confidential pod",
        "Evidence received",
        "Evidence verified",
        "Controller checked: config_id is the sha256 of the init-data",
        "Secrets sealed",
        "Server ready",
    ]
    found = [next(i for i, m in enumerate(messages) if m.startswith(step)) for step in order]
    assert found == sorted(found), messages
    verdict = state["teelab_attestation"]
    assert verdict["status"] == "attested" and verdict["ok"] is True
    identity = GatewayIdentity.load_or_create(tmp_path / "spawner-identity.pem")
    pods = ConfidentialPods(
        "kata-qemu-snp",
        identity.controller,
        hashlib.sha256((tee.root / "policies" / "hub-server.toml").read_bytes()).hexdigest(),
        digest="sha256",
    )
    assert verdict["init_data"] == pods.init_data_annotation()  # kept for re-challenges after a hub restart
    assert polled is None and verdict["last_challenge"]["ok"] is True, verdict["last_challenge"]
    # What `teelab hub verify --user alice` does with the record the hub's service serves: every check passes,
    # the controller through the init-data; a record carrying the host's own init-data fails it.
    lines = user_verifies(tee, verdict)
    assert all(line.passed for line in lines), lines
    (controller,) = [line for line in lines if line.name == "server controller"]
    assert "config_id is the sha256 of the init-data" in controller.detail
    host = ConfidentialPods("kata-qemu-snp", identity.controller, "0" * 64, digest="sha256")
    (controller,) = [
        line
        for line in user_verifies(tee, {**verdict, "init_data": host.init_data_annotation()})
        if line.name == "server controller"
    ]
    assert not controller.passed and "another init-data" in controller.detail


def user_verifies(tee: Tee, verdict: dict[str, Any]) -> list[Any]:
    from teelab.enclave_runtime.backend import Evidence
    from teelab.extension.hub.verify_server import ServerRecord, verify_server
    from teelab.gateway.policy import load_policy
    from teelab.gateway.session import backend_anchors
    from teelab.timeutil import utcnow

    body = json.dumps({"user": "alice", "servers": [{**verdict, "server_name": ""}]}).encode()
    record = ServerRecord.from_reply(body, "alice", "")
    blob = Evidence.from_json(verdict["evidence"]).blob
    outcome = verify_server(
        record,
        load_policy(tee.root / "policies" / "hub-server.toml"),
        at=utcnow(),
        collateral=tee.backend.collateral_for(blob, utcnow()),
        anchors=backend_anchors(tee.backend),
    )
    return list(outcome.lines)


def test_a_pod_launched_with_another_init_data_never_says_hello(
    tee: Tee, tmp_path: Path, hub_api: str
) -> None:
    """no Kubernetes API server here: the node binds the host's own init-data (naming its own controller), the
    boot request still names the hub's: the boot refuses before its hello and the spawn fails."""

    async def run() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        spawner = cluster_spawner(tee, tmp_path, hub_api)
        host = ConfidentialPods("kata-qemu-snp", hashlib.sha256(b"the host's own G").digest(), "0" * 64)
        spawner.host_init_data = host.init_data_annotation()
        await with_reflector(spawner)
        node = asyncio.ensure_future(kubelet(spawner))
        try:
            with pytest.raises(AttestationFailed, match="exited"):
                await spawner.start()
            return spawner._events, spawner.get_state()
        finally:
            node.cancel()
            for key in list(SimCluster.boots):
                await spawner._make_delete_pod_request(key.split("/", 1)[1])

    events, state = asyncio.run(run())
    messages = [event["message"] for event in events]
    assert not [m for m in messages if m.startswith(("Evidence received", "Secrets sealed"))], messages
    assert state["teelab_attestation"]["status"] == "failed"


def test_a_stranger_reaching_the_pods_boot_first_gets_only_the_public_hello_and_the_spawner_still_attests_it(
    tee: Tee,
) -> None:
    """no Kubernetes API server here: another tenant of the cluster connects to the listening boot before the
    hub and sends a bundle of its own; the boot drops it unopened and waits for G_s's."""
    import socket
    import time

    from teelab.extension.hub import spawner_protocol as protocol
    from teelab.extension.hub.spawner_protocol import (
        ServerBootRequest,
        ServerBundle,
        ServerHello,
        ServerSecrets,
    )
    from teelab.protocols.session import Ready, SealedBundle, decode_one_of, recv_frame, send_frame

    spawner, stranger = GatewayIdentity.generate(), GatewayIdentity.generate()
    pods = ConfidentialPods("kata-qemu-snp", spawner.controller, "0" * 64, digest="sha256")
    port = free_port()
    request = ServerBootRequest(
        os.urandom(32),
        ("127.0.0.1", port),
        spawner.public,
        "alice/",
        ("127.0.0.1", free_port()),
        listen=True,
        init_data=pods.init_data_annotation(),
    )
    process = tee.backend.launch(
        tee.image, inputs={protocol.REQUEST_ENV: request.to_env()}, controller=pods.init_data_digest()
    )

    def connect() -> socket.socket:
        deadline = time.monotonic() + 60
        while True:
            try:
                return socket.create_connection(("127.0.0.1", port), timeout=60)
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None, "the boot never listened"
                time.sleep(0.2)

    def bundle_from(signer: GatewayIdentity, hello: ServerHello, confirm_key: bytes) -> SealedBundle:
        bundle = ServerBundle(
            "alice/", {"JUPYTERHUB_USER": "alice"}, (), "/", confirm_key, ServerSecrets("t0k")
        )
        sealed = protocol.seal(hello.enclave_key, request.nonce, bundle)
        return SealedBundle(sealed, protocol.sign(signer.secret, sealed, request.nonce, hello.enclave_key))

    try:
        with connect() as channel:
            first = ServerHello.from_json(recv_frame(channel))
            send_frame(channel, bundle_from(stranger, first, os.urandom(32)))
            assert channel.recv(1) == b""  # closed, nothing applied
        assert process.poll() is None
        confirm_key = os.urandom(32)
        with connect() as channel:
            hello = ServerHello.from_json(recv_frame(channel))
            assert hello.enclave_key == first.enclave_key  # the same TEE, the same public hello
            send_frame(channel, bundle_from(spawner, hello, confirm_key))
            ready = decode_one_of(recv_frame(channel), Ready)
            assert isinstance(ready, Ready)
            assert protocol.check_ready(confirm_key, request.nonce, hello.enclave_key, ready.confirm)
    finally:
        process.kill()
        process.wait()
        process.cleanup()


def test_a_boot_request_whose_init_data_names_another_controller_is_refused_before_hello(tee: Tee) -> None:
    """no Kubernetes API server here: the host launches the pod with init-data of its own (naming its own key)
    and the hub's key in the boot request; the launch field matches the init-data, the request does not."""
    from teelab.extension.hub import spawner_protocol as protocol
    from teelab.extension.hub.spawner_protocol import ServerBootRequest

    spawner, host = GatewayIdentity.generate(), GatewayIdentity.generate()
    hosts = ConfidentialPods("kata-qemu-snp", host.controller, "0" * 64, digest="sha256")
    request = ServerBootRequest(
        os.urandom(32),
        ("127.0.0.1", free_port()),
        spawner.public,
        "alice/",
        ("127.0.0.1", free_port()),
        listen=True,
        init_data=hosts.init_data_annotation(),
    )
    process = tee.backend.launch(
        tee.image,
        inputs={protocol.REQUEST_ENV: request.to_env()},
        controller=hosts.init_data_digest(),
        stderr=subprocess.PIPE,
    )
    try:
        status = process.wait(timeout=120)
        assert process.popen.stderr is not None
        stderr = process.popen.stderr.read().decode()
    finally:
        process.kill()
        process.wait()
        process.cleanup()
    assert status == 1 and "names another controller than its init-data" in stderr, stderr
