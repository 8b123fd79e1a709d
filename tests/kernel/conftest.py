"""Fixtures for attested-kernel tests: one simulated platform, image and kernelspec per test session.

Building the kernel's enclave image hashes the whole Python environment, so it is done once; each test then
points teelab (and Jupyter) at that installation through environment variables.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

KERNEL = "teelab-sim"


@dataclass(frozen=True)
class KernelEnv:
    root: Path
    data: Path
    config: Path
    jupyter_data: Path
    runtime: Path
    kernelspec: Path
    policy: Path
    mrenclave: str

    def environ(self) -> dict[str, str]:
        return {
            "TEELAB_DATA_DIR": str(self.data),
            "TEELAB_CONFIG_DIR": str(self.config),
            "JUPYTER_DATA_DIR": str(self.jupyter_data),
            "JUPYTER_RUNTIME_DIR": str(self.runtime),
            "JUPYTER_PLATFORM_DIRS": "1",
        }


@pytest.fixture(scope="session")
def kernel_env_session(
    tmp_path_factory: pytest.TempPathFactory, shared_cache_dir: Path
) -> Iterator[KernelEnv]:
    from teelab.kernel.kernelspec import install

    root = tmp_path_factory.mktemp("kernel-env")
    env = {
        "TEELAB_DATA_DIR": str(root / "data"),
        "TEELAB_CONFIG_DIR": str(root / "config"),
        "TEELAB_CACHE_DIR": str(shared_cache_dir),
        "JUPYTER_DATA_DIR": str(root / "jupyter-data"),
        "JUPYTER_RUNTIME_DIR": str(root / "runtime"),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        installed = install(backend="sim", user=True)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    yield KernelEnv(
        root=root,
        data=root / "data",
        config=root / "config",
        jupyter_data=root / "jupyter-data",
        runtime=root / "runtime",
        kernelspec=installed.kernelspec_dir,
        policy=installed.policy_file,
        mrenclave=installed.image.mrenclave.hex(),
    )


@pytest.fixture
def kernel_env(
    kernel_env_session: KernelEnv, teelab_dirs: Path, monkeypatch: pytest.MonkeyPatch
) -> KernelEnv:
    for key, value in kernel_env_session.environ().items():
        monkeypatch.setenv(key, value)
    return kernel_env_session


def copy_kernelspec(
    env: KernelEnv, jupyter_data_dir: Path, name: str = KERNEL, **metadata_changes: object
) -> Path:
    """Install the session's kernelspec into another Jupyter data dir (e.g. pytest-jupyter's)."""
    target = jupyter_data_dir / "kernels" / name
    shutil.copytree(env.kernelspec, target, dirs_exist_ok=True)
    if metadata_changes:
        spec = json.loads((target / "kernel.json").read_text())
        spec["metadata"]["kernel_provisioner"]["config"].update(metadata_changes)
        (target / "kernel.json").write_text(json.dumps(spec))
    return target


def write_policy(env: KernelEnv, name: str, text: str) -> Path:
    path = env.config / "policies" / f"{name}.toml"
    path.write_text(text)
    return path


@pytest.fixture
def broker(kernel_env: KernelEnv) -> Iterator[object]:
    """A real key broker (gRPC on loopback) in the kernel environment, found by the gateway and the owner's
    commands the way `teelab kbs serve` makes itself found (its endpoint file)."""
    from teelab.sealed_store.kbs.config import KbsConfig
    from teelab.sealed_store.kbs.server import KbsServer
    from teelab.sealed_store.services import ENDPOINT_FILE

    state = kernel_env.data / "kbs"
    server = KbsServer(KbsConfig(state_dir=state), address="127.0.0.1:0")
    server.start()
    (state / ENDPOINT_FILE).write_text(server.target)
    yield server
    (state / ENDPOINT_FILE).unlink(missing_ok=True)
    server.stop(grace=1)
