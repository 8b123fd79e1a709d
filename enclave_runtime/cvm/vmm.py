"""The VMM side of the cvm backend: the QEMU command that creates one confidential VM bound to a controller.

SEV-SNP's HOST_DATA and TDX's MRCONFIGID are set by the VMM when it creates the VM; the platform then reports
them, unchanged, in every attestation report (SNP) or quote (TDX) of that VM, and nothing in the guest can
change them. So when the cvm backend starts a VM per kernel (``CvmBackend(vm=ConfidentialVm(...))``), the
launching gateway's controller goes into the VM's creation:

- SEV-SNP (QEMU ≥ 9.1): ``-object sev-snp-guest,id=cvm0,...,host-data=<base64 of 32 bytes>``;
- TDX (QEMU ≥ 10.1): ``-object tdx-guest,id=cvm0,mrconfigid=<base64 of 48 bytes>``;

with ``-machine q35,confidential-guest-support=cvm0``. The launch inputs (untrusted, like every launch input:
the boot request) reach the guest as one JSON fw_cfg blob (``opt/teelab/boot-inputs``), which the guest reads
from ``/sys/firmware/qemu_fw_cfg/by_name/opt/teelab/boot-inputs/raw``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from teelab.enclave_runtime.controller import ControllerBinding, snp_host_data, tdx_mrconfigid
from teelab.errors import EnclaveError, UsageError

CvmKind = Literal["sev-snp", "tdx"]
OBJECT_ID = "cvm0"
BOOT_INPUTS_FW_CFG = "opt/teelab/boot-inputs"
# The C-bit position and the physical address bits it costs on AMD EPYC (Milan, Genoa, Turin).
SNP_CBITPOS = 51
SNP_REDUCED_PHYS_BITS = 1


@dataclass(frozen=True)
class ConfidentialVm:
    """How to start one confidential VM for one kernel: its platform, firmware, kernel and size.

    The reference value the policy pins (SNP MEASUREMENT, TDX MRTD/RTMRs) comes from exactly these parts
    (``sev-snp-measure`` over firmware, kernel, initrd and command line; the TD image's reference values).
    """

    kind: CvmKind
    firmware: Path  # SNP: the consolidated OVMF.fd; TDX: TDVF (OVMF built for TDX)
    kernel: Path | None = None
    initrd: Path | None = None
    append: str = ""
    memory: str = "4G"
    cpus: int = 2
    qemu: str = "qemu-system-x86_64"
    extra: tuple[str, ...] = ()  # disks and devices of the VM image, verbatim

    @property
    def binding(self) -> ControllerBinding:
        return ControllerBinding.HOST_DATA if self.kind == "sev-snp" else ControllerBinding.MRCONFIGID


def _option_value(text: str) -> str:
    """QEMU's option syntax: a comma inside a value is written twice."""
    return text.replace(",", ",,")


def confidential_object(kind: CvmKind, controller: bytes | None) -> list[str]:
    """The ``-object`` that makes the VM confidential, with the controller in its launch-time field."""
    if kind == "sev-snp":
        host_data = base64.b64encode(snp_host_data(controller)).decode()
        properties = f"cbitpos={SNP_CBITPOS},reduced-phys-bits={SNP_REDUCED_PHYS_BITS},host-data={host_data}"
        return ["-object", f"sev-snp-guest,id={OBJECT_ID},{properties}"]
    if kind == "tdx":
        mrconfigid = base64.b64encode(tdx_mrconfigid(controller)).decode()
        return ["-object", f"tdx-guest,id={OBJECT_ID},mrconfigid={mrconfigid}"]
    raise UsageError(f"unknown confidential VM kind {kind!r}", hint="use sev-snp or tdx")


def qemu_argv(vm: ConfidentialVm, controller: bytes | None, inputs: Mapping[str, str]) -> list[str]:
    """The QEMU command line that starts ``vm`` bound to ``controller``, handing it ``inputs``."""
    argv = [
        vm.qemu,
        "-enable-kvm",
        "-machine",
        f"q35,confidential-guest-support={OBJECT_ID}",
        "-cpu",
        "host",
        "-smp",
        str(vm.cpus),
        "-m",
        vm.memory,
        *confidential_object(vm.kind, controller),
        "-bios",
        str(vm.firmware),
        "-nographic",
        "-nodefaults",
        "-serial",
        "stdio",
    ]
    if vm.kernel is not None:
        argv += ["-kernel", str(vm.kernel), "-append", vm.append]
    if vm.initrd is not None:
        argv += ["-initrd", str(vm.initrd)]
    blob = _option_value(json.dumps(dict(inputs), sort_keys=True, separators=(",", ":")))
    argv += ["-fw_cfg", f"name={BOOT_INPUTS_FW_CFG},string={blob}", *vm.extra]
    return argv


FW_CFG_BY_NAME = "sys/firmware/qemu_fw_cfg/by_name"
_MAX_INPUTS = 1 << 16


def read_boot_inputs(root: Path = Path("/")) -> dict[str, str]:
    """Inside a VM the backend started: the launch inputs from fw_cfg (untrusted, like every launch input).

    Needs the guest's ``qemu_fw_cfg`` driver; anything but a JSON object of strings is an EnclaveError.
    """
    path = root / FW_CFG_BY_NAME / BOOT_INPUTS_FW_CFG / "raw"
    try:
        with open(path, "rb") as blob:
            raw = blob.read(_MAX_INPUTS + 1)
    except OSError as error:
        raise EnclaveError(
            f"no launch inputs at {path}: {error.strerror}", hint="load the guest's qemu_fw_cfg driver"
        ) from None
    if len(raw) > _MAX_INPUTS:
        raise EnclaveError(f"the launch inputs at {path} are larger than {_MAX_INPUTS} bytes")
    try:
        inputs = json.loads(raw)
    except ValueError:
        raise EnclaveError(f"the launch inputs at {path} are not JSON") from None
    if not isinstance(inputs, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in inputs.items()
    ):
        raise EnclaveError(f"the launch inputs at {path} are not an object of strings")
    return inputs
