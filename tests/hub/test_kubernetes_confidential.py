"""Single-user pods in confidential containers, checked offline with KubeSpawner's own manifest builders.

The real KubeSpawner (``get_pod_manifest`` with a dummy kubeconfig, no cluster) and ``kubespawner.objects.
make_pod`` build the pods; teelab's settings and ``strip_secrets`` hook must leave them in the Kata runtime class,
with the controller and the policy digest in the init-data annotation, and without the hub token, the
internal_ssl key or any other secret in env, volumes or annotations.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import tomllib
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient, V1PersistentVolumeClaimVolumeSource, V1Volume, V1VolumeMount
from traitlets.config import Config

from teelab.cli import main as teelab_main
from teelab.errors import ConfigError
from teelab.extension.hub.kubernetes import (
    INIT_DATA_ANNOTATION,
    ConfidentialPods,
    PodSecretError,
    configure_confidential_pods,
    decode_init_data,
    find_secrets,
    strip_secrets,
)

HUB_TOKEN = "hub-api-token-that-is-also-the-oauth-secret"
CONTROLLER = hashlib.sha256(b"G_h.pub of the hub's TeeSpawner").digest()
POLICY_DIGEST = hashlib.sha256(b"the hub's server policy").hexdigest()


@pytest.fixture(autouse=True)
def no_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kubeconfig naming a cluster nobody listens on: KubeSpawner loads it, and no test may reach it."""
    from kubernetes_asyncio.config import kube_config
    from kubespawner import clients

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
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(config))  # read at its import
    clients.load_config.cache_clear()


def serialize(pod: Any) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        async with ApiClient() as client:  # the JSON KubeSpawner would send to the API server
            result: dict[str, Any] = client.sanitize_for_serialization(pod)
            return result

    return asyncio.run(run())


def kubespawner_pod(c: Config) -> Any:
    from kubespawner import KubeSpawner

    async def manifest() -> Any:
        spawner = KubeSpawner(config=c, _mock=True, api_token=HUB_TOKEN)
        return await spawner.get_pod_manifest()

    return asyncio.run(manifest())


def snp_pods() -> ConfidentialPods:
    return ConfidentialPods("kata-qemu-snp", CONTROLLER, POLICY_DIGEST)


def test_kubespawners_pod_runs_in_the_kata_runtime_class_with_no_secret_left() -> None:
    c = Config()
    c.KubeSpawner.extra_pod_config = {"priorityClassName": "notebooks"}  # the operator's own setting stays
    configure_confidential_pods(c, snp_pods())
    pod = kubespawner_pod(c)
    before = serialize(pod)
    # What KubeSpawner does by itself: the hub token in the pod's env (the reason for the hook).
    assert any(entry["name"] == "JUPYTERHUB_API_TOKEN" for entry in before["spec"]["containers"][0]["env"])
    assert find_secrets(before)
    after = serialize(c.KubeSpawner.modify_pod_hook(None, pod))
    assert after["spec"]["runtimeClassName"] == "kata-qemu-snp"
    assert after["spec"]["priorityClassName"] == "notebooks"
    assert after["spec"]["automountServiceAccountToken"] is False
    assert HUB_TOKEN not in json.dumps(after)
    assert find_secrets(after) == []
    init_data = decode_init_data(after["metadata"]["annotations"][INIT_DATA_ANNOTATION])
    assert init_data["version"] == "0.1.0" and init_data["algorithm"] == "sha256"
    assert list(init_data["data"]) == ["teelab.toml"]
    assert tomllib.loads(init_data["data"]["teelab.toml"]) == {
        "controller": CONTROLLER.hex(),
        "policy_digest": POLICY_DIGEST,
    }


def test_make_pod_with_the_internal_ssl_secret_keeps_the_home_and_loses_the_secret() -> None:
    from kubespawner.objects import make_pod

    pods = ConfidentialPods("kata-qemu-tdx", CONTROLLER, POLICY_DIGEST)
    traits = pods.kubespawner_traits()
    pod = make_pod(
        name="jupyter-alice",
        cmd=["jupyterhub-singleuser"],
        port=8888,
        image="registry.example.org/teelab-hub-server:1",
        env={"JUPYTERHUB_API_TOKEN": HUB_TOKEN, "JPY_API_TOKEN": HUB_TOKEN, "JUPYTERHUB_USER": "alice"},
        volumes=[
            V1Volume(name="home", persistent_volume_claim=V1PersistentVolumeClaimVolumeSource("claim-alice"))
        ],
        volume_mounts=[V1VolumeMount(name="home", mount_path="/home/jovyan")],
        annotations=traits["extra_annotations"],
        extra_pod_config=traits["extra_pod_config"],
        automount_service_account_token=False,
        ssl_secret_name="alice-internal-ssl",  # internal_ssl: the server's key, made in the hub, as a Secret
        ssl_secret_mount_path="/etc/jupyterhub/ssl/",
    )
    assert any(volume.secret is not None for volume in pod.spec.volumes)
    after = serialize(strip_secrets(None, pod))
    assert after["spec"]["runtimeClassName"] == "kata-qemu-tdx"
    assert [volume["name"] for volume in after["spec"]["volumes"]] == ["home"]
    assert [mount["name"] for mount in after["spec"]["containers"][0]["volumeMounts"]] == ["home"]
    assert [entry["name"] for entry in after["spec"]["containers"][0]["env"]] == ["JUPYTERHUB_USER"]
    assert HUB_TOKEN not in json.dumps(after)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (
            lambda c: c.KubeSpawner.environment.update({"AWS_SECRET_ACCESS_KEY": "x"}),
            "env AWS_SECRET_ACCESS_KEY",
        ),
        (lambda c: c.KubeSpawner.environment.update({"STORE_PASSWORD": "x"}), "env STORE_PASSWORD"),
        (lambda c: c.KubeSpawner.extra_annotations.update({"example.org/api-token": "x"}), "annotation"),
        (
            lambda c: setattr(c.KubeSpawner, "automount_service_account_token", True),
            "automountServiceAccountToken",
        ),
    ],
)
def test_a_pod_that_would_still_carry_a_secret_is_refused(change: Any, named: str) -> None:
    c = Config()
    configure_confidential_pods(c, snp_pods())
    c.KubeSpawner.environment = {}
    change(c)
    with pytest.raises(PodSecretError, match=named):
        strip_secrets(None, kubespawner_pod(c))


def test_init_data_with_anything_but_public_values_is_refused() -> None:
    pods = ConfidentialPods(
        "kata-qemu-snp", CONTROLLER, POLICY_DIGEST, agent_policy='package agent_policy\n"x"'
    )
    manifest = {"spec": {"automountServiceAccountToken": False}, "metadata": {"annotations": {}}}
    annotations = manifest["metadata"]["annotations"]
    annotations[INIT_DATA_ANNOTATION] = pods.init_data_annotation()
    assert find_secrets(manifest) == []  # the agent policy is public
    rogue = pods.init_data_toml().replace("[data]\n", '[data]\n"cdh.toml" = "[kbc]\\ntoken = \\"s3cr3t\\""\n')
    import base64
    import gzip

    annotations[INIT_DATA_ANNOTATION] = base64.b64encode(gzip.compress(rogue.encode())).decode()
    assert find_secrets(manifest) == ["init-data unexpected entry 'cdh.toml'"]


def test_the_init_data_digest_is_what_each_tee_reports_and_is_reproducible() -> None:
    snp, tdx = snp_pods(), ConfidentialPods("kata-qemu-tdx", CONTROLLER, POLICY_DIGEST)
    assert len(snp.init_data_digest()) == 32 and len(tdx.init_data_digest()) == 48  # HOST_DATA, MRCONFIGID
    assert snp.init_data_digest() == hashlib.sha256(snp.init_data_toml().encode()).digest()
    assert snp.init_data_annotation() == snp_pods().init_data_annotation()
    other = ConfidentialPods("kata-qemu-snp", hashlib.sha256(b"another hub").digest(), POLICY_DIGEST)
    assert other.init_data_digest() != snp.init_data_digest()  # another controller, another HOST_DATA
    with pytest.raises(ConfigError, match="runtime class"):
        ConfidentialPods("runc", CONTROLLER, POLICY_DIGEST)


def test_k8s_values_cli_gives_helm_values_whose_hook_strips_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "hub-server.toml"
    policy.write_text('id = "hub-server"\n')
    argv = ["hub", "k8s-values", "--runtime-class", "kata-qemu-snp", "--controller", CONTROLLER.hex()]
    assert teelab_main([*argv, "--server-policy", str(policy)]) == 0
    captured = capsys.readouterr()
    values = json.loads(captured.out)
    traits = values["hub"]["config"]["KubeSpawner"]
    assert traits["extra_pod_config"] == {"runtimeClassName": "kata-qemu-snp"}
    assert traits["automount_service_account_token"] is False
    init_data = decode_init_data(traits["extra_annotations"][INIT_DATA_ANNOTATION])
    teelab = tomllib.loads(init_data["data"]["teelab.toml"])
    assert teelab["policy_digest"] == hashlib.sha256(policy.read_bytes()).hexdigest()
    assert "HOST_DATA of these pods" in captured.err
    c = Config()
    exec(values["hub"]["extraConfig"]["teelab-confidential-pods"], {"c": c})
    assert c.KubeSpawner.modify_pod_hook is strip_secrets
    assert os.environ["KUBECONFIG"].startswith(str(tmp_path))


def test_the_launch_field_binds_the_controller_through_the_init_data() -> None:
    from teelab.extension.hub.kubernetes import check_init_data_controller

    snp, tdx = snp_pods(), ConfidentialPods("kata-qemu-tdx", CONTROLLER, POLICY_DIGEST)
    assert check_init_data_controller(
        {"host_data": snp.init_data_digest().hex()}, snp.init_data_toml(), CONTROLLER
    )[0]
    padded = tdx.init_data_digest().hex()  # MRCONFIGID is 48 bytes: SHA-384 fills it
    assert check_init_data_controller({"mrconfigid": padded}, tdx.init_data_toml(), CONTROLLER)[0]
    other = ConfidentialPods("kata-qemu-snp", hashlib.sha256(b"the host's own G").digest(), POLICY_DIGEST)
    # The host's pod: its own init-data (and so its own HOST_DATA) names another controller.
    passed, detail = check_init_data_controller(
        {"host_data": other.init_data_digest().hex()}, other.init_data_toml(), CONTROLLER
    )
    assert not passed and "names controller" in detail
    # Our init-data shown, but the pod was launched with another: the launch field gives it away.
    passed, detail = check_init_data_controller(
        {"host_data": other.init_data_digest().hex()}, snp.init_data_toml(), CONTROLLER
    )
    assert not passed and "another init-data" in detail
    assert not check_init_data_controller({}, "not toml [", CONTROLLER)[0]
