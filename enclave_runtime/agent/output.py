"""What a hosted kernel writes to stdout/stderr: read as it comes (the pipe must never fill and stall the
kernel), the last lines kept for the gateway's error messages. This is what the host sees anyway; nothing the
TEE keeps secret is written there."""

from __future__ import annotations

import collections
import threading
from typing import IO

TAIL_LINES = 50
TAIL_BYTES = 4096


class OutputTail:
    def __init__(self, lines: int = TAIL_LINES) -> None:
        self._lines: collections.deque[str] = collections.deque(maxlen=lines)

    def follow(self, stream: IO[bytes] | None) -> None:
        if stream is None:
            return

        def pump() -> None:
            with stream:
                for line in iter(stream.readline, b""):
                    self._lines.append(line.decode("utf-8", "replace"))

        threading.Thread(target=pump, name="teelab-agent-kernel-output", daemon=True).start()

    def text(self) -> str:
        """The last lines, at most TAIL_BYTES characters of them."""
        return "".join(list(self._lines))[-TAIL_BYTES:]
