"""Occlum's ``/dev/sgx`` ioctl protocol against a stand-in ioctl function — the OS boundary, not an enclave.

The stand-in plays Occlum's device: it records every request number and the bytes of every argument struct
(and of the memory the struct points to), answers GET_DCAP_QUOTE_SIZE / GEN_DCAP_QUOTE with the REAL SGX quote
from ``shared/vectors/sgx-dcap-qvl`` (verified end to end by the gateway at the vector's time), and answers
CREATE_REPORT / GET_KEY with fixed values. ``/dev/sgx`` itself is a plain file in a stand-in tree.
"""

from __future__ import annotations

import ctypes
import errno
import struct
from datetime import UTC, datetime
from pathlib import Path

import pytest

from teelab.enclave_runtime.backend import EvidenceKind, SealPolicy
from teelab.enclave_runtime.gramine.runtime import derive_sealing_key
from teelab.enclave_runtime.occlum.ioctl import (
    SGXIOC_CREATE_REPORT,
    SGXIOC_GEN_DCAP_QUOTE,
    SGXIOC_GET_DCAP_QUOTE_SIZE,
    SGXIOC_GET_KEY,
)
from teelab.enclave_runtime.occlum.runtime import KEY_ID, OcclumRuntime
from teelab.enclave_runtime.runtime import current_runtime
from teelab.errors import EvidenceError
from teelab.gateway.policy import parse_policy
from teelab.gateway.verifier import verify_evidence

VECTORS = Path(__file__).resolve().parents[2].parent / "shared" / "vectors"
SGX = VECTORS / "sgx-dcap-qvl"
QUOTE = (SGX / "sgx_quote.bin").read_bytes()
HELLO = b"Hello, world!".ljust(64, b"\x00")
CPU_SVN = bytes.fromhex("0b0b1a18ffff04000000000000000000")
RAW_KEY = bytes(range(100, 116))


class StandInDevice:
    """Occlum's /dev/sgx as seen through ioctl(2): records requests, answers like the device."""

    def __init__(self, *, busy: int = 0, error: int | None = None) -> None:
        self.calls: list[tuple[int, bytes]] = []
        self.report_data: list[bytes] = []
        self.key_requests: list[bytes] = []
        self.busy = busy
        self.error = error

    def __call__(self, fd: int, request: int, arg: int) -> int:
        size = (request >> 16) & 0x3FFF  # the _IOC size field: how many bytes the struct has
        self.calls.append((request, ctypes.string_at(arg, size)))
        if self.error is not None:
            raise OSError(self.error, "stand-in error")
        if self.busy and request == SGXIOC_GEN_DCAP_QUOTE:
            self.busy -= 1
            raise OSError(errno.EBUSY, "Device or resource busy")
        if request == SGXIOC_GET_DCAP_QUOTE_SIZE:
            ctypes.memmove(arg, struct.pack("<I", len(QUOTE)), 4)
        elif request == SGXIOC_GEN_DCAP_QUOTE:
            report_data, length_at, buffer = struct.unpack("<QQQ", ctypes.string_at(arg, 24))
            self.report_data.append(ctypes.string_at(report_data, 64))
            (capacity,) = struct.unpack("<I", ctypes.string_at(length_at, 4))
            assert capacity >= len(QUOTE)
            ctypes.memmove(buffer, QUOTE, len(QUOTE))
            ctypes.memmove(length_at, struct.pack("<I", len(QUOTE)), 4)
        elif request == SGXIOC_CREATE_REPORT:
            target, data, report = struct.unpack("<QQQ", ctypes.string_at(arg, 24))
            assert target == 0 and data == 0  # a report for the enclave itself
            body = bytearray(432)
            body[0:16] = CPU_SVN
            struct.pack_into("<HH", body, 258, 3, 2)  # ISVSVN 3, CONFIGSVN 2
            ctypes.memmove(report, bytes(body), 432)
        elif request == SGXIOC_GET_KEY:
            key_request, key = struct.unpack("<QQ", ctypes.string_at(arg, 16))
            self.key_requests.append(ctypes.string_at(key_request, 512))
            ctypes.memmove(key, RAW_KEY, 16)
        else:  # pragma: no cover - a request the runtime must not make
            raise OSError(errno.ENOTTY, "unknown request")
        return 0


def occlum_tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "dev").mkdir(parents=True)
    (root / "dev" / "sgx").write_bytes(b"")  # stand-in for Occlum's devfs node
    return root


def test_os_boundary_quote_ioctls_record_the_requests_and_return_a_real_quote_that_verifies(
    tmp_path: Path,
) -> None:
    device = StandInDevice()
    runtime = OcclumRuntime(occlum_tree(tmp_path), ioctl=device, sleep=lambda _: None)
    evidence = runtime.evidence(HELLO)
    assert [request for request, _ in device.calls] == [0x80047307, 0xC0187308]
    assert len(device.calls[1][1]) == 24  # the sgxioc_gen_dcap_quote_arg_t the ioctl number declares
    assert device.report_data == [HELLO]
    assert evidence.kind is EvidenceKind.SGX_QUOTE and evidence.blob == QUOTE
    policy = parse_policy(
        'accepted_tcb_statuses = ["ConfigurationAndSWHardeningNeeded"]\n'
        'accepted_advisory_ids = ["*"]\n[sgx]\n'
        'mrenclave = ["33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"]\n'
    )
    result = verify_evidence(
        evidence.blob,
        collateral=SGX / "sgx_quote_collateral.json",
        at=datetime(2025, 7, 1, tzinfo=UTC),
        policy=policy,
        expected_report_data=HELLO,
    )
    assert result.ok, result.error


def test_os_boundary_ebusy_is_retried_and_nothing_else_is(tmp_path: Path) -> None:
    sleeps: list[float] = []
    device = StandInDevice(busy=2)
    runtime = OcclumRuntime(occlum_tree(tmp_path), ioctl=device, sleep=sleeps.append)
    assert runtime.evidence(HELLO).blob == QUOTE
    assert sleeps == [1.0, 1.0]
    assert [r for r, _ in device.calls].count(SGXIOC_GEN_DCAP_QUOTE) == 3
    stuck = OcclumRuntime(
        occlum_tree(tmp_path / "b"), ioctl=StandInDevice(busy=100), sleep=lambda _: None, busy_retries=3
    )
    with pytest.raises(EvidenceError, match="stayed busy through 3 retries"):
        stuck.evidence(HELLO)
    broken = OcclumRuntime(
        occlum_tree(tmp_path / "c"), ioctl=StandInDevice(error=errno.EIO), sleep=sleeps.append
    )
    with pytest.raises(EvidenceError, match="not ready") as caught:
        broken.evidence(HELLO)
    assert caught.value.hint is not None and "SIM-mode" in caught.value.hint
    assert sleeps == [1.0, 1.0]  # EIO was not retried


def test_os_boundary_other_report_data_than_asked_for_is_refused(tmp_path: Path) -> None:
    device = StandInDevice()
    with pytest.raises(EvidenceError, match="other report data"):
        OcclumRuntime(occlum_tree(tmp_path), ioctl=device).evidence(bytes(64))
    assert device.report_data == [bytes(64)]
    with pytest.raises(EvidenceError, match="exactly 64 bytes"):
        OcclumRuntime(occlum_tree(tmp_path / "b"), ioctl=device).evidence(bytes(63))
    assert len(device.calls) == 2  # the short request never reached the device


def test_os_boundary_missing_device_means_not_inside_occlum(tmp_path: Path) -> None:
    with pytest.raises(EvidenceError, match="not running inside Occlum"):
        OcclumRuntime(tmp_path, ioctl=StandInDevice()).evidence(HELLO)


def test_os_boundary_sealing_key_request_binds_debug_and_the_current_svns(tmp_path: Path) -> None:
    device = StandInDevice()
    runtime = OcclumRuntime(occlum_tree(tmp_path), ioctl=device)
    key = runtime.sealing_key(SealPolicy.MRENCLAVE, label=b"datasets")
    assert [r for r, _ in device.calls] == [0xC0187304, 0xC010730B]
    request = device.key_requests[0]
    assert len(request) == 512
    name, policy, isv_svn, _ = struct.unpack_from("<HHHH", request, 0)
    assert (name, policy, isv_svn) == (4, 1, 3)
    assert request[8:24] == CPU_SVN
    flags_mask, xfrm_mask = struct.unpack_from("<QQ", request, 24)
    assert flags_mask == 0xFF0000000000000B and flags_mask & 0x2  # DEBUG is part of the derivation
    assert xfrm_mask == 0
    assert request[40:72] == KEY_ID
    assert struct.unpack_from("<IH", request, 72) == (0xF0000000, 2)
    assert request[78:] == bytes(512 - 78)
    assert key == derive_sealing_key(
        RAW_KEY, backend="occlum", policy=SealPolicy.MRENCLAVE, label=b"datasets"
    )
    runtime.sealing_key(SealPolicy.MRSIGNER)
    assert struct.unpack_from("<H", device.key_requests[1], 2) == (2,)


def test_os_boundary_occlum_is_detected_by_its_device_and_a_host_folder_is_not(tmp_path: Path) -> None:
    assert isinstance(current_runtime(root=occlum_tree(tmp_path), env={}), OcclumRuntime)
    host = tmp_path / "host"
    (host / "dev" / "sgx").mkdir(parents=True)  # an SGX host's /dev/sgx/{enclave,provision} links
    with pytest.raises(EvidenceError, match="not running inside a TEE"):
        current_runtime(root=host, env={})
