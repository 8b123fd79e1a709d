"""The released artefacts work without a checkout (issue 19): scripts/wheel_smoke.py, run by `make test`.

The slow test builds the sdist and, from it, the wheel of the committed HEAD, installs the wheel into a fresh
virtual environment and uses it as a user would (see the script's docstring for every step). It writes its
report, with the time of each step, to tests/artifacts/wheel-check.json. The fast tests pin what makes the
slow one trustworthy: the user's session is isolated from the caller's, and the source tree's resources are
expected where the wheel must put them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"


def load_script() -> ModuleType:
    # scripts/ is not a package; load the script by path, as setup.py loads labextension/build.py.
    spec = importlib.util.spec_from_file_location("teelab_wheel_smoke", ROOT / "scripts" / "wheel_smoke.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


wheel_smoke = load_script()


def test_the_users_session_sees_none_of_the_callers_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "TEELAB_DATA_DIR": "/srv/mine",
        "TEELAB_KBS": "127.0.0.1:1",
        "JUPYTER_PATH": "/srv/jupyter",
        "JUPYTERHUB_USER": "someone",
        "PYTHONPATH": str(ROOT),
        "VIRTUAL_ENV": str(ROOT / ".venv"),
        "XDG_DATA_HOME": "/srv/xdg",
        "PATH": os.pathsep.join([str(ROOT / ".venv" / "bin"), "/usr/bin"]),
    }.items():
        monkeypatch.setenv(name, value)
    venv = tmp_path / "venv"

    env = wheel_smoke.isolated_env(tmp_path / "home", venv)

    assert not [name for name in env if name.startswith(("TEELAB_", "JUPYTER", "PYTHON", "VIRTUAL_ENV"))]
    assert env["HOME"] == str(tmp_path / "home")
    assert env["XDG_DATA_HOME"] == str(tmp_path / "home" / ".local" / "share")
    path = env["PATH"].split(os.pathsep)
    assert path[0] == str(venv / "bin")
    assert str(ROOT / ".venv" / "bin") not in path and "/usr/bin" in path


def test_every_resource_of_the_parts_is_expected_in_the_installed_package(tmp_path: Path) -> None:
    for name, text in {
        "enclave_runtime/__init__.py": "",
        "enclave_runtime/gramine/template.py": "",
        "enclave_runtime/gramine/kernel.manifest.j2": "{{ x }}",
        "gateway/dcap/README.md": "for readers of the repository",
        "teelab/py.typed": "",
        "teelab/cli.py": "",
        "extension/node_modules/x/index.py": "",
    }.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)

    code, resources = wheel_smoke.expected_files(tmp_path)

    assert code == [
        Path("teelab/cli.py"),
        Path("teelab/enclave_runtime/__init__.py"),
        Path("teelab/enclave_runtime/gramine/template.py"),
    ]
    assert resources == [Path("teelab/py.typed"), Path("teelab/enclave_runtime/gramine/kernel.manifest.j2")]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # two builds (one with the labextension's webpack) and a full install
def test_the_wheel_built_from_the_sdist_works_without_a_checkout() -> None:
    wheelhouse = Path(os.environ.get("TEELAB_WHEELHOUSE", wheel_smoke.DEFAULT_WHEELHOUSE))
    # Not tmp_path: pytest keeps those for three sessions, and this one holds a whole environment (~1 GB).
    with tempfile.TemporaryDirectory(prefix="teelab-wheel-check-") as work:
        try:
            report = wheel_smoke.smoke(Path(work), wheelhouse=wheelhouse)
        except wheel_smoke.SmokeError as error:
            pytest.fail(str(error), pytrace=False)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "wheel-check.json").write_text(json.dumps(report.__dict__, indent=1))

    checks = report.checks
    assert checks["doctor"]["sim"] is True
    assert checks["labextension_enabled"] and checks["server_enabled"]
    assert checks["kernel"]["pandas_sum"] == "10"
    assert checks["kernel"]["attestation"]["simulated"] is True
    assert checks["kernel"]["attestation"]["measurement"] == checks["mrenclave"]
    assert checks["kernel"]["dataset"] == {"APAC": 10.0, "EU": 5.5, "US": 2.25}
    assert "console_scripts:teelab" in checks["entry_points"]
    assert "jupyter_client.kernel_provisioners:teelab" in checks["entry_points"]
    assert "teelab/enclave_runtime/gramine/kernel.manifest.j2" in checks["installed_resources"]
    # State belongs to its environment: all of it was made in the session's temporary home, except the
    # kernelspec, which `teelab kernel install` in a virtual environment puts into the environment itself
    # (wheel_smoke checks it is under the venv; nothing per user that another environment would overwrite).
    assert {".local/share/teelab/sim-platform", ".local/share/teelab/kbs"} <= set(checks["state"])
    assert ".local/share/jupyter/kernels" not in checks["state"]
    assert Path(checks["kernelspec"]).parts[-4:] == ("share", "jupyter", "kernels", "teelab-sim")


def test_an_extension_counts_as_enabled_only_when_it_also_validates() -> None:
    working = "    teelab.extension \x1b[32menabled\x1b[0m\n    - Validating teelab.extension...\n      teelab.extension  \x1b[32mOK\x1b[0m\n"
    broken = "    teelab.extension \x1b[32menabled\x1b[0m\n    - Validating teelab.extension...\n      X is teelab.extension importable?\n"
    disabled = "    teelab.extension \x1b[31mdisabled\x1b[0m\n      teelab.extension  \x1b[32mOK\x1b[0m\n"

    assert wheel_smoke.listed_enabled(working, "teelab.extension")
    assert not wheel_smoke.listed_enabled(broken, "teelab.extension")
    assert not wheel_smoke.listed_enabled(disabled, "teelab.extension")
    assert not wheel_smoke.listed_enabled(working, "teelab")  # a prefix of another extension's name is not it
