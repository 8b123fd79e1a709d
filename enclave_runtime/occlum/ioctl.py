"""Occlum's ``/dev/sgx`` ioctl interface: request numbers and argument structures (x86-64 layouts).

Numbers are Linux ``_IOC`` encodings with magic ``'s'`` (Occlum ``src/libos/src/fs/dev_fs/dev_sgx``); the
argument structs hold pointers, so they are ctypes structures passed by address. The ioctl itself is a
parameter (:data:`IoctlFn`): the real one calls libc, a test's stand-in reads and writes the same memory.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable

SGXIOC_SELF_TARGET = 0x82007303
SGXIOC_CREATE_REPORT = 0xC0187304
SGXIOC_GET_DCAP_QUOTE_SIZE = 0x80047307
SGXIOC_GEN_DCAP_QUOTE = 0xC0187308
SGXIOC_GET_KEY = 0xC010730B

REPORT_SIZE = 432  # sgx_report_t: body 384, key_id 32, mac 16
KEY_REQUEST_SIZE = 512  # sgx_key_request_t
KEY_SIZE = 16

# (fd, request, address of the argument) -> ioctl's return value; raises OSError with the errno on failure.
IoctlFn = Callable[[int, int, int], int]


class GenDcapQuoteArg(ctypes.Structure):
    """``sgxioc_gen_dcap_quote_arg_t``: 24 bytes."""

    _fields_ = [
        ("report_data", ctypes.c_void_p),  # in: 64 bytes
        ("quote_len", ctypes.c_void_p),  # in/out: uint32_t*, at least GET_DCAP_QUOTE_SIZE
        ("quote_buf", ctypes.c_void_p),  # out
    ]


class CreateReportArg(ctypes.Structure):
    """``sgxioc_create_report_arg_t``: 24 bytes; a NULL target means "a report for myself"."""

    _fields_ = [
        ("target_info", ctypes.c_void_p),
        ("report_data", ctypes.c_void_p),
        ("report", ctypes.c_void_p),  # out: 432 bytes
    ]


class GetKeyArg(ctypes.Structure):
    """``sgxioc_get_key_arg_t``: 16 bytes."""

    _fields_ = [
        ("key_request", ctypes.c_void_p),  # in: 512-byte sgx_key_request_t
        ("key", ctypes.c_void_p),  # out: 16 bytes
    ]


def libc_ioctl() -> IoctlFn:
    """The process's own ``ioctl(2)`` (glibc wants the request as unsigned long)."""
    libc = ctypes.CDLL(None, use_errno=True)
    function = libc.ioctl
    function.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
    function.restype = ctypes.c_int

    def call(fd: int, request: int, arg: int) -> int:
        result = int(function(fd, request, arg))
        if result < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))
        return result

    return call
