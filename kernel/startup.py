"""No process is created while the kernel starts.

Under Gramine every fork makes a new enclave (seconds, and the enclave's memory again), and a fork in flight
while a client connected killed the kernel inside libzmq (tee_runtimes.md §1.7: 6 of 6 tries). Stock ipykernel
forked once at start: importing debugpy runs ``uname -p`` through ``platform.platform()``. The attested kernel
no longer imports debugpy (``no_debugger``); this guard keeps anything else from forking until start-up is
over. While it is active, every attempt to create a process fails with :class:`ProcessDuringStartup`, an
``OSError`` — what ``platform`` and most callers already treat as "the command could not run". The boot
confirms readiness only after start-up (``TeeKernelApp.initialize``) has returned.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from teelab.errors import TeelabError

# Audit events raised before a process is created (CPython's audit events table).
_PROCESS_EVENTS = frozenset(
    {"os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.system", "subprocess.Popen", "pty.spawn"}
)


class ProcessDuringStartup(TeelabError, OSError):
    """Something tried to create a process while the kernel was starting."""


class _Guard:
    def __init__(self) -> None:
        self.active = 0
        self.refused: list[str] = []
        self.installed = False
        self.lock = threading.Lock()

    def hook(self, event: str, args: tuple[object, ...]) -> None:
        # Runs for every audit event of the process: the common case must stay one comparison.
        if self.active and event in _PROCESS_EVENTS:
            self.refused.append(event)
            raise ProcessDuringStartup(f"no process may be created while the kernel starts ({event})")


_guard = _Guard()


def refused_during_startup() -> list[str]:
    """The process-creating events refused so far (for tests and diagnostics)."""
    return list(_guard.refused)


@contextmanager
def no_processes() -> Iterator[None]:
    """Refuse to create processes while the block runs (an audit hook; installed once, inert afterwards)."""
    with _guard.lock:
        if not _guard.installed:
            sys.addaudithook(_guard.hook)
            _guard.installed = True
        _guard.active += 1
    try:
        yield
    finally:
        with _guard.lock:
            _guard.active -= 1
