"""The policy endpoint on a server whose operator set one policy for every teelab kernel."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError

from .conftest import KERNEL, KernelEnv, server_config


@pytest.fixture
def operator_policy(tmp_path: Path) -> Path:
    path = tmp_path / "operator.toml"
    path.write_text('id = "operator-wide"\nallow_simulation = true\nmax_collateral_age = "30d"\n')
    return path


@pytest.fixture
def jp_server_config(operator_policy: Path) -> dict[str, Any]:
    return {**server_config(), "TeeProvisioner": {"policy_file": str(operator_policy)}}


async def test_the_servers_own_policy_file_wins(
    jp_fetch: Any, spec: KernelEnv, operator_policy: Path
) -> None:
    response = await jp_fetch("teelab", "api", "policy", params={"kernel": KERNEL})
    policy = json.loads(response.body)
    assert policy["source"] == "server-config" and Path(policy["path"]) == operator_policy
    assert policy["id"] == "operator-wide"
    assert policy["settings"]["max_collateral_age"] == 30 * 86400


async def test_a_broken_operator_policy_is_a_server_error_naming_the_problem(
    jp_fetch: Any, spec: KernelEnv, operator_policy: Path
) -> None:
    operator_policy.write_text("alow_debug = true\n")  # a typo: the provisioner refuses it, so do we
    with pytest.raises(HTTPClientError) as failed:
        await jp_fetch("teelab", "api", "policy", params={"kernel": KERNEL})
    assert failed.value.code == 500 and failed.value.response is not None
    assert "alow_debug" in json.loads(failed.value.response.body)["message"]
