"""Occlum's process model at the OS boundary: no ``fork()`` (tee_runtimes.md §2), so the measured launcher
starts multiprocessing children with spawn, and ``subprocess`` (vfork) works. The stand-in is a preload library
that makes ``fork()`` fail with ENOSYS in an ordinary process, as Occlum does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from teelab.enclave_runtime.manifest import EnclaveManifest
from teelab.enclave_runtime.occlum.config import launcher_script, occlum_json

from .libos_standin import build_no_fork

WORK = """\
import multiprocessing, subprocess

def square(x):
    return x * x

if __name__ == "__main__":
    with multiprocessing.Pool(2) as pool:
        print("pool", pool.map(square, [1, 2, 3]))
    print("subprocess", subprocess.run(["true"]).returncode)
"""


def manifest() -> EnclaveManifest:
    return EnclaveManifest(
        name="k",
        entrypoint=sys.executable,
        argv=(sys.executable, "-s", "-m", "work"),
        env=(),
        passthrough_env=(),
        trusted_files=(),
        isv_prod_id=0,
        isv_svn=0,
    )


@pytest.fixture(scope="module")
def no_fork(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    library = build_no_fork(tmp_path_factory.mktemp("libos"))
    return {**os.environ, "LD_PRELOAD": str(library)}


def test_os_boundary_the_stand_in_refuses_fork_like_occlum(no_fork: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "work.py").write_text(WORK)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import multiprocessing as m; m.set_start_method('fork'); import runpy; "
            "runpy.run_module('work', run_name='__main__')",
        ],
        cwd=tmp_path,
        env={**no_fork, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "Function not implemented" in result.stderr


def test_os_boundary_the_launcher_runs_multiprocessing_and_subprocess_without_fork(
    no_fork: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "work.py").write_text(WORK)
    script = launcher_script(manifest(), interpreter=sys.executable, sys_path=[str(tmp_path), *sys.path[1:]])
    (tmp_path / "launcher").write_text(script)
    result = subprocess.run(
        [sys.executable, str(tmp_path / "launcher")], env=no_fork, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["pool [1, 4, 9]", "subprocess 0"]


def test_os_boundary_occlum_json_has_shared_memory_and_tmp_in_enclave_memory() -> None:
    config = occlum_json(manifest())
    assert config["feature"]["enable_posix_shm"] is True  # multiprocessing's semaphores
    assert {"target": "/tmp", "type": "ramfs"} in config["mount"]
    assert config["mount"][0]["type"] == "unionfs"
