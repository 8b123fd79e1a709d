"""A hub user who edits files in their own home cannot weaken the policy their kernels are attested against,
nor act as another user.

Before alice's server is first spawned, her home holds every weakening a user can write there: a
``~/.jupyter`` config pointing the provisioner at her own policy, turning user policies on, naming bob as the
key broker user and allowing everything; a policy of her own in ``~/.config/teelab/policies``; and kernelspecs
in ``~/.local/share/jupyter/kernels`` (one replacing ``teelab-sim`` with a plain Python kernel, one trying to
configure the policy through the kernelspec). The hub spawns her server with user configuration disabled and
teelab's system configuration: none of it counts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from teelab.extension.hub.client import HubUser
from teelab.extension.hub.demo import HubProcess

pytestmark = pytest.mark.slow

WEAK_POLICY = 'id = "alice-weak"\nallow_simulation = true\nallow_debug = true\n'


def weaken_home(home: Path, weak_policy: Path) -> None:
    jupyter = home / ".jupyter"
    jupyter.mkdir(parents=True)
    settings = {
        "TeeProvisioner": {
            "policy_file": str(weak_policy),
            "allow_user_policies": True,
            "kbs_user": "bob",
        },
        "ServerApp": {"authorizer_class": "jupyter_server.auth.authorizer.AllowAllAuthorizer"},
    }
    (jupyter / "jupyter_server_config.json").write_text(json.dumps(settings))
    (jupyter / "jupyter_server_config.py").write_text(
        f"c.TeeProvisioner.policy_file = {str(weak_policy)!r}\nc.TeeProvisioner.allow_user_policies = True\n"
    )
    policies = home / ".config" / "teelab" / "policies"
    policies.mkdir(parents=True)
    (policies / "teelab-sim.toml").write_text(WEAK_POLICY)
    kernels = home / ".local" / "share" / "jupyter" / "kernels"
    (kernels / "teelab-sim").mkdir(parents=True)
    (kernels / "teelab-sim" / "kernel.json").write_text(
        json.dumps(
            {"argv": ["python3", "-m", "ipykernel", "-f", "{connection_file}"], "display_name": "weak"}
        )
    )
    (kernels / "teelab-sim-weak").mkdir()
    (kernels / "teelab-sim-weak" / "kernel.json").write_text(
        json.dumps(
            {
                "argv": ["python3", "-m", "teelab.kernel.boot"],
                "display_name": "weak teelab",
                "metadata": {
                    "kernel_provisioner": {
                        "provisioner_name": "teelab",
                        "config": {"backend": "sim", "policy_file": str(weak_policy)},
                    }
                },
            }
        )
    )


@pytest.fixture(scope="module")
def alice(hub: HubProcess) -> Iterator[HubUser]:
    home = hub.root / "home" / "alice"
    weak = home / "weak.toml"
    home.mkdir(parents=True)
    weak.write_text(WEAK_POLICY)
    weaken_home(home, weak)
    user = HubUser(hub, "alice")
    assert user.login().status_code == 302
    user.spawn()
    yield user


def test_kernelspecs_come_from_the_system_folder(alice: HubUser) -> None:
    specs = alice.request("GET", "api/kernelspecs").json()["kernelspecs"]
    assert "teelab-sim-weak" not in specs
    spec = specs["teelab-sim"]["spec"]
    assert spec["display_name"] != "weak"
    assert spec["metadata"]["kernel_provisioner"]["provisioner_name"] == "teelab"


def test_the_operators_policy_judges_the_kernels(hub: HubProcess, alice: HubUser) -> None:
    policy = alice.request("GET", "teelab/api/policy?kernel=teelab-sim")
    assert policy.status_code == 200, policy.text
    body = policy.json()
    assert body["path"] == str(hub.root / "policies" / "teelab-sim.toml")
    assert body["source"] == "server-config"
    assert body["id"] == "teelab-sim"
    kernel = alice.start_kernel()
    record = alice.request("GET", f"teelab/api/kernels/{kernel['id']}/attestation").json()
    assert record["ok"] is True
    assert record["attestation"]["policy_id"] == "teelab-sim"
    # The kernelspec naming its own policy is not even offered.
    assert alice.request("POST", "api/kernels", json={"name": "teelab-sim-weak"}).status_code >= 400


def test_nor_act_as_another_user(alice: HubUser) -> None:
    datasets = alice.request("GET", "teelab/api/datasets")
    assert datasets.status_code == 200, datasets.text
    assert datasets.json()["user"] == "alice"
