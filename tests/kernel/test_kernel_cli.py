"""`teelab kernel install|uninstall` as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from teelab.cli import main


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "JUPYTER_DATA_DIR": str(tmp_path / "jupyter-data"),
        "TEELAB_CONFIG_DIR": str(tmp_path / "config"),
    }
    return subprocess.run(
        [sys.executable, "-m", "teelab.cli", "kernel", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_help_explains_where_the_policy_goes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["kernel", "install", "--help"])
    out = capsys.readouterr().out
    assert (
        "operator-owned folder" in out
        and "--sys-prefix" in out
        and "jupyter console --kernel teelab-sim" in out
    )


def test_install_then_uninstall(tmp_path: Path) -> None:
    # --user: the tests run in a virtual environment, whose default place is the environment itself.
    installed = run(tmp_path, "install", "--user", "--name", "teelab-try", "--display-name", "teelab try")
    assert installed.returncode == 0, installed.stderr
    spec = json.loads((tmp_path / "jupyter-data" / "kernels" / "teelab-try" / "kernel.json").read_text())
    assert spec["display_name"] == "teelab try" and spec["interrupt_mode"] == "message"
    assert spec["metadata"]["kernel_provisioner"] == {
        "provisioner_name": "teelab",
        "config": {"backend": "sim"},
    }
    policy = tmp_path / "config" / "policies" / "teelab-try.toml"
    assert "allow_simulation = true" in policy.read_text()
    assert installed.stdout.strip().splitlines()[-1].startswith("note")
    removed = run(tmp_path, "uninstall", "teelab-try")
    assert removed.returncode == 0 and not policy.exists()
    assert not (tmp_path / "jupyter-data" / "kernels" / "teelab-try").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("install", "--backend", "gramine"), "needs an attestation policy"),
        (("install", "--backend", "nope"), "unknown TEE backend"),
        (("install", "--policy", "/nonexistent/policy.toml"), "policy file not found"),
        (("install", "--user", "--sys-prefix"), "not allowed with argument"),
        (("uninstall", "no-such-kernel"), "no kernelspec named"),
    ],
)
def test_bad_arguments_exit_2_and_install_nothing(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    result = run(tmp_path, *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "jupyter-data" / "kernels").exists()


def test_a_broken_policy_is_refused_before_anything_is_installed(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("allow_simulaton = true\n")  # a typo must not silently weaken the policy
    result = run(tmp_path, "install", "--policy", str(bad))
    assert (
        result.returncode == 2 and "allow_simulaton" in result.stderr and "allow_simulation" in result.stderr
    )
    assert not (tmp_path / "jupyter-data" / "kernels").exists()


@pytest.mark.parametrize("name", ["../../evil", "a/b", ".hidden", "x" * 100])
def test_path_like_kernel_names_are_refused_before_anything_is_written(tmp_path: Path, name: str) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text("allow_simulation = true\n")
    result = run(tmp_path, "install", "--name", name, "--policy", str(policy))
    assert result.returncode == 2 and "not a kernel name" in result.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p != policy]
    assert written == []


def test_help_says_where_the_kernel_goes_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["kernel", "install", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "inside a virtual environment the default is --sys-prefix" in out
    assert "install into this Python environment (default inside a virtual environment)" in out
    assert "--identity-file PEM" in out


def test_the_default_place_is_the_environment_only_inside_a_virtual_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from teelab.kernel.kernelspec import default_user_install

    monkeypatch.setattr(sys, "base_prefix", sys.prefix)
    assert default_user_install()  # a system Python: per user, as Jupyter's own default
    monkeypatch.setattr(sys, "base_prefix", "/usr")
    monkeypatch.setattr(sys, "prefix", "/home/someone/project/.venv")
    assert not default_user_install()  # this environment's own kernelspec and policy
