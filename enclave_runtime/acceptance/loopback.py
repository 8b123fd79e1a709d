"""Capturing the host's loopback interface: what a host (or anyone with CAP_NET_RAW) sees of local traffic.

Under a LibOS the enclave's sockets are the host's, so anything a kernel sends to ``127.0.0.1`` in plaintext is
readable here. A raw ``AF_PACKET`` socket bound to ``lo`` records every frame; it needs CAP_NET_RAW.
"""

from __future__ import annotations

import socket
import threading
import time

ETH_P_ALL = 0x0003


class LoopbackCapture:
    """Every frame on the host's loopback interface while it runs (a raw AF_PACKET socket)."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self._sock.bind(("lo", 0))
        self._sock.settimeout(0.1)
        self._frames: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loopback-capture", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._frames.append(self._sock.recv(1 << 17))
            except TimeoutError:
                continue

    def stop(self) -> bytes:
        """Stop (once) and return every frame captured, joined."""
        if not self._stop.is_set():
            time.sleep(0.3)  # let frames already on the wire reach the socket before it closes
            self._stop.set()
            self._thread.join()
            self._sock.close()
        return b"\n".join(self._frames)


def capture_works() -> bool:
    """Control experiment: a capture sees plaintext sent over the loopback (False: it cannot be trusted)."""
    capture = LoopbackCapture()
    canary = b"LOOPBACK-CANARY-" + str(time.monotonic_ns()).encode()
    with socket.create_server(("127.0.0.1", 0)) as server:
        with socket.create_connection(server.getsockname()) as client:
            peer, _ = server.accept()
            with peer:
                client.sendall(canary)
                peer.recv(len(canary))
    return canary in capture.stop()


def open_capture() -> LoopbackCapture | None:
    """A running capture whose control experiment passed; None without CAP_NET_RAW."""
    try:
        if not capture_works():
            return None
        return LoopbackCapture()
    except PermissionError:
        return None
