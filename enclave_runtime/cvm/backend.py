"""The host side of the CVM backend: the kernel is a local process inside the confidential VM.

What is attested is the VM: the SNP launch MEASUREMENT (and HOST_DATA), or the TD's MRTD and RTMRs. Those come
from the VM image — firmware, kernel, initrd, command line, and whatever the image measures into RTMRs — so
teelab cannot compute them: ``measure`` says where the reference value comes from instead. ``build`` records
the kernel image's manifest (the files are checked before each launch, a defence in depth: only the VM's own
measured boot makes them trustworthy) and ``launch`` starts the boot as a process of this VM.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from teelab.enclave_runtime.backend import (
    BackendStatus,
    BuildRequest,
    EnclaveBackend,
    Measurement,
    PccsCollateral,
)
from teelab.enclave_runtime.controller import ControllerBinding
from teelab.enclave_runtime.cvm.privileges import DEFAULT_KERNEL_USER, KERNEL_USER_ENV, KernelUser
from teelab.enclave_runtime.cvm.scratch import memory_scratch_parent
from teelab.enclave_runtime.cvm.vmm import ConfidentialVm, qemu_argv
from teelab.enclave_runtime.image import EnclaveImage, build_image
from teelab.enclave_runtime.launching import LaunchPlan, local_launch_plan, passthrough
from teelab.enclave_runtime.manifest import (
    ImageSpec,
    ProgressCallback,
)
from teelab.errors import EnclaveError, UsageError

MEASURE_EXPLANATION = (
    "the cvm backend has no enclave measurement of its own: the TEE is the whole VM, and its reference value "
    "comes from the VM image, not from teelab"
)
MEASURE_HINT = (
    "SEV-SNP: compute the launch measurement with `sev-snp-measure --mode snp --vcpus N --vcpu-type TYPE "
    "--ovmf OVMF.fd --kernel vmlinuz --initrd initrd --append CMDLINE` (PyPI: sev-snp-measure) and pin it as "
    "[snp] measurement (plus host_data if your launcher sets it); TDX: take MRTD and RTMR0-3 from the TD image's "
    "reference values (your cloud's, or a tool such as tdx-measure) and pin them as [tdx] mrtd / rtmr0..rtmr3"
)


class CvmBackend(PccsCollateral, EnclaveBackend):
    """Two ways to run a kernel: as a process of the confidential VM this backend runs in (the default), or,
    given ``vm``, as a VM of its own that the backend starts per kernel with QEMU (:mod:`.vmm`).

    The controller is bound by the VMM when it creates the VM (HOST_DATA on SEV-SNP, MRCONFIGID on TDX): per
    kernel in the second mode; inside an existing VM, by whoever created that VM — a VM bound to another
    gateway then fails that gateway's controller check, which is the point.
    """

    name = "cvm"

    def __init__(
        self,
        *,
        vm: ConfidentialVm | None = None,
        root: Path = Path("/"),
        kernel_user: str | None = None,
    ) -> None:
        self.vm = vm
        self.root = root
        # Inside the VM the boot starts as root (only it reads the attestation device) and runs the kernel as
        # this user (cvm.privileges); its scratch space is handed to that user.
        self.kernel_user = kernel_user or os.environ.get(KERNEL_USER_ENV) or DEFAULT_KERNEL_USER
        if vm is not None:
            self.binding = vm.binding
        else:
            tdx = (root / "dev" / "tdx_guest").exists()
            self.binding = ControllerBinding.MRCONFIGID if tdx else ControllerBinding.HOST_DATA
        # What the VM's TEE measures: the TD's MRTD and RTMRs, or the SNP launch measurement.
        tdx_vm = self.binding is ControllerBinding.MRCONFIGID
        self.measurement_label = "MRTD/RTMRs" if tdx_vm else "SNP launch measurement"

    def describe_measurement(self, image: EnclaveImage) -> tuple[str, str]:
        # The image's own digest is not what the VM's evidence carries; say where the value comes from.
        return (
            self.measurement_label,
            "of the VM image, not teelab's: see `teelab enclave measure --backend cvm`",
        )

    @classmethod
    def status(cls) -> BackendStatus:
        from teelab.enclave_runtime.doctor import HostView, cvm_status

        return cvm_status(HostView())

    def build_into(self, request: BuildRequest) -> EnclaveImage:
        if request.debug:
            raise UsageError(
                "--debug does not apply to the cvm backend: debugging is a property of the VM's launch policy"
            )
        return build_image(
            request.spec,
            out=request.out,
            backend=self.name,
            signing_key=request.signing_key,
            progress=request.progress,
        )

    def measure(self, spec: ImageSpec, *, progress: ProgressCallback | None = None) -> Measurement:
        raise EnclaveError(MEASURE_EXPLANATION, hint=MEASURE_HINT)

    def open_image(self, path: Path) -> EnclaveImage:
        return EnclaveImage.load(path, self.name)

    def check_files(self, image: EnclaveImage) -> None:
        if self.vm is None:
            super().check_files(image)
        # A VM of its own: its files are the VM image's, measured by its launch, not this host's files.

    def plan_launch(
        self, image: EnclaveImage, inputs: Mapping[str, str], controller: bytes | None
    ) -> LaunchPlan:
        if self.vm is None:
            mounts = (self.root / "proc" / "mounts").read_text()
            plan = local_launch_plan(
                image,
                inputs,
                backend=self.name,
                scratch_prefix="teelab-cvm-",
                scratch_parent=memory_scratch_parent(mounts),
            )
            plan.env[KERNEL_USER_ENV] = self.kernel_user
            if os.geteuid() == 0 and plan.scratch is not None:
                user = KernelUser.named(self.kernel_user)
                for top in (plan.scratch, image.path / "tee-state"):
                    for folder, _, files in os.walk(top):
                        for path in (folder, *(os.path.join(folder, f) for f in files)):
                            os.chown(path, user.uid, user.gid)
            return plan
        scratch = Path(tempfile.mkdtemp(prefix="teelab-cvm-vmm-"))
        argv = qemu_argv(self.vm, controller, passthrough(image.manifest, inputs))
        return LaunchPlan(argv, {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, scratch, scratch=scratch)

    def collateral_for(self, evidence: bytes, at: datetime) -> Path | None:
        """Intel collateral for a TDX quote (from the configured PCCS, cached); None for an SNP report,
        whose certificates travel with the evidence."""
        if len(evidence) >= 8 and evidence[4:8] == (0x81).to_bytes(4, "little"):
            return super().collateral_for(evidence, at)
        return None
