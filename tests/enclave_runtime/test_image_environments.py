"""An enclave image belongs to the Python environment (and backend) it was built from (issue 11 item 7).

Two real virtual environments share one user's data folder, as two projects of one user do. Each runs
`teelab kernel install` (inside a virtual environment that installs into the environment, sys.prefix, by default);
the second install must not replace the image, kernelspec or policy of the first environment, so afterwards the
kernels of both environments start and answer (through jupyter_client, the provisioner, the sim backend and the
attested handshake, as in JupyterLab)."""

from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path

from teelab.enclave_runtime.image import default_image_dir, environment_key

FIND_KERNELSPEC = """
from jupyter_client.kernelspec import KernelSpecManager  # what `jupyter kernelspec list` reads

print(KernelSpecManager().find_kernel_specs()["teelab-sim"])
"""
START_KERNEL = """
from jupyter_client.manager import KernelManager

km = KernelManager(kernel_name="teelab-sim")
km.start_kernel()
try:
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=120)
    outputs = []
    reply = kc.execute_interactive(
        "import sys; print(sys.prefix)", timeout=60, output_hook=lambda m: outputs.append(m["content"])
    )
    print("status", reply["content"]["status"])
    print("printed", "".join(o.get("text", "") for o in outputs).strip())
    kc.stop_channels()
finally:
    km.shutdown_kernel(now=True)
"""


def make_environment(folder: Path) -> Path:
    """A fresh venv that imports teelab and its dependencies from the test's own environment."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    (packages,) = (Path(p) for p in site.getsitepackages() if Path(p).name == "site-packages")
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    link = folder / "lib" / version / "site-packages" / "teelab-under-test.pth"
    link.write_text(f"import site; site.addsitedir({str(packages)!r})\n")
    return folder / "bin" / "python"


def run(python: Path, env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [str(python), *args], env=env, capture_output=True, text=True, timeout=300, cwd=env["HOME"]
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_image_folder_is_keyed_by_environment_and_backend(tmp_path: Path) -> None:
    first, second = (
        default_image_dir("k", "sim", prefix="/opt/a/venv"),
        default_image_dir("k", "sim", prefix="/b/venv"),
    )
    assert first != second and first.name == second.name == "k"
    assert first.parent.name.startswith("venv-") and second.parent.name.startswith("venv-")
    assert default_image_dir("k", "gramine", prefix="/opt/a/venv") != first
    assert environment_key() == environment_key(sys.prefix)  # the running environment by default


def test_two_environments_each_install_a_sim_kernel_and_both_kernels_start(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "JUPYTER_DATA_DIR": str(home / "jupyter"),
        "JUPYTER_CONFIG_DIR": str(home / "jupyter-config"),
        # One user's folders, shared by both environments.
        "TEELAB_DATA_DIR": str(tmp_path / "data"),
        "TEELAB_CONFIG_DIR": str(tmp_path / "config"),
        "TEELAB_CACHE_DIR": os.environ["TEELAB_CACHE_DIR"],
    }
    pythons = [make_environment(tmp_path / name) for name in ("env-a", "env-b")]
    installed = {}
    for python in pythons:
        out = run(python, env, "-m", "teelab.cli", "kernel", "install")
        installed[python] = dict(line.split(None, 1) for line in out.splitlines() if line.strip())
        prefix = python.parent.parent
        assert installed[python]["installed"] == "for this environment (sys.prefix) — the default here"
        assert Path(installed[python]["policy"]) == prefix / "etc" / "teelab" / "policies" / "teelab-sim.toml"
        assert Path(run(python, env, "-c", FIND_KERNELSPEC).strip()).is_relative_to(prefix)
    # Nothing went to the per-user places both environments share.
    assert not (home / "jupyter" / "kernels").exists() and not (tmp_path / "config" / "policies").exists()
    image_a, image_b = (Path(installed[p]["image"]) for p in pythons)
    assert image_a != image_b
    assert installed[pythons[0]]["MRENCLAVE"] != installed[pythons[1]]["MRENCLAVE"]
    # The first environment's image is still the one its policy pins, after the second environment's build.
    policy_a = Path(installed[pythons[0]]["policy"]).read_text()
    assert installed[pythons[0]]["MRENCLAVE"] in policy_a
    for python in pythons:
        out = run(python, env, "-c", START_KERNEL)
        assert "status ok" in out, out
        assert f"printed {python.parent.parent}" in out, out
