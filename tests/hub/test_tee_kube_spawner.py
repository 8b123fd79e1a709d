"""TeeKubeSpawner offline: no Kubernetes API server here.

The real ``TeeKubeSpawner.start()`` runs — TeeSpawner's attested start over KubeSpawner's own ``_start`` and
``get_pod_manifest`` — up to the one call that would reach the API server, ``_make_create_pod_request``,
where the test takes the pod exactly as the API server would receive it. KubeSpawner's pod reflector is a
real ``PodReflector`` whose resources the test fills as the API server's watch would (no connection is made:
the kubeconfig names a port nobody listens on). The boot process is checked against those structures.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import os
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient
from traitlets.config import Config

from teelab.errors import ConfigError
from teelab.extension.hub import spawner_protocol as protocol
from teelab.extension.hub.kube_spawner import BOOT_COMMAND, KubeBootProcess, TeeKubeSpawner
from teelab.extension.hub.kubernetes import (
    INIT_DATA_ANNOTATION,
    PodSecretError,
    decode_init_data,
    find_secrets,
)
from teelab.gateway.identity import GatewayIdentity

HUB_TOKEN = "hub-api-token-that-is-also-the-oauth-secret"
KBS_CREDENTIAL = "kbs-credential-of-the-user"
STORE = "s3://datasets.example.org/teelab?region=eu-1"


@pytest.fixture(autouse=True)
def no_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A kubeconfig naming a cluster nobody listens on; the shared reflectors are this test's only."""
    from kubernetes_asyncio.config import kube_config
    from kubespawner import KubeSpawner, clients

    config = tmp_path / "kubeconfig"
    config.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "none", "cluster": {"server": "https://127.0.0.1:9"}}],
                "contexts": [
                    {"name": "none", "context": {"cluster": "none", "user": "u", "namespace": "hub"}}
                ],
                "current-context": "none",
                "users": [{"name": "u", "user": {"token": "not-a-real-cluster"}}],
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(config))
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(config))
    clients.load_config.cache_clear()
    monkeypatch.setattr(KubeSpawner, "reflectors", {})
    yield


class Sent(Exception):
    """The pod reached the point where KubeSpawner sends it to the API server."""


class CapturingSpawner(TeeKubeSpawner):  # type: ignore[misc]
    """TeeKubeSpawner up to the API server: the pod it would create is kept, and nothing is sent."""

    sent: Any = None

    async def _make_create_pod_request(self, pod: Any, request_timeout: float) -> Any:
        self.check_boot_pod(pod)  # TeeKubeSpawner's own last check, as in the real request
        CapturingSpawner.sent = pod
        raise Sent


def serialize(pod: Any) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        async with ApiClient() as client:  # the JSON KubeSpawner would send to the API server
            result: dict[str, Any] = client.sanitize_for_serialization(pod)
            return result

    return asyncio.run(run())


def configured(tmp_path: Path, runtime_class: str = "kata-qemu-snp") -> Config:
    c = Config()
    policy = tmp_path / "hub-server.toml"
    policy.write_text('id = "hub-server"\n')
    c.TeeSpawner.identity_file = str(tmp_path / "spawner-identity.pem")
    c.TeeSpawner.policy_for = {"*": str(policy)}
    c.TeeSpawner.kbs_credential = lambda spawner: KBS_CREDENTIAL
    c.TeeKubeSpawner.runtime_class = runtime_class
    c.KubeSpawner.environment = {"TEELAB_STORE": STORE}  # configuration: sealed to the server, not in the pod
    c.KubeSpawner.events_enabled = False
    c.KubeSpawner.image = "registry.example.org/teelab-hub-server:1"
    # These tests look at the pod without internal_ssl (test_tee_kube_spawner_ssl.py: with it), which a cvm
    # server needs the operator's explicit opt-out for (test_a_cvm_server_without_internal_ssl_is_refused...).
    c.TeeSpawner.allow_plaintext_server_hop = True
    return c


async def with_reflector(spawner: TeeKubeSpawner) -> Any:
    """KubeSpawner's real pod reflector, loaded (empty) as after its first list: the spawner's fast path."""
    from kubespawner.reflector import ResourceReflector
    from kubespawner.spawner import PodReflector

    reflector = PodReflector(
        parent=spawner, namespace=spawner.namespace, labels={"component": "singleuser-server"}
    )
    assert isinstance(reflector, ResourceReflector)
    reflector.first_load_future.set_result(None)
    type(spawner).reflectors[spawner._get_reflector_key("pods")] = reflector
    return reflector


def started_pod(tmp_path: Path, c: Config) -> tuple[CapturingSpawner, dict[str, Any]]:
    """The real start() until the pod would be created: the spawner and the pod as JSON."""

    async def start() -> CapturingSpawner:
        spawner = CapturingSpawner(config=c, _mock=True, api_token=HUB_TOKEN)
        await with_reflector(spawner)
        with pytest.raises(Sent):
            await spawner.start()
        return spawner

    spawner = asyncio.run(start())
    return spawner, serialize(CapturingSpawner.sent)


@pytest.mark.parametrize("runtime_class", ["kata-qemu-snp", "kata-qemu-tdx"])
def test_the_boot_pod_is_confidential_names_the_controller_and_carries_no_secret_offline(
    tmp_path: Path, runtime_class: str
) -> None:
    """no Kubernetes API server here: the pod is taken where KubeSpawner would send it."""
    spawner, pod = started_pod(tmp_path, configured(tmp_path, runtime_class))
    identity = GatewayIdentity.load_or_create(tmp_path / "spawner-identity.pem")
    spec, metadata = pod["spec"], pod["metadata"]
    assert spec["runtimeClassName"] == runtime_class
    assert spec["automountServiceAccountToken"] is False
    init_data = decode_init_data(metadata["annotations"][INIT_DATA_ANNOTATION])
    assert INIT_DATA_ANNOTATION == "io.katacontainers.config.hypervisor.cc_init_data"
    assert init_data["version"] == "0.1.0" and init_data["algorithm"] == "sha256"
    teelab = tomllib.loads(init_data["data"]["teelab.toml"])
    assert teelab["controller"] == identity.controller.hex()
    (container,) = spec["containers"]
    assert container["command"] == BOOT_COMMAND and "args" not in container
    assert [entry["name"] for entry in container["env"]] == [protocol.REQUEST_ENV]
    request = protocol.ServerBootRequest.from_env(container["env"][0]["value"])
    assert request.listen and request.respond_to == ("0.0.0.0", spawner.boot_port)
    assert request.init_data == metadata["annotations"][INIT_DATA_ANNOTATION]
    assert request.controller_key == identity.public and request.server == "mock@name/"
    ports = {port.get("name"): port["containerPort"] for port in container["ports"]}
    assert ports["teelab-boot"] == spawner.boot_port and ports["teelab-attest"] == spawner.challenge_port
    assert "notebook-port" in ports  # where the attested server listens, as KubeSpawner's URL expects
    # Nothing secret anywhere: env, volumes, annotations, labels, command, args. Nor the configuration, which
    # travels sealed to the attested server.
    text = json.dumps(pod)
    key_pem = (tmp_path / "spawner-identity.pem").read_text()
    for secret in (HUB_TOKEN, KBS_CREDENTIAL, STORE, key_pem.strip().splitlines()[1]):
        assert secret not in text
    assert find_secrets(pod) == []
    assert not [v for v in (metadata.get("labels") or {}).values() if HUB_TOKEN in v]


def test_a_hook_that_puts_a_secret_or_another_runtime_class_back_is_refused_offline(tmp_path: Path) -> None:
    """no Kubernetes API server here: ``modify_pod_hook`` runs after the spawner's pod, before the send."""
    from kubernetes_asyncio.client import V1EnvVar

    def put_token(spawner: Any, pod: Any) -> Any:
        pod.spec.containers[0].env.append(V1EnvVar(name="JUPYTERHUB_API_TOKEN", value=HUB_TOKEN))
        return pod

    def plain_runc(spawner: Any, pod: Any) -> Any:
        pod.spec.runtime_class_name = None
        return pod

    def other_init_data(spawner: Any, pod: Any) -> Any:
        toml = (
            b'version = "0.1.0"\nalgorithm = "sha256"\n\n[data]\n"teelab.toml" = "controller = \\"00\\"\\n"\n'
        )
        pod.metadata.annotations[INIT_DATA_ANNOTATION] = base64.b64encode(gzip.compress(toml)).decode()
        return pod

    for hook, named in (
        (put_token, "JUPYTERHUB_API_TOKEN"),
        (plain_runc, "runtimeClassName"),
        (other_init_data, "init-data"),
    ):
        c = configured(tmp_path)
        c.KubeSpawner.modify_pod_hook = hook
        CapturingSpawner.sent = None

        async def start(c: Config, named: str) -> None:
            spawner = CapturingSpawner(config=c, _mock=True, api_token=HUB_TOKEN)
            await with_reflector(spawner)
            with pytest.raises(PodSecretError, match=named):
                await spawner.start()

        asyncio.run(start(c, named))
        assert CapturingSpawner.sent is None  # never sent


def pod_status(
    pod: dict[str, Any], *, phase: str, ip: str | None = "10.1.2.3", **state: Any
) -> dict[str, Any]:
    """The pod as the API server's watch reports it (what the reflector stores)."""
    statuses = [{"name": "notebook", "ready": phase == "Running", "state": state or {"running": {}}}]
    return {
        **pod,
        "metadata": {**pod["metadata"], "uid": "4c1a", "namespace": "hub"},
        "status": {"phase": phase, "podIP": ip, "containerStatuses": statuses},
    }


def test_the_boot_process_follows_the_pod_in_kubespawners_reflector_offline(tmp_path: Path) -> None:
    """no Kubernetes API server here: the reflector's resources are filled as its watch would fill them."""
    spawner, pod = started_pod(tmp_path, configured(tmp_path))

    async def follow() -> None:
        reflector = await with_reflector(spawner)
        key = f"{spawner.namespace}/{spawner.pod_name}"
        deleted: list[str] = []

        async def delete() -> None:  # what the API server's deletion shows through the watch
            deleted.append(key)
            reflector.resources.pop(key, None)

        process = KubeBootProcess(
            lambda: reflector.pods, key, delete, loop=asyncio.get_running_loop(), wait_seconds=30
        )
        reflector.resources[key] = pod_status(pod, phase="Pending", ip=None)
        assert process.poll() is None and process.pod_ip() is None
        reflector.resources[key] = pod_status(pod, phase="Running")
        assert process.poll() is None and process.pod_ip() == "10.1.2.3"
        assert await kubespawner_poll(spawner) is None  # KubeSpawner's own poll agrees
        assert spawner.server_url("10.1.2.3", process) == f"http://10.1.2.3:{spawner.port}"
        assert spawner.challenge_host() == "10.1.2.3"
        reflector.resources[key] = pod_status(pod, phase="Running", terminated={"exitCode": 3})
        assert process.poll() == 3
        reflector.resources[key] = pod_status(pod, phase="Failed")
        reflector.resources[key]["status"]["containerStatuses"] = []
        assert process.poll() == 1
        reflector.resources[key] = pod_status(pod, phase="Running")
        reflector.resources[key]["metadata"]["deletionTimestamp"] = "2026-12-03T05:00:00Z"
        assert process.poll() == 1  # on its way out
        del reflector.resources[key]["metadata"]["deletionTimestamp"]
        process.kill()
        process.kill()  # once is enough
        assert await asyncio.get_running_loop().run_in_executor(None, process.wait) == 1
        assert deleted == [key] and process.poll() == 1
        assert await kubespawner_poll(spawner) == 1
        process.cleanup()

    asyncio.run(follow())


async def kubespawner_poll(spawner: TeeKubeSpawner) -> int | None:
    from kubespawner import KubeSpawner

    result: int | None = await KubeSpawner.poll(spawner)
    return result


def test_the_hook_points_no_secret_into_the_pod_even_from_the_operators_environment_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """no Kubernetes API server here: env_keep and extra env with credential names never reach the pod."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-the-hub-host")
    c = configured(tmp_path)
    c.KubeSpawner.env_keep = ["AWS_SECRET_ACCESS_KEY"]
    c.KubeSpawner.environment = {"STORE_PASSWORD": "pw-of-the-store", "TEELAB_STORE": STORE}
    _spawner, pod = started_pod(tmp_path, c)
    text = json.dumps(pod)
    assert "from-the-hub-host" not in text and "pw-of-the-store" not in text
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == "from-the-hub-host"


def test_k8s_values_configure_the_tee_kube_spawner_whose_pods_report_the_printed_launch_field_offline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """no Kubernetes API server here: `teelab hub k8s-values --tee-kube-spawner` as the hub's configuration."""
    import hashlib

    from teelab.cli import main as teelab_main
    from teelab.extension.hub.kube_spawner import decode_init_data_toml

    c = configured(tmp_path, "kata-qemu-snp")
    argv = ["hub", "k8s-values", "--runtime-class", "kata-qemu-tdx", "--tee-kube-spawner"]
    argv += ["--identity-file", c.TeeSpawner.identity_file, "--server-policy", c.TeeSpawner.policy_for["*"]]
    assert teelab_main(argv) == 0
    captured = capsys.readouterr()
    values = json.loads(captured.out)
    config = values["hub"]["config"]
    assert config["JupyterHub"]["spawner_class"] == "teelab.extension.hub.kube_spawner.TeeKubeSpawner"
    rule = values["singleuser"]["networkPolicy"]["ingress"][0]
    assert [port["port"] for port in rule["ports"]] == [8890, 8891]
    assert rule["from"][0]["podSelector"]["matchLabels"] == {
        "hub.jupyter.org/network-access-singleuser": "true"
    }
    c.merge(Config({name: section for name, section in config.items() if name != "JupyterHub"}))
    _spawner, pod = started_pod(tmp_path, c)
    assert pod["spec"]["runtimeClassName"] == "kata-qemu-tdx"
    toml = decode_init_data_toml(pod["metadata"]["annotations"][INIT_DATA_ANNOTATION])
    printed = captured.err.split("MRCONFIGID of these pods: ", 1)[1].split()[0]
    assert printed == hashlib.sha256(toml.encode()).hexdigest()  # MRCONFIGID: this ‖ 16 zero bytes


@pytest.mark.parametrize(
    "annotation",
    [
        "not base64 ☃",
        base64.b64encode(b"not gzip").decode(),
        base64.b64encode(gzip.compress(b"\xff\xfe not utf-8")).decode(),
        base64.b64encode(gzip.compress(b"[data\n")).decode(),  # not TOML
        base64.b64encode(gzip.compress(b'version = "0.1.0"\nalgorithm = "sha256"\n')).decode(),  # no data
        base64.b64encode(
            gzip.compress(b'version = "0.1.0"\nalgorithm = "md5"\n[data]\n"teelab.toml" = ""\n')
        ).decode(),
        base64.b64encode(
            gzip.compress(b'version = "9"\nalgorithm = "sha256"\n[data]\n"teelab.toml" = ""\n')
        ).decode(),
        base64.b64encode(
            gzip.compress(
                b'version = "0.1.0"\nalgorithm = "sha256"\n[data]\n"teelab.toml" = "controller = \\"zz\\""\n'
            )
        ).decode(),
        base64.b64encode(gzip.compress(b"#" * (2 * 1024 * 1024))).decode(),  # inflates past the bound
        base64.b64encode(gzip.compress(b'version = "0.1.0"\n')[:-8]).decode(),  # truncated
    ],
)
def test_the_boots_init_data_reader_fails_only_with_a_handshake_error(annotation: str) -> None:
    """The boot reads the init-data from its request, which crossed the host."""
    from teelab.extension.hub.kubernetes import read_init_data
    from teelab.protocols.session import HandshakeError

    with pytest.raises(HandshakeError):
        read_init_data(annotation)


def test_the_boots_init_data_reader_reads_the_spawners_init_data() -> None:
    import hashlib

    from teelab.extension.hub.kubernetes import ConfidentialPods, launch_value, read_init_data

    controller = hashlib.sha256(b"G_s.pub").digest()
    pods = ConfidentialPods("kata-qemu-tdx", controller, "ab" * 32, digest="sha256")
    init_data = read_init_data(pods.init_data_annotation())
    assert init_data.controller == controller and init_data.policy_digest == "ab" * 32
    assert launch_value(init_data.digest(), 48) == pods.init_data_digest() + bytes(16)  # TDX MRCONFIGID
    assert (
        launch_value(hashlib.sha384(b"x").digest(), 32) == hashlib.sha384(b"x").digest()[:32]
    )  # Kata truncates


def test_the_boot_requests_pod_fields_round_trip_and_malformed_ones_fail_with_a_handshake_error() -> None:
    from teelab.protocols.session import HandshakeError

    request = protocol.ServerBootRequest(
        os.urandom(32), ("0.0.0.0", 8890), os.urandom(32), "alice/", ("0.0.0.0", 8891), True, "H4sI"
    )
    assert protocol.ServerBootRequest.from_env(request.to_env()) == request
    local = protocol.ServerBootRequest(
        os.urandom(32), ("127.0.0.1", 1), os.urandom(32), "bob/", ("127.0.0.1", 2)
    )
    assert set(json.loads(local.to_env())) == {
        "protocol",
        "nonce",
        "respond_to",
        "controller_key",
        "server",
        "attest_listen",
    }  # a local boot's request is as before
    for change in ({"listen": "yes"}, {"listen": 1}, {"init_data": 7}, {"init_data": "x" * (96 * 1024 + 1)}):
        with pytest.raises(HandshakeError):
            protocol.ServerBootRequest.from_env(json.dumps({**json.loads(request.to_env()), **change}))


def test_a_cvm_server_without_internal_ssl_is_refused_before_any_pod_is_made_offline(tmp_path: Path) -> None:
    """Secure by default: without internal_ssl the proxy would reach the server pod over plain HTTP on the
    host's network, so start() refuses before the pod exists, and says how to fix it."""
    c = configured(tmp_path)
    c.TeeSpawner.allow_plaintext_server_hop = False
    CapturingSpawner.sent = None

    async def start() -> None:
        spawner = CapturingSpawner(config=c, _mock=True, api_token=HUB_TOKEN)
        await with_reflector(spawner)
        with pytest.raises(ConfigError, match=r"without c\.JupyterHub\.internal_ssl") as caught:
            await spawner.start()
        assert "c.JupyterHub.internal_ssl = True" in (caught.value.hint or "")
        assert spawner.get_state().get("teelab_attestation") is None  # nothing attested, nothing launched

    asyncio.run(start())
    assert CapturingSpawner.sent is None  # no pod was sent to the API server


def test_the_plaintext_hop_opt_out_is_explicit_and_logged_offline(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    c = configured(tmp_path)
    assert c.TeeSpawner.allow_plaintext_server_hop is True
    started_pod(tmp_path, c)
    assert "plain HTTP to" in caplog.text and "allow_plaintext_server_hop" in caplog.text

    async def with_ssl() -> None:  # internal_ssl: nothing to opt out of, the check passes without the flag
        spawner = TeeKubeSpawner(
            config=configured(tmp_path), _mock=True, api_token=HUB_TOKEN, internal_ssl=True
        )
        spawner.allow_plaintext_server_hop = False
        spawner.check_server_hop()

    asyncio.run(with_ssl())
