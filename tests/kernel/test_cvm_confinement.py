"""In a confidential VM the boot keeps the attestation device for itself and runs the kernel unprivileged.

A real privilege drop (this needs root, the CVM boot's role): the boot's ``_confine_kernel`` on a confidential VM's runtime
(``CvmRuntime.confine``) forks the root agent and drops the kernel to ``nobody``; the kernel's private folders pass to
that user; ``teelab.session.attest`` then goes through the agent with the *raw* user data, and the evidence
carries ``SHA-512("teelab/user/v1" ‖ data)`` exactly once (an attest() that pre-hashed would get evidence over a
hash of a hash, which no verifier of the user's data accepts). The agent stands in for the guest's device with
the simulated platform, as in tests/enclave_runtime/test_cvm_controller_os_boundary.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from teelab.enclave_runtime.sim.platform import SimPlatform

CONFINE = """
import json, os, sys
from teelab.enclave_runtime.sim.identity import SimIdentity
from teelab.enclave_runtime.sim.platform import SimPlatform
from teelab.enclave_runtime.sim.runtime import SimRuntime
from teelab.enclave_runtime.cvm.runtime import CvmRuntime
from teelab.kernel.boot import _confine_kernel
import teelab.session

class GuestDevice(SimRuntime):
    # A confidential VM's runtime; the simulated platform stands in for its device (root's).
    confine = CvmRuntime.confine

from pathlib import Path
platform = SimPlatform.load(Path(sys.argv[1]))
runtime = GuestDevice(SimIdentity(platform.path, bytes(range(32)), bytes(32), 0, 0, 0x04, bytes(64)), platform)
seen = {"boot_uid": os.geteuid()}
user_evidence = _confine_kernel(runtime)
seen["kernel_uids"] = list(os.getresuid())
seen["home_owner"] = os.stat(os.environ["HOME"]).st_uid
try:
    os.setuid(0); seen["become_root"] = "allowed"
except PermissionError:
    seen["become_root"] = "denied"
teelab.session.install(attestation={"verdict": "affirming"}, attest=runtime.evidence, user_evidence=user_evidence)
seen["quote"] = teelab.session.attest(b"a cell's data").blob.hex()
seen["expected"] = teelab.session.user_report_data(b"a cell's data").hex()
print(json.dumps(seen))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges for real needs root (the CVM boot's role)")
def test_in_a_cvm_the_kernel_runs_unprivileged_and_attest_sends_the_raw_user_data(tmp_path: Path) -> None:
    platform = SimPlatform.open(tmp_path / "platform")
    tmp_path.chmod(0o755)
    (tmp_path / "platform").chmod(0o755)
    home = Path(tempfile.mkdtemp(prefix="teelab-kernel-home-"))
    try:
        done = subprocess.run(
            [sys.executable, "-c", CONFINE, str(platform.path)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd="/",
            env={**os.environ, "HOME": str(home), "TEELAB_KERNEL_USER": "nobody"},
        )
    finally:
        home.rmdir()
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["boot_uid"] == 0
    assert seen["kernel_uids"] == [65534] * 3 and seen["home_owner"] == 65534
    assert seen["become_root"] == "denied"
    quote = bytes.fromhex(seen["quote"])
    assert quote[368:432].hex() == seen["expected"]  # hashed once, by the agent


def test_outside_a_confidential_vm_nothing_is_split() -> None:
    from teelab.enclave_runtime.sim.runtime import SimRuntime
    from teelab.kernel.boot import _confine_kernel

    assert _confine_kernel(SimRuntime.__new__(SimRuntime)) is None
