"""configure_hub and the pieces each single-user server loads, without a running hub."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from traitlets.config import Config

from teelab.errors import ConfigError
from teelab.extension.hub import configure_hub
from teelab.extension.hub.authorizer import required_scope
from teelab.extension.hub.config import SINGLEUSER_CONFIG
from teelab.extension.hub.scopes import DATASETS_ADMIN, DATASETS_READ, KBS_OPERATE, SERVICE_NAME
from teelab.extension.hub.service import kbs_toml
from teelab.extension.hub.singleuser import configure_server, gateway_identity_file
from teelab.sealed_store.kbs.auth_config import parse_auth


def configured(tmp_path: Path, **kwargs: object) -> Config:
    c = Config()
    c.JupyterHub.load_roles = [{"name": "mine", "scopes": ["read:users"], "users": ["olivia"]}]
    c.Spawner.args = ["--allow-root"]
    configure_hub(c, root=tmp_path, groups={"analysts": ["alice", "bob"]}, operators=["carol"], **kwargs)
    return c


def test_scopes_roles_groups_and_the_operators_config_kept(tmp_path: Path) -> None:
    c = configured(tmp_path)
    assert set(c.JupyterHub.custom_scopes) == {DATASETS_READ, DATASETS_ADMIN, KBS_OPERATE}
    assert c.JupyterHub.load_groups == {"analysts": {"users": ["alice", "bob"]}}
    roles = {role["name"]: role for role in c.JupyterHub.load_roles}
    assert roles["mine"]["users"] == ["olivia"]  # the operator's own roles stay
    assert (
        roles["teelab-operator"]["users"] == ["carol"] and KBS_OPERATE in roles["teelab-operator"]["scopes"]
    )
    assert roles["teelab-kbs-service"]["services"] == [SERVICE_NAME]
    assert f"{DATASETS_ADMIN}!user" in c.JupyterHub.extra_user_scopes
    assert f"{DATASETS_READ}!user" in c.JupyterHub.extra_user_scopes


def test_dataset_administration_can_be_limited_to_groups(tmp_path: Path) -> None:
    c = configured(tmp_path, dataset_admin_groups=["owners"])
    assert f"{DATASETS_ADMIN}!user" not in c.JupyterHub.extra_user_scopes
    roles = {role["name"]: role for role in c.JupyterHub.load_roles}
    assert roles["teelab-dataset-admin"]["groups"] == ["owners"]


def test_the_key_broker_is_a_managed_service_and_operators_are_not_its_admins(tmp_path: Path) -> None:
    c = configured(tmp_path, kbs_listen="127.0.0.1:7555")
    (service,) = [s for s in c.JupyterHub.services if s["name"] == SERVICE_NAME]
    assert service["command"][-2:] == ["-m", "teelab.extension.hub.service"]
    assert service["environment"]["TEELAB_HUB_KBS_LISTEN"] == "127.0.0.1:7555"
    assert json.loads(service["environment"]["TEELAB_HUB_KBS_ADMINS"]) == {"users": [], "groups": []}
    # The config the service writes is one the key broker reads: hub tokens, no admins by default.
    auth = parse_auth(tomllib.loads(kbs_toml("http://127.0.0.1:8081/hub/api", {}))["auth"])
    assert auth.providers == ("jupyterhub",)
    assert auth.jupyterhub is not None and auth.jupyterhub.api_url == "http://127.0.0.1:8081/hub/api"
    assert not auth.admin_users and not auth.admin_groups


def test_single_user_servers_ignore_user_config(tmp_path: Path) -> None:
    c = configured(tmp_path, kbs_tls_cert="/etc/kbs.crt", kbs_ca="/etc/ca.pem")
    assert c.Spawner.disable_user_config is True
    assert c.Spawner.args == ["--allow-root", f"--config={SINGLEUSER_CONFIG}"]
    env = c.Spawner.environment
    assert env["TEELAB_KBS"] == "grpcs://127.0.0.1:7443" and env["TEELAB_KBS_CA"] == "/etc/ca.pem"
    assert env["JUPYTER_PATH"] == str(tmp_path / "share" / "jupyter")
    assert env["TEELAB_HUB_POLICY_FILE"] == str(tmp_path / "policies" / "teelab-sim.toml")
    assert all(
        not callable(value) for value in c.Spawner.oauth_client_allowed_scopes
    )  # the hub JSON-encodes it


def test_server_config_is_the_operators(tmp_path: Path) -> None:
    c = Config()
    env = {
        "JUPYTERHUB_USER": "alice",
        "TEELAB_HUB_POLICY_FILE": "/srv/teelab/policies/teelab-sim.toml",
        "TEELAB_KBS": "127.0.0.1:7443",
        "TEELAB_HUB_GATEWAYS": str(tmp_path / "gateways"),
    }
    configure_server(c, env)
    assert c.TeeProvisioner.allow_user_policies is False
    assert c.TeeProvisioner.policy_file == env["TEELAB_HUB_POLICY_FILE"]
    assert c.TeeProvisioner.kbs_user == "alice"
    assert c.TeeProvisioner.identity_file == str(tmp_path / "gateways" / "alice" / "gateway-identity.pem")
    assert c.ServerApp.authorizer_class.endswith("TeelabHubAuthorizer")
    assert (tmp_path / "gateways" / "alice").stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("name", ["../bob", "..", "a/b", ""])
def test_gateway_key_folder_is_never_another_path(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError):
        gateway_identity_file(tmp_path, name)


def test_which_requests_need_which_scope(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/alice/")
    assert required_scope("/user/alice/teelab/api/kernels", "read", "alice") is None
    assert required_scope("/user/alice/teelab/api/policy", "read", "alice") is None
    assert (
        required_scope("/user/alice/teelab/api/datasets", "read", "alice") == f"{DATASETS_READ}!server=alice/"
    )
    assert (
        required_scope("/user/alice/teelab/api/datasets/x/grants", "write", "alice")
        == f"{DATASETS_ADMIN}!server=alice/"
    )
    # A look-alike path is not the dataset API, and not a way around it either.
    assert required_scope("/user/alice/teelab/api/datasetsX", "read", "alice") is None
