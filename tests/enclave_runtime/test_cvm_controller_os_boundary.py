"""The cvm backend at its OS boundaries: the VMM binds the controller when it creates the VM (SEV-SNP
HOST_DATA, TDX MRCONFIGID), and inside the VM only the boot reads the attestation device.

No KVM, QEMU or confidential VM here: a stand-in ``qemu-system-x86_64`` records the command line it was given
(what the VMM was asked to set), and the privilege split runs for real — setgroups/setresgid/setresuid to
``nobody`` — against a stand-in guest tree whose configfs-tsm folder and guest device have root's permissions,
with the simulated platform answering the root agent's evidence requests."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from teelab.enclave_runtime.controller import ControllerBinding
from teelab.enclave_runtime.cvm.backend import CvmBackend
from teelab.enclave_runtime.cvm.vmm import (
    BOOT_INPUTS_FW_CFG,
    FW_CFG_BY_NAME,
    ConfidentialVm,
    read_boot_inputs,
)
from teelab.enclave_runtime.manifest import ImageSpec
from teelab.enclave_runtime.sim.platform import SimPlatform
from teelab.errors import EnclaveError

CONTROLLER = hashlib.sha256(b"G.pub of this gateway").digest()

STAND_IN_QEMU = f"""#!{sys.executable}
import json, os, sys
open({{record!r}}, "w").write(json.dumps({{{{"argv": sys.argv, "env": dict(os.environ)}}}}))
"""


def kernel_spec(tmp_path: Path) -> ImageSpec:
    return ImageSpec(
        name="python-kernel",
        entrypoint=sys.executable,
        argv=(sys.executable, "-s", "-m", "teelab.kernel.boot"),
        passthrough_env=("TEELAB_BOOT_REQUEST",),
        trusted=(sys.executable,),
    )


def launch_vm(tmp_path: Path, kind: str, controller: bytes | None) -> dict[str, object]:
    record = tmp_path / f"qemu-{kind}.json"
    qemu = tmp_path / "qemu-system-x86_64"
    qemu.write_text(STAND_IN_QEMU.format(record=str(record)))
    qemu.chmod(0o755)
    vm = ConfidentialVm(kind=kind, firmware=tmp_path / "OVMF.fd", kernel=tmp_path / "vmlinuz", qemu=str(qemu))  # type: ignore[arg-type]
    backend = CvmBackend(vm=vm)
    image = backend.build(kernel_spec(tmp_path), out=tmp_path / "image")
    request = json.dumps({"nonce": "n", "respond_to": "10.0.2.2:4242"})
    process = backend.launch(image, inputs={"TEELAB_BOOT_REQUEST": request}, controller=controller)
    assert process.wait(timeout=60) == 0
    process.cleanup()
    seen: dict[str, object] = json.loads(record.read_text())
    return seen


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_os_boundary_snp_vm_is_created_with_the_controller_as_host_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET_ON_THE_HOST", "x")
    seen = launch_vm(tmp_path, "sev-snp", CONTROLLER)
    argv = seen["argv"]
    assert isinstance(argv, list)
    snp = option(argv, "-object")
    assert snp.startswith("sev-snp-guest,id=cvm0,")
    assert f"host-data={base64.b64encode(CONTROLLER).decode()}" in snp.split(",")
    assert option(argv, "-machine") == "q35,confidential-guest-support=cvm0"
    # The boot request reaches the guest as a fw_cfg blob (QEMU doubles commas inside a value).
    blob = option(argv, "-fw_cfg")
    assert blob.startswith(f"name={BOOT_INPUTS_FW_CFG},string=")
    inputs = json.loads(blob.split(",string=", 1)[1].replace(",,", ","))
    assert json.loads(inputs["TEELAB_BOOT_REQUEST"])["nonce"] == "n"
    env = seen["env"]
    assert isinstance(env, dict) and "SECRET_ON_THE_HOST" not in env
    assert CvmBackend(vm=ConfidentialVm("sev-snp", tmp_path)).binding is ControllerBinding.HOST_DATA


def test_os_boundary_tdx_vm_is_created_with_the_controller_as_mrconfigid(tmp_path: Path) -> None:
    argv = launch_vm(tmp_path, "tdx", CONTROLLER)["argv"]
    assert isinstance(argv, list)
    tdx = option(argv, "-object")
    assert tdx == f"tdx-guest,id=cvm0,mrconfigid={base64.b64encode(CONTROLLER + bytes(16)).decode()}"
    assert CvmBackend(vm=ConfidentialVm("tdx", tmp_path)).binding is ControllerBinding.MRCONFIGID


def test_os_boundary_without_a_controller_the_vm_fields_stay_zero(tmp_path: Path) -> None:
    argv = launch_vm(tmp_path, "sev-snp", None)["argv"]
    assert isinstance(argv, list)
    assert f"host-data={base64.b64encode(bytes(32)).decode()}" in option(argv, "-object")


SPLIT = """
import json, os, sys
from pathlib import Path
from teelab.enclave_runtime.cvm.privileges import KernelUser, split_privileges, user_report_data
from teelab.enclave_runtime.cvm.runtime import CvmRuntime
from teelab.enclave_runtime.sim.identity import SimIdentity
from teelab.enclave_runtime.sim.platform import SimPlatform
from teelab.errors import EnclaveError
from teelab.enclave_runtime.sim.runtime import SimRuntime
from teelab.errors import EvidenceError

guest, platform = Path(sys.argv[1]), SimPlatform.load(Path(sys.argv[2]))
report_dir, device = guest / "sys/kernel/config/tsm/report", guest / "dev/sev-guest"
identity = SimIdentity(platform.path, bytes(range(32)), bytes(32), 0, 0, 0x04, bytes(64))
agent_runtime = SimRuntime(identity, platform)  # stands in for the guest's device, which only root may use
seen = {"boot_uid": os.geteuid()}
os.mkdir(report_dir / "boot-probe"); os.rmdir(report_dir / "boot-probe"); open(device, "rb").close()
client = split_privileges(agent_runtime, KernelUser.named("nobody"))
seen["kernel_uids"] = list(os.getresuid()); seen["kernel_groups"] = os.getgroups()
for name, attempt in (("mkdir_report", lambda: os.mkdir(report_dir / "kernel")),
                      ("open_device", lambda: open(device, "rb")),
                      ("become_root", lambda: os.setuid(0))):
    try:
        attempt(); seen[name] = "allowed"
    except PermissionError:
        seen[name] = "denied"
try:
    CvmRuntime(guest).evidence(bytes(64)); seen["runtime"] = "evidence"
except EvidenceError as error:
    seen["runtime"] = error.message
evidence = client.evidence(b"a cell's data")
seen["user_quote"] = evidence.blob.hex()
seen["expected_report_data"] = user_report_data(b"a cell's data").hex()
client.close()
print(json.dumps(seen))
"""


@pytest.fixture
def guest_tree() -> Iterator[Path]:
    """A stand-in guest root with root's permissions on the attestation interfaces, traversable by all."""
    guest = Path(tempfile.mkdtemp(prefix="teelab-guest-"))
    try:
        guest.chmod(0o755)
        report = guest / "sys/kernel/config/tsm/report"
        report.mkdir(parents=True, mode=0o755)
        for folder in (report, *report.parents):
            if folder == guest:
                break
            folder.chmod(0o755)
        (guest / "dev").mkdir(mode=0o755)
        (guest / "dev/sev-guest").write_bytes(b"")
        (guest / "dev/sev-guest").chmod(0o600)
        yield guest
    finally:
        shutil.rmtree(guest, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges for real needs root (the CVM boot's role)")
def test_os_boundary_cvm_kernel_runs_unprivileged_and_only_the_boot_reads_the_attestation_device(
    guest_tree: Path, tmp_path: Path
) -> None:
    platform = SimPlatform.open(tmp_path / "platform")
    done = subprocess.run(
        [sys.executable, "-c", SPLIT, str(guest_tree), str(platform.path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["boot_uid"] == 0
    assert seen["kernel_uids"] == [65534, 65534, 65534] and seen["kernel_groups"] == []
    assert seen["mkdir_report"] == seen["open_device"] == seen["become_root"] == "denied"
    assert "reports need root" in seen["runtime"], seen["runtime"]  # the kernel gets nothing from the device
    quote = bytes.fromhex(seen["user_quote"])
    # The agent answered with evidence over the domain-separated hash, never over raw report data.
    assert quote[368:432].hex() == seen["expected_report_data"]


def test_os_boundary_the_guest_reads_the_inputs_qemu_was_given(tmp_path: Path) -> None:
    """What the stand-in QEMU received as fw_cfg is what the guest reads back from sysfs."""
    argv = launch_vm(tmp_path, "sev-snp", CONTROLLER)["argv"]
    assert isinstance(argv, list)
    blob = option(argv, "-fw_cfg").split(",string=", 1)[1].replace(",,", ",")
    guest = tmp_path / "guest"
    raw = guest / FW_CFG_BY_NAME / BOOT_INPUTS_FW_CFG / "raw"
    raw.parent.mkdir(parents=True)
    raw.write_text(blob)
    inputs = read_boot_inputs(guest)
    assert set(inputs) == {"TEELAB_BOOT_REQUEST"}
    assert json.loads(inputs["TEELAB_BOOT_REQUEST"])["respond_to"] == "10.0.2.2:4242"
    for hostile in (b"[1, 2]", b'{"a": 1}', b"\xff", b"{" + b" " * (1 << 17) + b"}"):
        raw.write_bytes(hostile)
        with pytest.raises(EnclaveError):
            read_boot_inputs(guest)
    raw.unlink()
    with pytest.raises(EnclaveError, match="qemu_fw_cfg"):
        read_boot_inputs(guest)
