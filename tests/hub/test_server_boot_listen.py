"""A pod's listening boot against everyone on the pod network (extension/hub/boot_listener.py, server_boot.py).

The real ``server_boot.listen_for_spawner`` runs in a thread of this process on a loopback port — its bundle is
applied to this test's copy of the environment, folder and token holder — and real sockets play the peers:
silent ones, dribbling ones, garbage, an unsigned ``refused``, a bundle another key signed, one address
filling the connection bounds, and the spawner (``G_s``'s key, following ``teelab/hub-server/v1``). Timeouts
are injected (``ListenLimits``) instead of waiting for the defaults.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from teelab.extension.hub import server_token
from teelab.extension.hub import spawner_protocol as protocol
from teelab.extension.hub.boot_listener import ListenLimits, NoSpawner
from teelab.extension.hub.demo import free_port
from teelab.extension.hub.server_boot import ServerKeys, listen_for_spawner
from teelab.extension.hub.spawner_protocol import ServerBootRequest, ServerBundle, ServerHello, ServerSecrets
from teelab.gateway.identity import GatewayIdentity
from teelab.protocols.session import (
    MAX_FRAME,
    Ready,
    Refused,
    SealedBundle,
    decode_one_of,
    encode_frame,
    recv_frame,
    send_frame,
)

HUB_TOKEN = "t0k-of-the-pod"
WAIT = 30.0  # how long a peer waits for the boot to answer or close (a bound for a hung test, never reached)


@dataclass
class Boot:
    """The listening boot in a thread, and what it ended with."""

    request: ServerBootRequest
    spawner: GatewayIdentity
    home: Path
    limits: ListenLimits
    keys: ServerKeys = field(default_factory=ServerKeys)
    outcome: list[ServerBundle | BaseException] = field(default_factory=list)
    thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.request.respond_to[1])

    def start(self) -> None:
        hello = ServerHello(self.keys.enclave_key, self.keys.tls_spki, {"kind": "sim", "quote": "public"})

        def run() -> None:
            try:
                self.outcome.append(listen_for_spawner(self.request, self.keys, hello, limits=self.limits))
            except BaseException as error:  # the test reads whatever ended the boot
                self.outcome.append(error)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def end(self) -> ServerBundle | BaseException:
        assert self.thread is not None
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the boot did not end"
        return self.outcome[0]

    def connect(self, source: str = "127.0.0.1") -> socket.socket:
        deadline = time.monotonic() + WAIT
        while True:
            try:
                return socket.create_connection(
                    ("127.0.0.1", self.port), timeout=WAIT, source_address=(source, 0)
                )
            except ConnectionRefusedError:
                assert time.monotonic() < deadline and self.running(), "the boot never listened"
                time.sleep(0.05)

    def bundle_from(self, signer: GatewayIdentity, hello: ServerHello, confirm_key: bytes) -> SealedBundle:
        bundle = ServerBundle(
            "alice/", {"JUPYTERHUB_USER": "alice"}, (), str(self.home), confirm_key, ServerSecrets(HUB_TOKEN)
        )
        sealed = protocol.seal(hello.enclave_key, self.request.nonce, bundle)
        return SealedBundle(
            sealed, protocol.sign(signer.secret, sealed, self.request.nonce, hello.enclave_key)
        )

    def spawn(self, source: str = "127.0.0.1") -> None:
        """The spawner's side: hello in, the bundle G_s signed out, the boot's confirmation checked."""
        confirm_key = os.urandom(32)
        with self.connect(source) as channel:
            hello = ServerHello.from_json(recv_frame(channel))
            assert hello.enclave_key == self.keys.enclave_key
            send_frame(channel, self.bundle_from(self.spawner, hello, confirm_key))
            ready = decode_one_of(recv_frame(channel), Ready)
            assert isinstance(ready, Ready)
            assert protocol.check_ready(confirm_key, self.request.nonce, hello.enclave_key, ready.confirm)

    def succeeded(self) -> ServerBundle:
        outcome = self.end()
        assert isinstance(outcome, ServerBundle), outcome
        assert server_token.hub_token() == HUB_TOKEN and os.environ["JUPYTERHUB_USER"] == "alice"
        return outcome


@pytest.fixture
def boot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Boot:
    """A listening boot's request and keys; the bundle it applies lands in this test's copies."""
    scratch, home = tmp_path / "tee-tmp", tmp_path / "home"
    scratch.mkdir()
    home.mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(os, "environ", {**os.environ, "TMPDIR": str(scratch)})
    monkeypatch.setattr(server_token, "_held", [])
    spawner = GatewayIdentity.generate()
    request = ServerBootRequest(
        os.urandom(32),
        ("127.0.0.1", free_port()),
        spawner.public,
        "alice/",
        ("127.0.0.1", free_port()),
        listen=True,
    )
    return Boot(request, spawner, home, ListenLimits())


def closed_by_boot(channel: socket.socket) -> bool:
    """True once the boot closed this connection (everything it sent read, then end of stream)."""
    channel.settimeout(WAIT)
    try:
        while channel.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


def test_a_silent_connection_held_open_does_not_stop_the_spawner(boot: Boot) -> None:
    boot.start()
    silent = [boot.connect() for _ in range(5)]  # never read the hello, never send a byte
    try:
        boot.spawn()
        boot.succeeded()
    finally:
        for channel in silent:
            channel.close()


def _raw(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def _garbage(index: int) -> bytes:
    """Ten kinds of what a scanner or a stranger sends instead of a bundle."""
    kinds = [
        b"",  # connect and hang up
        b"GET / HTTP/1.1\r\nHost: pod\r\n\r\n",
        struct.pack(">I", MAX_FRAME + 1),  # a frame announcing more than the limit
        struct.pack(">I", 0xFFFFFFFF) + b"x" * 100,
        struct.pack(">I", 100) + b"{",  # half a frame, then hang up
        _raw(b"\xff\xfe\x00"),  # not UTF-8
        encode_frame(Ready(os.urandom(32))),  # a message of another type
        _raw(b"[]"),  # JSON, not an object
        _raw(b'{"type": "bundle", "sealed": "!!!", "signature": 7}'),  # a malformed bundle
        os.urandom(200),
    ]
    return kinds[index % len(kinds)]


def test_fifty_garbage_connections_then_the_spawner_succeeds(
    boot: Boot, capsys: pytest.CaptureFixture[str]
) -> None:
    boot.start()
    for index in range(50):
        with boot.connect() as channel:
            channel.sendall(_garbage(index))
            channel.shutdown(socket.SHUT_WR)
            assert closed_by_boot(channel)
        assert boot.running()
    boot.spawn()
    boot.succeeded()
    assert "50 connection(s) were not the spawner's (garbage 50," in capsys.readouterr().err


def test_an_unsigned_refused_from_a_stranger_does_not_end_the_boot(boot: Boot) -> None:
    boot.start()
    with boot.connect() as channel:
        ServerHello.from_json(recv_frame(channel))
        send_frame(channel, Refused("policy"))
        assert closed_by_boot(channel)
    assert boot.running()
    boot.spawn()
    boot.succeeded()


def test_a_bundle_another_key_signed_closes_that_connection_only(boot: Boot) -> None:
    boot.start()
    with boot.connect() as channel:
        hello = ServerHello.from_json(recv_frame(channel))
        send_frame(channel, boot.bundle_from(GatewayIdentity.generate(), hello, os.urandom(32)))
        assert closed_by_boot(channel)
    assert boot.running() and not server_token.held()  # nothing of the stranger's was applied
    boot.spawn()
    boot.succeeded()


def test_silent_and_dribbling_peers_are_closed_at_their_first_frame_deadline(boot: Boot) -> None:
    boot.limits = ListenLimits(first_frame=0.3)
    boot.start()
    with boot.connect() as silent, boot.connect() as dribbling:
        dribbling.setblocking(False)
        frame = encode_frame(Refused("x" * 400))
        sent = 0
        while True:  # one byte at a time: the deadline is for the whole frame, not for each byte
            try:
                dribbling.send(frame[sent : sent + 1])
                if dribbling.recv(65536) == b"":
                    break
            except BlockingIOError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1
            assert sent < len(frame), "the boot waited for the whole dribbled frame"
            time.sleep(0.01)
        assert closed_by_boot(silent)
        assert boot.running()
    boot.spawn()
    boot.succeeded()


def test_one_address_cannot_fill_the_connection_bounds(boot: Boot) -> None:
    """Two stranger addresses fill every slot; a third connection from one of them is turned away, and the
    spawner's single connection from its own address evicts a stranger's instead of being refused."""
    boot.limits = ListenLimits(max_connections=6, max_per_peer=3)
    boot.start()
    strangers = [boot.connect(source) for source in ("127.0.0.2", "127.0.0.3") for _ in range(3)]
    try:
        for channel in strangers:
            ServerHello.from_json(recv_frame(channel))  # each was admitted and got the public hello
        with boot.connect("127.0.0.2") as fourth:
            assert closed_by_boot(fourth)  # over its address's bound
        boot.spawn("127.0.0.1")
        boot.succeeded()
    finally:
        for channel in strangers:
            channel.close()


def test_the_boot_exits_after_its_overall_deadline_when_no_valid_spawner_comes(boot: Boot) -> None:
    boot.limits = ListenLimits(overall=3.0, first_frame=0.3)
    boot.start()
    with boot.connect() as silent:
        with boot.connect() as refusing:
            ServerHello.from_json(recv_frame(refusing))
            send_frame(refusing, Refused("policy"))
            assert closed_by_boot(refusing)
        outcome = boot.end()
        assert closed_by_boot(silent)
    assert isinstance(outcome, NoSpawner), outcome
    assert outcome.message.startswith(
        "no spawner brought a bundle signed by this server's controller within 3 s; 2 connection(s) were not "
        "the spawner's (garbage 0, unsigned refusals 1, bundles not signed by the controller 0, silent past "
        "the first-frame deadline 1,"
    ), outcome.message
    assert not server_token.held()
    with pytest.raises(ConnectionRefusedError):  # nothing listens any more
        socket.create_connection(("127.0.0.1", boot.port), timeout=WAIT).close()
