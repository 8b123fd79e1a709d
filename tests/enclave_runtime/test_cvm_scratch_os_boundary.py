"""A kernel in a confidential VM keeps its scratch files in guest memory: the VM's disk is the host's to read.
Stand-in mount tables (as /proc/mounts of a guest) decide where the scratch folder goes, or refuse the launch."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from teelab.enclave_runtime.cvm.backend import CvmBackend
from teelab.enclave_runtime.cvm.scratch import memory_scratch_parent
from teelab.enclave_runtime.manifest import TEE_TMP, ImageSpec
from teelab.errors import EnclaveError

DISK_TMP = "/dev/vda1 / ext4 rw 0 0\n/dev/vda1 /tmp ext4 rw 0 0\nproc /proc proc rw 0 0\n"


def test_os_boundary_tmp_on_tmpfs_is_used() -> None:
    assert memory_scratch_parent("/dev/vda1 / ext4 rw 0 0\ntmpfs /tmp tmpfs rw 0 0\n") == "/tmp"


def test_os_boundary_a_disk_backed_tmp_falls_back_to_dev_shm() -> None:
    assert memory_scratch_parent(DISK_TMP + "tmpfs /dev/shm tmpfs rw 0 0\n") == "/dev/shm"
    assert memory_scratch_parent(DISK_TMP + "tmpfs /run tmpfs rw 0 0\n") == "/run"


def test_os_boundary_no_memory_file_system_refuses_the_launch(tmp_path: Path) -> None:
    root = tmp_path / "guest"
    (root / "proc").mkdir(parents=True)
    (root / "proc" / "mounts").write_text(DISK_TMP)
    spec = ImageSpec(
        name="k",
        entrypoint=sys.executable,
        argv=(sys.executable, "-c", "pass"),
        env={"HOME": f"{TEE_TMP}/home"},
        passthrough_env=(),
        trusted=(sys.executable,),
    )
    backend = CvmBackend(root=root)
    image = backend.build(spec, out=tmp_path / "image")
    with pytest.raises(EnclaveError, match="the VM's disk is readable by the host") as caught:
        backend.launch(image, inputs={})
    assert "mount -t tmpfs" in (caught.value.hint or "")


def test_os_boundary_the_scratch_folder_lands_on_a_memory_file_system(tmp_path: Path) -> None:
    """This machine's own mount table: the kernel's HOME (under its scratch folder) is on tmpfs."""
    spec = ImageSpec(
        name="k",
        entrypoint=sys.executable,
        argv=(sys.executable, "-c", "import os; print(os.environ['HOME'])"),
        env={"HOME": f"{TEE_TMP}/home"},
        passthrough_env=(),
        trusted=(sys.executable,),
    )
    backend = CvmBackend()
    image = backend.build(spec, out=tmp_path / "image")
    import subprocess

    process = backend.launch(image, inputs={}, stdout=subprocess.PIPE)
    out, _ = process.popen.communicate(timeout=60)
    home = out.decode().strip()
    parent = memory_scratch_parent(Path("/proc/mounts").read_text())
    assert home.startswith(parent + "/teelab-cvm-")
