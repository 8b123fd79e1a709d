"""The Kubernetes deployment of docs/jupyterhub.md §4, checked without a cluster.

docs/examples/kubernetes/z2jh-values.yaml (Helm values for Zero to JupyterHub) and teelab-kbs.yaml (the key
broker's Deployment, Service and NetworkPolicy): they parse; the values' ``hub.extraConfig`` runs against a
JupyterHub config built as the chart builds it, with teelab's real ``configure_hub``, and yields the service,
roles and scopes; the real KubeSpawner builds the single-user pod from the result; the broker's manifests hold
no secret, reach PostgreSQL and the S3 store, and meet the basic shape Kubernetes expects of them.
"""

from __future__ import annotations

import ast
import asyncio
import json
import re
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from sqlalchemy.engine import make_url
from traitlets.config import Config

from teelab.extension.hub import configure_hub
from teelab.extension.hub.config import SINGLEUSER_CONFIG
from teelab.extension.hub.scopes import DATASETS_ADMIN, DATASETS_READ, KBS_OPERATE, SERVICE_NAME
from teelab.extension.hub.service import kbs_toml
from teelab.sealed_store.kbs.auth_config import parse_auth

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples" / "kubernetes"
CHART_TOKEN = "token-the-chart-generated"  # a stand-in for the token the chart generates
SECRETISH = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|(^|_)KEY$|PGPASS|(^|_)STORE$", re.IGNORECASE)


def values() -> dict[str, Any]:
    return dict(yaml.safe_load((EXAMPLES / "z2jh-values.yaml").read_text()))


def manifests() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((EXAMPLES / "teelab-kbs.yaml").read_text()) if doc]


def one(kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in manifests() if doc["kind"] == kind]
    return found


def chart_config(chart_values: dict[str, Any]) -> Config:
    """The config the chart's ``jupyterhub_config.py`` (z2jh 4.x, files/hub/jupyterhub_config.py) has built
    from these values when it runs ``hub.extraConfig``: only the keys this deployment uses, set the way the
    chart sets them (singleuser.* on ``KubeSpawner``, hub.services with the token from its Secret)."""
    c = Config()
    c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
    single = chart_values["singleuser"]
    c.KubeSpawner.image = f"{single['image']['name']}:{single['image']['tag']}"
    c.KubeSpawner.uid, c.KubeSpawner.fs_gid = 1000, 100  # the chart's defaults
    c.KubeSpawner.allow_privilege_escalation = False
    c.KubeSpawner.environment = dict(single.get("extraEnv", {}))
    c.KubeSpawner.extra_resource_limits = dict(single.get("extraResource", {}).get("limits", {}))
    c.KubeSpawner.mem_limit, c.KubeSpawner.mem_guarantee = (
        single["memory"]["limit"],
        single["memory"]["guarantee"],
    )
    c.KubeSpawner.cpu_limit, c.KubeSpawner.cpu_guarantee = single["cpu"]["limit"], single["cpu"]["guarantee"]
    volumes: dict[str, Any] = {}
    mounts: dict[str, Any] = {}
    files = single.get("extraFiles", {})
    if files:
        items = [{"key": key, "path": key} for key in files]
        volumes["files"] = {"name": "files", "secret": {"secretName": "singleuser", "items": items}}
        for index, (key, spec) in enumerate(files.items()):
            mounts[f"{index}-files"] = {"mountPath": spec["mountPath"], "subPath": key, "name": "files"}
    for volume in single["storage"].get("extraVolumes", []):
        volumes[volume["name"]] = volume
    for index, mount in enumerate(single["storage"].get("extraVolumeMounts", [])):
        mounts[f"{index}-{mount['name']}"] = mount
    c.KubeSpawner.volumes, c.KubeSpawner.volume_mounts = volumes, mounts
    c.JupyterHub.services = []
    c.JupyterHub.load_roles = []
    for key, service in chart_values["hub"].get("services", {}).items():
        service = dict(service)
        service.setdefault("name", key)
        service.pop("apiToken", None)
        service["api_token"] = CHART_TOKEN
        c.JupyterHub.services.append(service)
    for key, role in chart_values["hub"].get("loadRoles", {}).items():
        c.JupyterHub.load_roles.append({"name": key, **role})
    c.Spawner.cmd = single.get("cmd", "jupyterhub-singleuser")
    return c


def hub_config() -> Config:
    """The chart's config after teelab's ``hub.extraConfig`` ran in it, as the chart runs it."""
    chart_values = values()
    c = chart_config(chart_values)
    for key, snippet in sorted(chart_values["hub"]["extraConfig"].items()):
        exec(compile(snippet, f"hub.extraConfig.{key}", "exec"), {"c": c})  # the file under test
    return c


@pytest.fixture(autouse=True)
def kube_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """KubeSpawner loads a kube config when it is made; building a pod manifest never calls the cluster, so
    one naming an address where nothing listens will do (the discard port)."""
    from kubernetes_asyncio.config import kube_config
    from kubespawner import clients

    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "offline", "cluster": {"server": "https://127.0.0.1:9"}}],
                "users": [{"name": "nobody", "user": {}}],
                "contexts": [{"name": "offline", "context": {"cluster": "offline", "user": "nobody"}}],
                "current-context": "offline",
            }
        )
    )
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    clients.load_config.cache_clear()


def spawner(c: Config) -> Any:
    """The real KubeSpawner configured by ``c`` (made in an event loop: it opens its API client there)."""
    from kubespawner import KubeSpawner

    async def make() -> Any:
        return KubeSpawner(config=c, _mock=True)

    return asyncio.run(make())


def pod(c: Config) -> Any:
    async def manifest() -> Any:
        from kubernetes_asyncio.client import ApiClient
        from kubespawner import KubeSpawner

        manifest = await KubeSpawner(config=c, _mock=True).get_pod_manifest()
        async with ApiClient() as client:  # the JSON KubeSpawner would send to the cluster
            return client.sanitize_for_serialization(manifest)

    return asyncio.run(manifest())


def code(source: str) -> str:
    """The statements of a module, without its docstring."""
    body = ast.parse(source).body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return "\n".join(ast.dump(statement) for statement in body)


def test_every_file_parses_and_each_manifest_has_the_shape_kubernetes_expects() -> None:
    docs = manifests()
    assert [doc["kind"] for doc in docs] == ["ServiceAccount", "Deployment", "Service", "NetworkPolicy"]
    for doc in docs:
        assert doc["apiVersion"] in ("v1", "apps/v1", "networking.k8s.io/v1"), doc["kind"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "teelab"
        assert doc["kind"] == "ServiceAccount" or isinstance(doc["spec"], dict)
    assert isinstance(values()["hub"]["extraConfig"]["teelab"], str)


MODELS = {
    "ServiceAccount": "V1ServiceAccount",
    "Deployment": "V1Deployment",
    "Service": "V1Service",
    "NetworkPolicy": "V1NetworkPolicy",
}


def test_every_manifest_is_a_kubernetes_object_without_an_unknown_field() -> None:
    """Each document read into the Kubernetes API's own models and written back comes out unchanged: a
    misspelt or misplaced field would be dropped, a required one missing refused."""
    from kubernetes_asyncio.client import ApiClient

    async def round_trip(doc: dict[str, Any]) -> Any:
        async with ApiClient() as client:
            model = client.deserialize(SimpleNamespace(data=json.dumps(doc)), MODELS[doc["kind"]])
            return client.sanitize_for_serialization(model)

    for doc in manifests():
        assert asyncio.run(round_trip(doc)) == doc, doc["kind"]
    misspelt = manifests()[1]
    misspelt["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    assert asyncio.run(round_trip(misspelt)) != misspelt


def test_the_extra_config_gives_the_hub_teelabs_service_roles_and_scopes() -> None:
    c = hub_config()
    (service,) = [s for s in c.JupyterHub.services if s["name"] == SERVICE_NAME]
    # The chart's external service stays: its URL and the token the chart generated, no process to start.
    assert "command" not in service and service["api_token"] == CHART_TOKEN
    assert service["url"] == values()["hub"]["services"][SERVICE_NAME]["url"]
    assert service["oauth_client_allowed_scopes"] == [KBS_OPERATE]
    assert set(c.JupyterHub.custom_scopes) == {DATASETS_READ, DATASETS_ADMIN, KBS_OPERATE}
    roles = {role["name"]: role for role in c.JupyterHub.load_roles}
    assert len(roles) == len(c.JupyterHub.load_roles)  # the hub refuses a role defined twice
    assert roles["teelab-operator"]["groups"] == ["kbs-operators"]
    assert roles["teelab-operator"]["scopes"] == [KBS_OPERATE, f"access:services!service={SERVICE_NAME}"]
    assert roles["teelab-kbs-service"]["services"] == [SERVICE_NAME]
    assert {f"{DATASETS_READ}!user", f"{DATASETS_ADMIN}!user"} <= set(c.JupyterHub.extra_user_scopes)
    assert c.JupyterHub.load_groups["kbs-operators"] == {"users": ["olivia"]}


def test_the_single_user_servers_get_teelabs_environment_over_the_charts() -> None:
    s = spawner(hub_config())
    assert s.disable_user_config is True
    assert s.args == ["--config=/etc/teelab/singleuser_config.py"]
    env = s.environment
    kbs = one("Service")
    grpc_port = next(p["port"] for p in kbs["spec"]["ports"] if p["name"] == "grpc")
    assert env["TEELAB_KBS"] == f"grpcs://{kbs['metadata']['name']}.jupyterhub.svc.cluster.local:{grpc_port}"
    assert env["TEELAB_KBS_CA"] == "/etc/teelab/ca/ca.pem"
    assert env["TEELAB_HUB_POLICY_FILE"] == "/srv/teelab/policies/teelab-sgx.toml"
    assert env["JUPYTER_PATH"] == "/srv/teelab/share/jupyter"
    assert env["TEELAB_HUB_GATEWAYS"] == "/srv/teelab/gateways"
    # The chart's own extraEnv survives the merge: the store, from a Secret.
    assert env["TEELAB_STORE"] == {"valueFrom": {"secretKeyRef": {"name": "teelab-store", "key": "url"}}}


def test_without_the_merge_the_charts_extra_env_would_hide_teelabs() -> None:
    """Why the extraConfig merges the two environments: KubeSpawner's own section outranks Spawner's."""
    c = chart_config(values())
    configure_hub(c, root="/srv/teelab", kbs_listen="grpcs://kbs:7443")
    assert "TEELAB_KBS" in c.Spawner.environment
    assert "TEELAB_KBS" not in spawner(c).environment


def test_the_mounted_server_config_is_teelabs_own() -> None:
    (spec,) = values()["singleuser"]["extraFiles"].values()
    assert spec["mountPath"] == "/etc/teelab/singleuser_config.py"
    assert code(spec["stringData"]) == code(SINGLEUSER_CONFIG.read_text())


def test_the_single_user_pod() -> None:
    manifest = pod(hub_config())
    (container,) = manifest["spec"]["containers"]
    assert container["image"] == "registry.example.org/teelab-singleuser:0.1.0"
    env = {e["name"]: e for e in container["env"]}
    assert env["TEELAB_STORE"] == {
        "name": "TEELAB_STORE",
        "valueFrom": {"secretKeyRef": {"name": "teelab-store", "key": "url"}},
    }
    assert env["TEELAB_KBS"]["value"].startswith("grpcs://")
    assert env["JUPYTERHUB_DISABLE_USER_CONFIG"]["value"] == "1"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in manifest["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts["/srv/teelab/gateways"]["name"]]  # one key G per pod, never shared
    assert mounts["/etc/teelab/ca"]["readOnly"] is True
    assert mounts["/etc/teelab/singleuser_config.py"]["subPath"] == "teelab-singleuser-config"
    assert container["resources"]["limits"]["sgx.intel.com/enclave"] == "1"
    assert container["resources"]["limits"]["memory"] and container["resources"]["requests"]["memory"]
    assert container["securityContext"]["runAsUser"] == 1000
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # What this deployment sets are names and addresses; its secrets arrive by reference only.
    for name in ("TEELAB_KBS", "TEELAB_KBS_CA", "TEELAB_HUB_POLICY_FILE", "JUPYTER_PATH", "TEELAB_STORE"):
        assert not re.search(r"(key|secret|token|password)=", json.dumps(env[name]), re.IGNORECASE)


def test_the_single_user_pods_may_reach_the_brokers_grpc_port() -> None:
    (rule,) = values()["singleuser"]["networkPolicy"]["egress"]
    deployment = one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (target,) = rule["to"]
    assert target["podSelector"]["matchLabels"].items() <= labels.items()
    assert rule["ports"] == [{"port": 7443, "protocol": "TCP"}]
    policy = one("NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    allowed = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert allowed == {7443, 8080}


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    spec = deployment["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def test_the_brokers_containers_are_pinned_bounded_and_unprivileged() -> None:
    deployment = one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert (
        deployment["spec"]["selector"]["matchLabels"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    volumes = {v["name"] for v in pod["volumes"]}
    for container in containers(deployment):
        image = container["image"]
        assert re.fullmatch(r"[^:@\s]+(:[\w.-]+|@sha256:[0-9a-f]{64})", image) and not image.endswith(
            ":latest"
        )
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][bound]), container["name"]
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True and context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True and context["capabilities"]["drop"] == ["ALL"]
        assert {m["name"] for m in container["volumeMounts"]} <= volumes


def test_the_brokers_environment_holds_no_secret() -> None:
    (kbs,) = one("Deployment")["spec"]["template"]["spec"]["containers"]
    for var in kbs["env"]:
        if SECRETISH.search(var["name"]):
            assert set(var) == {"name", "valueFrom"} and set(var["valueFrom"]) == {"secretKeyRef"}, var[
                "name"
            ]
        else:
            assert set(var) == {"name", "value"} and isinstance(var["value"], str), var["name"]
    env = {var["name"]: var for var in kbs["env"]}
    token = env["JUPYTERHUB_API_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token == {
        "name": "hub",
        "key": f"hub.services.{SERVICE_NAME}.apiToken",
    }  # what the chart generates
    options = json.loads(env["TEELAB_HUB_KBS_OPTIONS"]["value"])
    assert set(options) <= {"db", "tls_cert", "tls_key", "collateral"}
    # The key files are copied from a Secret into the pod's memory at start, never in an image or a ConfigMap.
    pod = one("Deployment")["spec"]["template"]["spec"]
    by_name = {v["name"]: v for v in pod["volumes"]}
    mounted = {m["mountPath"]: by_name[m["name"]] for m in kbs["volumeMounts"]}
    for option in ("tls_cert", "tls_key"):
        assert mounted[str(Path(options[option]).parent)]["secret"]["secretName"] == "teelab-kbs-tls"
    assert mounted[env["TEELAB_HUB_KBS_STATE"]["value"]]["emptyDir"]["medium"] == "Memory"
    assert by_name["state-secret"]["secret"]["secretName"] == "teelab-kbs-state"


def test_the_broker_runs_on_postgresql_and_servers_read_datasets_from_s3() -> None:
    (kbs,) = one("Deployment")["spec"]["template"]["spec"]["containers"]
    env = {var["name"]: var for var in kbs["env"]}
    url = make_url(json.loads(env["TEELAB_HUB_KBS_OPTIONS"]["value"])["db"])
    assert url.drivername == "postgresql+psycopg" and url.username == "kbs" and url.database == "kbs"
    assert url.password is None  # on the command line it would be visible: libpq reads PGPASSWORD
    assert url.query["sslmode"] == "verify-full"
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "teelab-kbs-db"
    store = values()["singleuser"]["extraEnv"]["TEELAB_STORE"]
    assert store["valueFrom"]["secretKeyRef"] == {"name": "teelab-store", "key": "url"}
    assert "TEELAB_STORE" not in hub_config().Spawner.environment  # not in the chart's plain config


def test_the_deployment_gives_the_service_what_the_hub_gives_a_managed_one() -> None:
    c = Config()
    configure_hub(c)
    (managed,) = [s for s in c.JupyterHub.services if s["name"] == SERVICE_NAME]
    (kbs,) = one("Deployment")["spec"]["template"]["spec"]["containers"]
    names = {var["name"] for var in kbs["env"]}
    assert set(managed["environment"]) <= names
    # What the hub's OAuth client of a service reads, given here by hand for an external service.
    hub_env = {
        "JUPYTERHUB_SERVICE_NAME",
        "JUPYTERHUB_API_URL",
        "JUPYTERHUB_API_TOKEN",
        "JUPYTERHUB_CLIENT_ID",
    }
    assert hub_env | {"JUPYTERHUB_SERVICE_URL", "JUPYTERHUB_OAUTH_CALLBACK_URL"} <= names
    env = {var["name"]: var.get("value") for var in kbs["env"]}
    assert env["JUPYTERHUB_CLIENT_ID"] == f"service-{SERVICE_NAME}"
    assert env["JUPYTERHUB_SERVICE_PREFIX"] == f"/services/{SERVICE_NAME}/"
    auth = parse_auth(tomllib.loads(kbs_toml(env["JUPYTERHUB_API_URL"], {}))["auth"])
    assert auth.providers == ("jupyterhub",) and not auth.admin_users and not auth.admin_groups


def test_the_hub_and_the_servers_find_the_broker_at_its_service() -> None:
    service = one("Service")
    deployment = one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    ports = {p["name"]: p["containerPort"] for c in containers(deployment) for p in c.get("ports", [])}
    by_name = {p["name"]: p for p in service["spec"]["ports"]}
    assert {p["targetPort"] for p in by_name.values()} <= set(ports)
    page = urlsplit(values()["hub"]["services"][SERVICE_NAME]["url"])
    assert page.hostname == f"{service['metadata']['name']}.jupyterhub.svc.cluster.local"
    assert page.port == by_name["http"]["port"]
    (kbs,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {var["name"]: var.get("value") for var in kbs["env"]}
    assert urlsplit(env["JUPYTERHUB_SERVICE_URL"]).port == ports["http"]
    assert env["TEELAB_HUB_KBS_LISTEN"].rsplit(":", 1)[1] == str(ports["grpc"])


@pytest.mark.parametrize("name", ["z2jh-values.yaml", "teelab-kbs.yaml"])
def test_the_guide_names_the_files(name: str) -> None:
    guide = (EXAMPLES.parents[1] / "jupyterhub.md").read_text()
    assert f"docs/examples/kubernetes/{name}" in guide
