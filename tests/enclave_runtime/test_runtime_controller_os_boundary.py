"""``TeeRuntime.controller()``: each runtime reads the controller it was launched for from its own platform.

The boot compares it with the boot request's ``G.pub`` and refuses a request naming another gateway
(tests/kernel/test_launch_wiring.py runs that on the simulated TEE). Here, at each backend's OS boundary: Gramine's
measured environment (no KSS), Occlum's CONFIGID from a report to itself when KSS is on (else its measured
environment), a confidential VM's SNP HOST_DATA or TDX MRCONFIGID from its own report — the same stand-in devices
and real report vectors as the attestation tests. A field whose padding is not zero carries no teelab controller:
the runtime says so rather than guess.
"""

from __future__ import annotations

import ctypes
import hashlib
import struct
from pathlib import Path

import pytest

from teelab.enclave_runtime.controller import CONTROLLER_ENV
from teelab.enclave_runtime.cvm.runtime import CvmRuntime
from teelab.enclave_runtime.gramine.runtime import GramineRuntime
from teelab.enclave_runtime.occlum.ioctl import SGXIOC_CREATE_REPORT
from teelab.enclave_runtime.occlum.runtime import OcclumRuntime
from teelab.errors import EnclaveError

from .test_cvm_attestation_os_boundary import SNP_REPORT, TDX_QUOTE, StandInConfigfs, guest_tree
from .test_occlum_ioctl_os_boundary import occlum_tree

CONTROLLER = hashlib.sha256(b"the launching gateway's G.pub").digest()


def test_os_boundary_gramine_reads_the_controller_its_measured_manifest_pins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = GramineRuntime(tmp_path)
    monkeypatch.delenv(CONTROLLER_ENV, raising=False)
    assert runtime.controller() is None  # an image built for no gateway
    monkeypatch.setenv(CONTROLLER_ENV, CONTROLLER.hex())
    assert runtime.controller() == CONTROLLER
    monkeypatch.setenv(CONTROLLER_ENV, "not hex")
    with pytest.raises(EnclaveError, match="malformed controller"):
        runtime.controller()


class SelfReport:
    """Occlum's /dev/sgx answering SGXIOC_CREATE_REPORT with a report body of given flags and CONFIGID."""

    def __init__(self, *, kss: bool, config_id: bytes) -> None:
        self.body = bytearray(432)
        struct.pack_into("<Q", self.body, 48, 0x04 | 0x01 | (0x80 if kss else 0))  # MODE64BIT | INIT | KSS
        self.body[192:256] = config_id

    def __call__(self, fd: int, request: int, arg: int) -> int:
        assert request == SGXIOC_CREATE_REPORT
        _, _, report = struct.unpack("<QQQ", ctypes.string_at(arg, 24))
        ctypes.memmove(report, bytes(self.body), len(self.body))
        return 0


def test_os_boundary_occlum_reads_configid_under_kss_and_else_its_measured_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = occlum_tree(tmp_path)
    other = hashlib.sha256(b"another").digest()
    monkeypatch.setenv(CONTROLLER_ENV, other.hex())
    kss = OcclumRuntime(root, ioctl=SelfReport(kss=True, config_id=CONTROLLER + bytes(32)))
    assert kss.controller() == CONTROLLER  # the launcher's --config-id, not the environment
    assert OcclumRuntime(root, ioctl=SelfReport(kss=True, config_id=bytes(64))).controller() is None
    with pytest.raises(EnclaveError, match="padding is not zero"):
        OcclumRuntime(root, ioctl=SelfReport(kss=True, config_id=CONTROLLER * 2)).controller()
    # An instance built before KSS: its CONFIGID is whatever, its measured Occlum.json env pins the controller.
    before_kss = OcclumRuntime(root, ioctl=SelfReport(kss=False, config_id=CONTROLLER + bytes(32)))
    assert before_kss.controller() == other


def test_os_boundary_an_snp_guest_reads_host_data_of_its_own_report(tmp_path: Path) -> None:
    root = guest_tree(tmp_path, "/dev/sev-guest")
    report = bytearray(SNP_REPORT)
    report[0xC0:0xE0] = CONTROLLER
    configfs = StandInConfigfs("sev_guest", bytes(report))
    assert CvmRuntime(root, tsm_files=configfs).controller() == CONTROLLER
    assert len(configfs.inblobs) == 1 and configfs.created == configfs.removed
    report[0xC0:0xE0] = bytes(32)
    unbound = StandInConfigfs("sev_guest", bytes(report))
    assert CvmRuntime(guest_tree(tmp_path / "b", "/dev/sev-guest"), tsm_files=unbound).controller() is None


def test_os_boundary_a_tdx_guest_reads_mrconfigid_of_its_own_quote(tmp_path: Path) -> None:
    quote = bytearray(TDX_QUOTE)
    body = 48  # the vector is a v4 quote
    assert struct.unpack_from("<H", quote)[0] == 4
    quote[body + 184 : body + 232] = CONTROLLER + bytes(16)
    root = guest_tree(tmp_path, "/dev/tdx_guest")
    assert CvmRuntime(root, tsm_files=StandInConfigfs("tdx_guest", bytes(quote))).controller() == CONTROLLER
    quote[body + 184 : body + 232] = CONTROLLER + b"\x01" + bytes(15)
    with pytest.raises(EnclaveError, match="padding is not zero"):
        CvmRuntime(
            guest_tree(tmp_path / "b", "/dev/tdx_guest"), tsm_files=StandInConfigfs("tdx_guest", bytes(quote))
        ).controller()
