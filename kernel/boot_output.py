"""What the kernel boot writes to stdout/stderr: exactly what the host sees, kept to explain a failed start."""

from __future__ import annotations

import collections
import threading

from teelab.enclave_runtime.backend import EnclaveProcess


class BootOutput(collections.deque[str]):
    """The last lines of the TEE process's output, read by a thread as they come."""

    def __init__(self, maxlen: int = 200) -> None:
        super().__init__(maxlen=maxlen)
        self._pump: threading.Thread | None = None

    def follow(self, process: EnclaveProcess) -> None:
        stream = process.popen.stdout
        if stream is None:
            return

        def pump() -> None:
            for line in iter(stream.readline, b""):
                self.append(line.decode("utf-8", "replace"))

        self._pump = threading.Thread(target=pump, name="teelab-boot-output", daemon=True)
        self._pump.start()

    def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the process's last words (blocking: call it off the event loop)."""
        if self._pump is not None:
            self._pump.join(timeout)

    def last_line(self) -> str:
        tail = "".join(self).strip()
        return tail.splitlines()[-1][:300] if tail else ""
