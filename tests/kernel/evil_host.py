"""The untrusted TEE host, played by tests: it controls what the launcher passes in and every byte on the
handshake channel, and can read every file and process attribute it can reach — but nothing else."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from teelab.enclave_runtime.backend import EnclaveProcess
from teelab.enclave_runtime.image import EnclaveImage
from teelab.enclave_runtime.sim.backend import SimBackend


def read_frame(sock: socket.socket) -> bytes | None:
    """The next length-prefixed frame; None when the peer closed (or reset) the connection."""
    try:
        return _read_frame(sock)
    except OSError:  # the kernel refused the swapped bundle and reset the connection: the end of the stream
        return None


def _read_frame(sock: socket.socket) -> bytes | None:
    header = b""
    while len(header) < 4:
        chunk = sock.recv(4 - len(header))
        if not chunk:
            return None
        header += chunk
    (length,) = struct.unpack(">I", header)
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            return None
        body += chunk
    return header + body


@dataclass
class HandshakeProxy:
    """Sits between the kernel boot and the gateway, records every frame, optionally swaps the bundle."""

    target: tuple[str, int]
    replacement_bundle: bytes | None = None
    forge: Callable[[bytes, bytes], bytes] | None = (
        None  # (the hello frame, the genuine bundle frame) -> frame
    )
    frames: list[tuple[str, bytes]] = field(default_factory=list)
    gateway_done: threading.Event = field(default_factory=threading.Event)  # the gateway closed its side

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        boot, _ = self.listener.accept()
        gateway = socket.create_connection(self.target)

        def pump(source: socket.socket, sink: socket.socket, direction: str) -> None:
            while (frame := read_frame(source)) is not None:
                self.frames.append((direction, frame))
                if direction == "to-tee" and self.replacement_bundle is not None and b'"bundle"' in frame:
                    frame = self.replacement_bundle
                if direction == "to-tee" and self.forge is not None and b'"bundle"' in frame:
                    frame = self.forge(self.frames_to("to-gateway")[0], frame)
                try:
                    sink.sendall(frame)
                except OSError:
                    break
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            if direction == "to-tee":
                self.gateway_done.set()

        threading.Thread(target=pump, args=(gateway, boot, "to-tee"), daemon=True).start()
        pump(boot, gateway, "to-gateway")

    def frames_to(self, direction: str) -> list[bytes]:
        return [frame for d, frame in self.frames if d == direction]


REPLAY_HELLO = """
import json, os, socket, struct, sys
request = json.loads(os.environ["TEELAB_BOOT_REQUEST"])
host, _, port = request["respond_to"].rpartition(":")
with socket.create_connection((host, int(port))) as s:
    s.sendall(bytes.fromhex(sys.argv[1]))
    s.recv(1 << 20)
"""


class EvilHostBackend(SimBackend):
    """A simulated backend whose host meddles: proxies the handshake, replays an old hello, answers with a hello
    of its own making (``forge_hello(nonce)``: an attestation oracle's), or swaps in a bundle of its own making
    (``forge_bundle(hello frame, nonce, genuine bundle frame)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.proxies: list[HandshakeProxy] = []
        self.replacement_bundle: bytes | None = None
        self.replay_hello: bytes | None = None
        self.forge_hello: Callable[[bytes], bytes] | None = None
        self.forge_bundle: Callable[[bytes, bytes, bytes], bytes] | None = None
        self.launched: list[EnclaveProcess] = []
        self.controllers: list[bytes | None] = []

    def launch(
        self,
        image: EnclaveImage,
        *,
        inputs: Mapping[str, str],
        controller: bytes | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
    ) -> EnclaveProcess:
        request = json.loads(inputs["TEELAB_BOOT_REQUEST"])
        self.controllers.append(controller)
        if self.forge_hello is not None:
            hello = self.forge_hello(bytes.fromhex(request["nonce"]))
            host, _, port = request["respond_to"].rpartition(":")
            proxy = HandshakeProxy((host, int(port)))  # records what the gateway answers the forged hello
            self.proxies.append(proxy)
            request["respond_to"] = f"{proxy.address[0]}:{proxy.address[1]}"
            popen = subprocess.Popen(
                [sys.executable, "-c", REPLAY_HELLO, hello.hex()],
                env={"TEELAB_BOOT_REQUEST": json.dumps(request), "PATH": "/usr/bin:/bin"},
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )
            process = EnclaveProcess(popen)
        elif self.replay_hello is not None:
            popen = subprocess.Popen(
                [sys.executable, "-c", REPLAY_HELLO, self.replay_hello.hex()],
                env={"TEELAB_BOOT_REQUEST": inputs["TEELAB_BOOT_REQUEST"], "PATH": "/usr/bin:/bin"},
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )
            process = EnclaveProcess(popen)
        else:
            host, _, port = request["respond_to"].rpartition(":")
            forge = self.forge_bundle
            nonce = bytes.fromhex(request["nonce"])
            proxy = HandshakeProxy(
                (host, int(port)),
                self.replacement_bundle,
                forge=(lambda hello, bundle: forge(hello, nonce, bundle)) if forge is not None else None,
            )
            self.proxies.append(proxy)
            request["respond_to"] = f"{proxy.address[0]}:{proxy.address[1]}"
            process = super().launch(
                image,
                inputs={"TEELAB_BOOT_REQUEST": json.dumps(request)},
                controller=controller,
                stdout=stdout,
                stderr=stderr,
            )
        self.launched.append(process)
        return process


@dataclass
class RecordingTcpProxy:
    """Forwards one TCP service through the host and keeps every byte that passes, both ways."""

    target: tuple[str, int]
    seen: bytearray = field(default_factory=bytearray)

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                chunk = source.recv(65536)
            except OSError:
                return
            if not chunk:
                sink.close()
                return
            self.seen.extend(chunk)
            try:
                sink.sendall(chunk)
            except OSError:
                return
