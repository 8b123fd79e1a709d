"""Inside the TEE: find the runtime this process is running under.

Each runtime by the interface only it provides: Gramine's ``/dev/attestation`` pseudo-files,
Occlum's ``/dev/sgx`` device (on an SGX host ``/dev/sgx`` is at most a folder of links), a confidential VM's
configfs-tsm, ``/dev/sev-guest`` or ``/dev/tdx_guest`` — unless the simulated backend launched this process and
said so with ``TEELAB_TEE=sim``. Detection is convenience, not trust: whatever answers must still produce
evidence the gateway verifies.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from teelab.enclave_runtime.backend import TeeRuntime
from teelab.errors import EvidenceError


def current_runtime(root: Path = Path("/"), env: Mapping[str, str] | None = None) -> TeeRuntime:
    """The runtime of the TEE this process runs in; an EvidenceError when it runs in none."""
    env = os.environ if env is None else env
    # The simulated backend says so explicitly. Honouring it first is safe: Gramine and Occlum let no host
    # variable but the boot request into the enclave, and inside a CVM the launcher itself is in the guest —
    # so only a simulated launch can set it, and a simulated kernel inside a CVM stays simulated.
    if env.get("TEELAB_TEE") == "sim":
        from teelab.enclave_runtime.sim.runtime import SimRuntime

        return SimRuntime.from_environment()
    from teelab.enclave_runtime.cvm.runtime import CvmRuntime
    from teelab.enclave_runtime.gramine.runtime import GramineRuntime
    from teelab.enclave_runtime.occlum.runtime import OcclumRuntime

    if GramineRuntime.detect(root):
        return GramineRuntime(root)
    if OcclumRuntime.detect(root):
        return OcclumRuntime(root)
    if CvmRuntime.detect(root):
        return CvmRuntime(root)
    raise EvidenceError(
        "this process is not running inside a TEE teelab knows (no /dev/attestation, /dev/sgx, "
        "configfs-tsm, /dev/sev-guest or /dev/tdx_guest, and not the simulated TEE)",
        hint="launch it through a teelab backend (e.g. the teelab-sim kernel)",
    )
