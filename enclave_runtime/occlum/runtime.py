"""Inside an Occlum enclave: DCAP quotes and sealing keys through ``/dev/sgx`` ioctls.

Evidence: ``SGXIOC_GET_DCAP_QUOTE_SIZE``, then ``SGXIOC_GEN_DCAP_QUOTE`` with the 64 report-data bytes. Occlum
maps the quoting library's BUSY to ``EBUSY`` (its own tests retry 20 times, a second apart), so both calls are
retried on EBUSY and nothing else; ``EIO`` means the DCAP device never initialised on the host.

Sealing: ``SGXIOC_GET_KEY`` with a 512-byte ``sgx_key_request_t`` — key name SEAL, policy MRENCLAVE (or
MRSIGNER), the enclave's current CPUSVN/ISVSVN/CONFIGSVN from a report to itself, and an explicit attribute
mask that binds DEBUG (and INIT, MODE64BIT, the KSS bits) as the SGX SDK's default does: with Occlum's own
all-zero mask a debug build of the same enclave would derive the same key. The 16 bytes go through HKDF.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

from teelab.enclave_runtime.backend import Evidence, EvidenceKind, SealPolicy, TeeRuntime, check_report_data
from teelab.enclave_runtime.controller import controller_from_field, pinned_controller
from teelab.enclave_runtime.gramine.runtime import derive_sealing_key, sgx_quote_report_data
from teelab.enclave_runtime.occlum.ioctl import (
    KEY_REQUEST_SIZE,
    KEY_SIZE,
    REPORT_SIZE,
    SGXIOC_CREATE_REPORT,
    SGXIOC_GEN_DCAP_QUOTE,
    SGXIOC_GET_DCAP_QUOTE_SIZE,
    SGXIOC_GET_KEY,
    CreateReportArg,
    GenDcapQuoteArg,
    GetKeyArg,
    IoctlFn,
    libc_ioctl,
)
from teelab.errors import EvidenceError

DEVICE = "/dev/sgx"
KEYNAME_SEAL = 0x0004
KEYPOLICY = {SealPolicy.MRENCLAVE: 0x0001, SealPolicy.MRSIGNER: 0x0002}
# The SGX SDK's TSEAL_DEFAULT_FLAGSMASK: INIT | DEBUG | MODE64BIT and the reserved high byte.
ATTRIBUTE_FLAGS_MASK = 0xFF0000000000000B
ATTRIBUTE_XFRM_MASK = 0x0
MISC_MASK = 0xF0000000  # TSEAL_DEFAULT_MISCMASK
ATTRIBUTE_KSS = 0x80  # SGX_FLAGS_KSS: the enclave was built with KSS, so its launcher set CONFIGID
# A fixed key id makes the key deterministic for this enclave on this platform (Gramine uses zero).
KEY_ID = hashlib.sha256(b"teelab/occlum/seal-key-id/v1").digest()
MAX_QUOTE = 64 * 1024
BUSY_RETRIES = 20
BUSY_DELAY = 1.0
_LOCK = threading.Lock()


def key_request(*, policy: SealPolicy, cpu_svn: bytes, isv_svn: int, config_svn: int) -> bytes:
    """The 512-byte ``sgx_key_request_t`` for the enclave's seal key (Intel ``sgx_key.h`` layout)."""
    if len(cpu_svn) != 16:
        raise ValueError("cpu_svn is 16 bytes")
    request = bytearray(KEY_REQUEST_SIZE)
    struct.pack_into("<HHHH", request, 0, KEYNAME_SEAL, KEYPOLICY[policy], isv_svn, 0)
    request[8:24] = cpu_svn
    struct.pack_into("<QQ", request, 24, ATTRIBUTE_FLAGS_MASK, ATTRIBUTE_XFRM_MASK)
    request[40:72] = KEY_ID
    struct.pack_into("<IH", request, 72, MISC_MASK, config_svn)
    return bytes(request)


class OcclumRuntime(TeeRuntime):
    backend = "occlum"

    def __init__(
        self,
        root: Path = Path("/"),
        *,
        ioctl: IoctlFn | None = None,
        sleep: Callable[[float], None] = time.sleep,
        busy_retries: int = BUSY_RETRIES,
    ) -> None:
        self.device = root / DEVICE.lstrip("/")
        self._ioctl = ioctl
        self.sleep = sleep
        self.busy_retries = busy_retries

    @classmethod
    def detect(cls, root: Path = Path("/")) -> bool:
        """Occlum's devfs has a ``/dev/sgx`` device; on an SGX host ``/dev/sgx`` is a folder of links, if any."""
        device = root / DEVICE.lstrip("/")
        return device.exists() and not device.is_dir()

    @property
    def ioctl(self) -> IoctlFn:
        if self._ioctl is None:
            self._ioctl = libc_ioctl()
        return self._ioctl

    def _open(self) -> int:
        try:
            return os.open(self.device, os.O_RDONLY)
        except FileNotFoundError:
            raise EvidenceError(
                f"{self.device} does not exist: this process is not running inside Occlum",
                hint="launch the image with `occlum run` (teelab's occlum backend)",
            ) from None
        except OSError as error:
            raise EvidenceError(f"cannot open {self.device}: {error.strerror}") from None

    def _call(self, fd: int, request: int, arg: int, what: str) -> None:
        for attempt in range(self.busy_retries + 1):
            try:
                self.ioctl(fd, request, arg)
                return
            except OSError as error:
                if error.errno == errno.EBUSY and attempt < self.busy_retries:
                    self.sleep(BUSY_DELAY)
                    continue
                if error.errno == errno.EBUSY:
                    raise EvidenceError(
                        f"{what}: the quoting enclave stayed busy through {self.busy_retries} retries"
                    ) from None
                if error.errno == errno.EIO:
                    raise EvidenceError(
                        f"{what}: Occlum's DCAP device is not ready (EIO)",
                        hint="on the host: is the DCAP quote provider installed and configured (teelab doctor)? "
                        "A SIM-mode build has no quotes at all",
                    ) from None
                raise EvidenceError(f"{what} failed: {error.strerror or error}") from None

    def evidence(self, report_data: bytes) -> Evidence:
        check_report_data(report_data)
        with _LOCK:
            fd = self._open()
            try:
                size = ctypes.c_uint32(0)
                self._call(
                    fd, SGXIOC_GET_DCAP_QUOTE_SIZE, ctypes.addressof(size), "SGXIOC_GET_DCAP_QUOTE_SIZE"
                )
                if not 0 < size.value <= MAX_QUOTE:
                    raise EvidenceError(f"Occlum reports a quote size of {size.value} bytes")
                data = (ctypes.c_uint8 * 64).from_buffer_copy(report_data)
                buffer = (ctypes.c_uint8 * size.value)()
                length = ctypes.c_uint32(size.value)
                arg = GenDcapQuoteArg(
                    ctypes.addressof(data), ctypes.addressof(length), ctypes.addressof(buffer)
                )
                self._call(fd, SGXIOC_GEN_DCAP_QUOTE, ctypes.addressof(arg), "SGXIOC_GEN_DCAP_QUOTE")
            finally:
                os.close(fd)
        if not 0 < length.value <= size.value:
            raise EvidenceError(
                f"Occlum returned a quote length of {length.value} for a {size.value}-byte buffer"
            )
        quote = bytes(buffer)[: length.value]
        carried = sgx_quote_report_data(quote)
        if carried is None:
            raise EvidenceError(
                f"Occlum returned something that is not an SGX quote (starts {quote[:8].hex()})"
            )
        if carried != report_data:
            raise EvidenceError("the quote carries other report data than was asked for; refusing to send it")
        return Evidence(EvidenceKind.SGX_QUOTE, quote)

    def self_report(self, fd: int) -> bytes:
        report = (ctypes.c_uint8 * REPORT_SIZE)()
        arg = CreateReportArg(None, None, ctypes.addressof(report))
        self._call(fd, SGXIOC_CREATE_REPORT, ctypes.addressof(arg), "SGXIOC_CREATE_REPORT")
        return bytes(report)

    def controller(self) -> bytes | None:
        """CONFIGID of a report to itself when the enclave has KSS (``occlum run --config-id``), else the
        controller its measured environment pins (instances built before KSS: the "measurement" binding)."""
        with _LOCK:
            fd = self._open()
            try:
                body = self.self_report(fd)[:384]
            finally:
                os.close(fd)
        (flags,) = struct.unpack_from("<Q", body, 48)
        if flags & ATTRIBUTE_KSS:
            return controller_from_field(body[192:256])
        return pinned_controller(os.environ.items())

    def sealing_key(self, policy: SealPolicy = SealPolicy.MRENCLAVE, *, label: bytes = b"") -> bytes:
        with _LOCK:
            fd = self._open()
            try:
                body = self.self_report(fd)[:384]
                isv_svn, config_svn = struct.unpack_from("<HH", body, 258)
                request = (ctypes.c_uint8 * KEY_REQUEST_SIZE).from_buffer_copy(
                    key_request(policy=policy, cpu_svn=body[0:16], isv_svn=isv_svn, config_svn=config_svn)
                )
                key = (ctypes.c_uint8 * KEY_SIZE)()
                arg = GetKeyArg(ctypes.addressof(request), ctypes.addressof(key))
                self._call(fd, SGXIOC_GET_KEY, ctypes.addressof(arg), "SGXIOC_GET_KEY")
            finally:
                os.close(fd)
        raw = bytes(key)
        if raw == bytes(KEY_SIZE):
            raise EvidenceError("SGXIOC_GET_KEY returned an all-zero key")
        return derive_sealing_key(raw, backend=self.backend, policy=policy, label=label)
