"""Policy lookup (teelab.kernel.policy_files): one place decides which policy judges a kernel, and a policy
generated for one data folder's simulated platform does not judge a setup with another data folder.

The regression: ``make demo`` installs the sim kernel into the environment (``--sys-prefix``) for the user's
data folder; ``make bench`` then isolates its data and configuration folders and installs its own sim kernel
for the user — and its kernel was refused at ``policy.mrsigner``, because the environment's policy (which the
search prefers) pins the signing key of the demo's data folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from jupyter_client.manager import KernelManager
from traitlets.config import Config

from teelab.errors import ConfigError
from teelab.kernel.policy_files import (
    PolicySettings,
    find_policy,
    load_kernel_policy,
    locate_policy,
    sim_data_dir_marker,
    sys_prefix_policy_dir,
)

from .conftest import KERNEL, KernelEnv


def test_a_demo_install_into_the_environment_does_not_judge_an_isolated_benchmark_setup(
    kernel_env: KernelEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from teelab.kernel.kernelspec import install

    def use_folders(name: str) -> None:
        for variable, folder in (("TEELAB_DATA_DIR", "data"), ("TEELAB_CONFIG_DIR", "config")):
            monkeypatch.setenv(variable, str(tmp_path / name / folder))
        monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / name / "jupyter"))

    # One environment for both (not this test run's own: the demo writes into the environment).
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))

    # 1. `make demo`: the sim kernel installed into the environment for the user's own data folder.
    use_folders("demo")
    demo = install(backend="sim", user=False)
    assert demo.policy_file.parent == sys_prefix_policy_dir()
    assert sim_data_dir_marker() in demo.policy_file.read_text()
    assert find_policy(KERNEL, allow_user=True) == demo.policy_file  # the demo is judged by its own policy

    # 2. `make bench` afterwards: isolated data and config folders, the sim kernel installed for the user there.
    use_folders("bench")
    bench = install(backend="sim", user=True)
    assert demo.policy_file.is_file() and demo.image.mrsigner != bench.image.mrsigner  # another signing key
    assert find_policy(KERNEL, allow_user=True) == bench.policy_file
    km = KernelManager(kernel_name=KERNEL)
    km.start_kernel()
    try:
        result = km.provisioner.result  # type: ignore[union-attr]
        assert result is not None and result.ok
        assert result.claims["mrsigner"] == bench.image.mrsigner.hex()
    finally:
        km.shutdown_kernel(now=True)


def test_without_a_policy_of_its_own_the_isolated_setup_is_told_why_the_environments_does_not_count(
    kernel_env: KernelEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    folder = sys_prefix_policy_dir()
    folder.mkdir(parents=True)
    stale = folder / "teelab-other.toml"
    stale.write_text(f"{sim_data_dir_marker(tmp_path / 'elsewhere')}\nallow_simulation = true\n")
    with pytest.raises(ConfigError) as missing:
        load_kernel_policy("teelab-other", PolicySettings())
    assert "pins another data folder's simulated platform" in missing.value.message
    assert str(stale) in missing.value.message


def test_an_operator_policy_without_the_marker_applies_to_every_data_folder(
    kernel_env: KernelEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    folder = sys_prefix_policy_dir()
    folder.mkdir(parents=True)
    operator = folder / f"{KERNEL}.toml"
    operator.write_text('id = "operator"\nallow_simulation = true\n')
    # The operator's folder is searched before the user's, whichever data folder is in use.
    assert find_policy(KERNEL, allow_user=True) == operator
    assert load_kernel_policy(KERNEL, PolicySettings()).id == "operator"
    monkeypatch.setenv("TEELAB_DATA_DIR", str(tmp_path / "other-data"))
    assert find_policy(KERNEL, allow_user=True) == operator


def test_the_server_settings_come_from_its_configuration_without_building_a_provisioner(
    kernel_env: KernelEnv, tmp_path: Path
) -> None:
    chosen = tmp_path / "server.toml"
    located = locate_policy(
        KERNEL, PolicySettings.from_config(Config({"TeeProvisioner": {"policy_file": str(chosen)}}))
    )
    assert (located.path, located.source, located.searched) == (chosen, "server-config", ())
    no_user = PolicySettings.from_config(Config({"TeeProvisioner": {"allow_user_policies": False}}))
    assert no_user == PolicySettings(None, False)
    assert locate_policy(KERNEL, no_user).path is None  # the session's policy is a user policy
    assert locate_policy(KERNEL, PolicySettings.from_config(Config())).path == kernel_env.policy
    with pytest.raises(ConfigError):
        PolicySettings.from_config(Config({"TeeProvisioner": {"allow_user_policies": "maybe"}}))
