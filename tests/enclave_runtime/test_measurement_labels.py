"""Each backend names its own measurement (MRENCLAVE, SNP launch measurement, MRTD/RTMRs) wherever teelab
shows one: `teelab kernel install`, `teelab enclave build|measure`, and the UI's attestation record."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from teelab.enclave_runtime.cvm.backend import CvmBackend
from teelab.enclave_runtime.gramine.backend import GramineBackend
from teelab.enclave_runtime.occlum.backend import OcclumBackend
from teelab.enclave_runtime.sim.backend import SimBackend

SNP_POLICY = """\
id = "cvm-label-test"
[snp]
measurement = ["{}"]
""".format("ab" * 48)


def test_sgx_backends_name_mrenclave() -> None:
    assert SimBackend.measurement_label == GramineBackend.measurement_label == "MRENCLAVE"
    assert OcclumBackend.measurement_label == "MRENCLAVE"


def test_the_cvm_backend_names_the_vms_measurement(tmp_path: Path) -> None:
    assert CvmBackend(root=tmp_path).measurement_label == "SNP launch measurement"
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "tdx_guest").touch()
    assert CvmBackend(root=tmp_path).measurement_label == "MRTD/RTMRs"


def test_kernel_install_for_a_cvm_does_not_print_an_mrenclave(tmp_path: Path, shared_cache_dir: Path) -> None:
    policy = tmp_path / "snp.toml"
    policy.write_text(SNP_POLICY)
    env = {
        **os.environ,
        "TEELAB_DATA_DIR": str(tmp_path / "data"),
        "TEELAB_CONFIG_DIR": str(tmp_path / "config"),
        "TEELAB_CACHE_DIR": str(shared_cache_dir),
        "JUPYTER_DATA_DIR": str(tmp_path / "jupyter"),
    }
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("teelab")),
            "kernel",
            "install",
            "--user",  # not into the test run's own environment (the default inside a venv)
            "--backend",
            "cvm",
            "--policy",
            str(policy),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "mrenclave" not in result.stdout.lower()
    assert (
        "SNP launch measurement of the VM image, not teelab's: see `teelab enclave measure --backend cvm`"
        in result.stdout
    )


@pytest.mark.parametrize(
    ("claims", "label"),
    [
        ({"mrenclave": "aa"}, "MRENCLAVE"),
        ({"mrtd": "bb"}, "MRTD"),
        ({"measurement": "cc"}, "SNP launch measurement"),
    ],
)
def test_the_ui_record_labels_the_claim_by_tee(claims: dict[str, str], label: str) -> None:
    from teelab.extension.records import MEASUREMENT_CLAIMS

    (name,) = [n for claim, n in MEASUREMENT_CLAIMS if claim in claims]
    assert name == label
