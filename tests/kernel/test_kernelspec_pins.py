"""`teelab kernel install` refuses a real-TEE kernel whose policy pins no image identity.

The adversary is the host: on genuine hardware (SGX with Flexible Launch Control, SEV-SNP, TDX) it can run
an image of its own, and a policy that pins nothing would accept it and hand it the session's keys.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

MRENCLAVE = "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"


def install(tmp_path: Path, backend: str, policy_text: str) -> subprocess.CompletedProcess[str]:
    policy = tmp_path / "policy.toml"
    policy.write_text(policy_text)
    env = {
        **os.environ,
        "JUPYTER_DATA_DIR": str(tmp_path / "jupyter-data"),
        "TEELAB_CONFIG_DIR": str(tmp_path / "config"),
    }
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "teelab.cli",
            "kernel",
            "install",
            "--backend",
            backend,
            "--policy",
            str(policy),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("backend", "policy_text", "problem"),
    [
        ("gramine", "", "no [sgx], [tdx] or [snp] section"),
        ("gramine", "[sgx]\n", "[sgx] needs sgx.mrenclave, or sgx.mrsigner with sgx.isv_prod_id"),
        ("occlum", f'[sgx]\nmrsigner = ["{MRENCLAVE}"]\n', "[sgx] needs"),
        ("cvm", '[snp]\nhost_data = ["' + "00" * 32 + '"]\n', "[snp] needs snp.measurement"),
        ("cvm", '[tdx]\nrtmr0 = ["' + "00" * 48 + '"]\n', "[tdx] needs tdx.mrtd"),
        ("cvm", f'[sgx]\nmrenclave = ["{MRENCLAVE}"]\n[snp]\n', "[snp] needs snp.measurement"),
    ],
)
def test_install_refuses_a_real_backend_policy_that_pins_no_identity(
    tmp_path: Path, backend: str, policy_text: str, problem: str
) -> None:
    result = install(tmp_path, backend, policy_text)
    assert result.returncode == 2, result.stderr
    assert "pins no kernel image" in result.stderr and problem in result.stderr
    assert "teelab enclave measure" in result.stderr
    assert not (tmp_path / "jupyter-data" / "kernels").exists()
    assert not (tmp_path / "config" / "policies").exists()
