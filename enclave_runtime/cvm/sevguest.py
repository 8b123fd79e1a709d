"""``/dev/sev-guest``: SNP attestation reports and derived keys through the guest driver's ioctls.

Layouts from ``include/uapi/linux/sev-guest.h``: every request is wrapped in a 32-byte
``snp_guest_request_ioctl`` {msg_version u8 (must be 1), req_data u64, resp_data u64, exitinfo2 u64}, whose
``exitinfo2`` carries the firmware error (low 32 bits) and the hypervisor's (high 32). A report response is
4000 bytes: MSG_REPORT_RSP status u32, report size u32, 24 reserved, then the 1184-byte report at offset 32. A
derived-key response is 64 bytes: status u32, 28 reserved, the 32-byte key at offset 32.
"""

from __future__ import annotations

import ctypes
import os
import struct
import threading
from pathlib import Path

from teelab.enclave_runtime.occlum.ioctl import IoctlFn, libc_ioctl
from teelab.errors import EvidenceError

DEVICE = "/dev/sev-guest"
SNP_GET_REPORT = 0xC0205300
SNP_GET_DERIVED_KEY = 0xC0205301
MSG_VERSION = 1
REPORT_REQUEST_SIZE = 96
REPORT_RESPONSE_SIZE = 4000
REPORT_OFFSET = 32
SNP_REPORT_SIZE = 0x4A0
DERIVED_KEY_REQUEST_SIZE = 32
DERIVED_KEY_RESPONSE_SIZE = 64
ROOT_KEY_VCEK = 0
FIELD_GUEST_POLICY = 1 << 0
FIELD_MEASUREMENT = 1 << 3
_STATUS = {0x16: "invalid parameter", 0x27: "invalid key"}
_LOCK = threading.Lock()


class SnpGuestRequest(ctypes.Structure):
    _fields_ = [
        ("msg_version", ctypes.c_uint8),
        ("req_data", ctypes.c_uint64),
        ("resp_data", ctypes.c_uint64),
        ("exitinfo2", ctypes.c_uint64),
    ]


def report_request(report_data: bytes, vmpl: int = 0) -> bytes:
    return report_data + struct.pack("<I", vmpl) + bytes(28)


def derived_key_request(
    *, field_select: int, vmpl: int = 0, guest_svn: int = 0, tcb_version: int = 0
) -> bytes:
    return struct.pack("<IIQIIQ", ROOT_KEY_VCEK, 0, field_select, vmpl, guest_svn, tcb_version)


class SevGuest:
    def __init__(self, root: Path = Path("/"), *, ioctl: IoctlFn | None = None) -> None:
        self.device = root / DEVICE.lstrip("/")
        self._ioctl = ioctl

    def available(self) -> bool:
        return self.device.exists()

    def _request(self, request: int, payload: bytes, response_size: int, what: str) -> bytes:
        ioctl = self._ioctl or libc_ioctl()
        req = (ctypes.c_uint8 * len(payload)).from_buffer_copy(payload)
        resp = (ctypes.c_uint8 * response_size)()
        wrapper = SnpGuestRequest(MSG_VERSION, ctypes.addressof(req), ctypes.addressof(resp), 0)
        with _LOCK:
            try:
                fd = os.open(self.device, os.O_RDWR)
            except FileNotFoundError:
                raise EvidenceError(f"{self.device} does not exist: not inside an SEV-SNP guest") from None
            except OSError as error:
                raise EvidenceError(f"cannot open {self.device}: {error.strerror} (it needs root)") from None
            try:
                ioctl(fd, request, ctypes.addressof(wrapper))
            except OSError as error:
                fw, vmm = wrapper.exitinfo2 & 0xFFFFFFFF, wrapper.exitinfo2 >> 32
                raise EvidenceError(
                    f"{what} failed: {error.strerror or error} (firmware error {fw:#x}, hypervisor error {vmm:#x})"
                ) from None
            finally:
                os.close(fd)
        data = bytes(resp)
        (status,) = struct.unpack_from("<I", data)
        if status != 0:
            raise EvidenceError(
                f"{what}: the SNP firmware answered status {status:#x} ({_STATUS.get(status, 'error')})"
            )
        return data

    def report(self, report_data: bytes, vmpl: int = 0) -> bytes:
        """The 1184-byte attestation report over ``report_data`` (64 bytes)."""
        data = self._request(
            SNP_GET_REPORT, report_request(report_data, vmpl), REPORT_RESPONSE_SIZE, "SNP_GET_REPORT"
        )
        (size,) = struct.unpack_from("<I", data, 4)
        if not SNP_REPORT_SIZE <= size <= REPORT_RESPONSE_SIZE - REPORT_OFFSET:
            raise EvidenceError(f"SNP_GET_REPORT: the firmware reports a {size}-byte report")
        return data[REPORT_OFFSET : REPORT_OFFSET + size]

    def derived_key(self, *, field_select: int, vmpl: int = 0) -> bytes:
        """A 32-byte key from the VCEK root, mixed with the guest fields ``field_select`` names."""
        data = self._request(
            SNP_GET_DERIVED_KEY,
            derived_key_request(field_select=field_select, vmpl=vmpl),
            DERIVED_KEY_RESPONSE_SIZE,
            "SNP_GET_DERIVED_KEY",
        )
        return data[32:64]
