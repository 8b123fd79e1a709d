"""Inside a confidential VM: only the boot reads the attestation device; the kernel runs unprivileged.

In a CVM the attestation device is the guest kernel's (configfs-tsm under ``/sys/kernel/config/tsm/report``,
``/dev/sev-guest``, ``/dev/tdx_guest``) and only root may use it. If the Jupyter kernel ran as root, any cell
could ask for evidence over report data of its choosing — an attestation oracle for the pinned measurement.
So the boot, which runs as root, gets its own session evidence and then calls :func:`split_privileges`:

- a forked *agent* keeps root and answers one kind of request only: evidence over
  ``SHA-512("teelab/user/v1" ‖ user_data)`` (:func:`teelab.session.user_report_data`; the agent hashes, so the
  kernel sends the user data itself), never over raw report data, so no
  answer can pass for session evidence (``SHA-512("teelab/session/v1" ‖ …)``);
- the boot's own process drops to an unprivileged user (supplementary groups, then group, then user; checked
  to be irreversible) and goes on to run the kernel, which can then neither create a configfs-tsm report nor
  open the guest devices, and reaches the agent only through :class:`UserEvidenceClient`.

The agent exits when the kernel closes its end (the kernel exiting does that). This is the OS boundary inside
the VM: a kernel exploit that regains root gets the device back, which is the guest kernel's to prevent.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import socket
import struct
from dataclasses import dataclass

from teelab.enclave_runtime.backend import Evidence, TeeRuntime
from teelab.errors import EnclaveError, EvidenceError
from teelab.session import user_report_data  # the one definition of SHA-512("teelab/user/v1" ‖ data)

KERNEL_USER_ENV = "TEELAB_KERNEL_USER"
DEFAULT_KERNEL_USER = "nobody"
MAX_USER_DATA = 1 << 20
_MAX_ANSWER = 1 << 22
_LENGTH = struct.Struct(">I")


@dataclass(frozen=True)
class KernelUser:
    """The unprivileged account the kernel runs as."""

    name: str
    uid: int
    gid: int

    @classmethod
    def named(cls, name: str) -> KernelUser:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise EnclaveError(
                f"the kernel's user {name!r} does not exist in this VM",
                hint=f"create it (useradd --system {name}) or set {KERNEL_USER_ENV}",
            ) from None
        if entry.pw_uid == 0:
            raise EnclaveError(f"the kernel's user {name!r} is root; it must be an unprivileged account")
        return cls(name, entry.pw_uid, entry.pw_gid)


def drop_privileges(user: KernelUser) -> None:
    """Become ``user`` for good: no supplementary groups, its group, its uid (real, effective and saved)."""
    os.setgroups([])
    os.setresgid(user.gid, user.gid, user.gid)
    os.setresuid(user.uid, user.uid, user.uid)
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise EnclaveError("dropping privileges did not stick: this process could become root again")


def _send(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(_LENGTH.pack(len(payload)) + payload)


def _receive(sock: socket.socket, limit: int) -> bytes | None:
    """One length-prefixed message; None when the peer closed the connection."""
    header = _read_exactly(sock, _LENGTH.size)
    if header is None:
        return None
    (size,) = _LENGTH.unpack(header)
    if size > limit:
        raise EvidenceError(f"a message of {size} bytes is larger than the {limit} allowed")
    body = _read_exactly(sock, size)
    if body is None:
        raise EvidenceError("the connection closed in the middle of a message")
    return body


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None if not data else bytes(data)
        data += chunk
    return bytes(data)


def serve_user_evidence(runtime: TeeRuntime, sock: socket.socket) -> None:
    """The agent's loop: for each request (user data), evidence over its domain-separated hash."""
    while True:
        try:
            user_data = _receive(sock, MAX_USER_DATA)
        except EvidenceError:
            return  # a kernel that breaks the framing gets no more answers
        if user_data is None:
            return
        try:
            answer = runtime.evidence(user_report_data(user_data)).to_json()
        except EvidenceError as error:
            answer = {"error": error.message}
        _send(sock, json.dumps(answer).encode())


class UserEvidenceClient:
    """The kernel's way to evidence after the split: user data in, evidence over its domain-separated hash out."""

    def __init__(self, sock: socket.socket, agent_pid: int | None = None) -> None:
        self.sock = sock
        self.agent_pid = agent_pid

    def evidence(self, user_data: bytes) -> Evidence:
        if len(user_data) > MAX_USER_DATA:
            raise EvidenceError(f"user data is limited to {MAX_USER_DATA} bytes")
        _send(self.sock, user_data)
        answer = _receive(self.sock, _MAX_ANSWER)
        if answer is None:
            raise EvidenceError("the attestation agent is gone")
        try:
            decoded = json.loads(answer)
        except ValueError:
            raise EvidenceError("the attestation agent sent a malformed answer") from None
        if isinstance(decoded, dict) and "error" in decoded:
            raise EvidenceError(f"the attestation agent could not get evidence: {decoded['error']}")
        return Evidence.from_json(decoded)

    def close(self) -> None:
        """Close the kernel's end; the agent then exits (and is reaped here when it is our child)."""
        self.sock.close()
        if self.agent_pid is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.agent_pid, 0)
            self.agent_pid = None


def split_privileges(runtime: TeeRuntime, user: KernelUser) -> UserEvidenceClient:
    """Fork the root agent that serves user evidence from ``runtime``; drop this process to ``user``.

    The boot calls this once it has its own (session) evidence and before it runs any code of the user's.
    """
    if os.geteuid() != 0:
        raise EnclaveError("splitting privileges needs root: the boot of a CVM kernel runs as root")
    kernel_end, agent_end = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the agent: root, one job, gone when the kernel is
        code = 0
        try:
            kernel_end.close()
            serve_user_evidence(runtime, agent_end)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    agent_end.close()
    drop_privileges(user)
    return UserEvidenceClient(kernel_end, agent_pid=pid)
