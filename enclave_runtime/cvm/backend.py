"""The host side of the CVM backend: the kernel is a local process inside the confidential VM.

What is attested is the VM: the SNP launch MEASUREMENT (and HOST_DATA), or the TD's MRTD and RTMRs. Those come
from the VM image — firmware, kernel, initrd, command line, and whatever the image measures into RTMRs — so
teelab cannot compute them: ``measure`` says where the reference value comes from instead. ``build`` records
the kernel image's manifest (the files are checked before each launch, a defence in depth: only the VM's own
measured boot makes them trustworthy) and ``launch`` starts the boot as a process of this VM.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from teelab.enclave_runtime.backend import BackendStatus, EnclaveBackend, EnclaveProcess
from teelab.enclave_runtime.hashcache import HashCache
from teelab.enclave_runtime.image import EnclaveImage, build_image, default_image_dir
from teelab.enclave_runtime.manifest import (
    TEE_STATE,
    TEE_TMP,
    ImageSpec,
    ProgressCallback,
    check_trusted_files,
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


class CvmBackend(EnclaveBackend):
    name = "cvm"

    @classmethod
    def status(cls) -> BackendStatus:
        from teelab.enclave_runtime.doctor import HostView, cvm_status

        return cvm_status(HostView())

    def build(
        self,
        spec: ImageSpec,
        *,
        out: Path | None = None,
        signing_key: Path | None = None,
        debug: bool = False,
        progress: ProgressCallback | None = None,
    ) -> EnclaveImage:
        if debug:
            raise UsageError(
                "--debug does not apply to the cvm backend: debugging is a property of the VM's launch policy"
            )
        return build_image(
            spec,
            out=out or default_image_dir(spec.name, self.name),
            backend=self.name,
            signing_key=signing_key,
            progress=progress,
        )

    def measure(self, spec: ImageSpec, *, progress: ProgressCallback | None = None) -> bytes:
        raise EnclaveError(MEASURE_EXPLANATION, hint=MEASURE_HINT)

    def load_image(self, name: str, path: Path | None = None) -> EnclaveImage:
        return EnclaveImage.load(path or default_image_dir(name, self.name), self.name)

    def launch(
        self,
        image: EnclaveImage,
        *,
        inputs: Mapping[str, str],
        stdout: int | None = None,
        stderr: int | None = None,
    ) -> EnclaveProcess:
        manifest = image.manifest
        unknown = sorted(set(inputs) - set(manifest.passthrough_env))
        if unknown:
            raise EnclaveError(f"the image does not let {', '.join(unknown)} in from the launcher")
        with HashCache() as cache:
            check_trusted_files(manifest, cache)
        state = image.path / "tee-state"
        state.mkdir(mode=0o700, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="teelab-cvm-"))

        def place(value: str) -> str:
            return value.replace(TEE_TMP, str(scratch)).replace(TEE_STATE, str(state))

        env = {name: place(value) for name, value in manifest.env}
        for folder in ("HOME", "IPYTHONDIR", "JUPYTER_RUNTIME_DIR", "MPLCONFIGDIR"):
            if folder in env:
                os.makedirs(env[folder], mode=0o700, exist_ok=True)
        env.update({name: inputs[name] for name in manifest.passthrough_env if name in inputs})
        env["TEELAB_TEE"] = self.name
        try:
            popen = subprocess.Popen(
                [place(a) for a in manifest.argv],
                executable=manifest.entrypoint,
                env=env,
                cwd=scratch,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as error:
            shutil.rmtree(scratch, ignore_errors=True)
            raise EnclaveError(f"cannot start {manifest.entrypoint}: {error.strerror}") from None
        return EnclaveProcess(popen, scratch)

    def collateral_path(self, at: datetime | None = None) -> Path | None:
        """None: SNP certificates travel with the evidence; TDX collateral depends on the quote (collateral_for)."""
        return None

    def collateral_for(self, evidence: bytes, at: datetime) -> Path | None:
        """Intel collateral for a TDX quote (from the configured PCCS, cached); None for an SNP report."""
        from teelab.enclave_runtime.cvm.pccs import PccsClient

        if len(evidence) >= 8 and evidence[4:8] == (0x81).to_bytes(4, "little"):
            return PccsClient().collateral_for_quote(evidence, at)
        return None
