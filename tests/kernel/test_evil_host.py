"""Evil-host tests: the host of the simulated TEE tries to read or inject, using only what the launcher
process could see (its argv, environment, files, the nonce, public keys, evidence and the handshake bytes).

These run on the simulated backend: they test the protocol and the kernel's socket authentication at the
OS boundary. The simulation cannot test what hardware isolation adds (the host reading enclave memory);
docs/sim-backend.md says what the simulation can and cannot protect.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager
from jupyter_client.session import Session
from traitlets.config import Config
from zmq.utils.monitor import recv_monitor_message

from teelab.errors import AttestationFailed
from teelab.gateway.identity import GatewayIdentity, default_identity_file
from teelab.kernel.provisioner import TeeProvisioner

from .conftest import KERNEL, KernelEnv, write_policy
from .evil_host import EvilHostBackend
from .test_kernel_manager import run

pytestmark = pytest.mark.evil_host


@pytest.fixture
def evil(monkeypatch: pytest.MonkeyPatch) -> EvilHostBackend:
    backend = EvilHostBackend()
    monkeypatch.setattr(TeeProvisioner, "_backend", lambda self: backend)
    return backend


@pytest.fixture
def session(
    kernel_env: KernelEnv, evil: EvilHostBackend
) -> Iterator[tuple[KernelManager, BlockingKernelClient]]:
    km = KernelManager(kernel_name=KERNEL)
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    yield km, kc
    kc.stop_channels()
    km.shutdown_kernel(now=True)


def _handshake_outcome(
    context: zmq.Context[zmq.Socket[bytes]],
    kind: int,
    url: str,
    keys: tuple[bytes, bytes] | None,
    server: bytes,
) -> tuple[zmq.Socket[bytes], str]:
    sock = context.socket(kind)
    sock.linger = 0
    if keys is not None:
        sock.curve_publickey, sock.curve_secretkey = keys
        sock.curve_serverkey = server
    monitor = sock.get_monitor_socket()
    sock.connect(url)
    deadline = time.monotonic() + 5
    outcome = "no handshake"
    while time.monotonic() < deadline:
        if monitor.poll(100):
            event = recv_monitor_message(monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                outcome = "succeeded"
                break
            if event in (
                zmq.EVENT_HANDSHAKE_FAILED_AUTH,
                zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
            ):
                outcome = "failed"
                break
    sock.disable_monitor()
    monitor.close(0)
    return sock, outcome


@pytest.mark.parametrize("channel", ["shell", "control", "stdin", "iopub"])
def test_a_client_without_the_provisioned_key_cannot_connect(
    session: tuple[KernelManager, BlockingKernelClient], channel: str
) -> None:
    km, kc = session
    assert km.curve_publickey is not None and km.curve_secretkey is not None
    url = f"tcp://127.0.0.1:{getattr(km, f'{channel}_port')}"
    kind = {"shell": zmq.DEALER, "control": zmq.DEALER, "stdin": zmq.DEALER, "iopub": zmq.SUB}[channel]
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        # Control experiment: the gateway's own keys complete the handshake on the same port.
        legit, outcome = _handshake_outcome(
            context, kind, url, (km.curve_publickey, km.curve_secretkey), km.curve_publickey
        )
        legit.close(0)
        assert outcome == "succeeded"
        stranger, outcome = _handshake_outcome(context, kind, url, zmq.curve_keypair(), km.curve_publickey)
        assert outcome == "failed"
        plaintext, plain_outcome = _handshake_outcome(context, kind, url, None, km.curve_publickey)
        assert plain_outcome != "succeeded"
        if channel == "iopub":
            for sub in (stranger, plaintext):
                sub.setsockopt(zmq.SUBSCRIBE, b"")
            assert run(kc, "print('for the gateway only')")[1] == "for the gateway only\n"
            time.sleep(0.5)
            for sub in (stranger, plaintext):
                assert sub.poll(200) == 0, "an unauthenticated subscriber received kernel output"
        else:
            # Even with a validly signed request (as if the HMAC key had leaked), nothing answers.
            signer = Session(key=km.session.key)
            for sock in (stranger, plaintext):
                sock.sndtimeo = 500  # with no completed handshake there is no peer to queue for
                try:
                    signer.send(sock, "kernel_info_request" if channel != "stdin" else "input_reply", {})
                except zmq.Again:
                    pass
                assert sock.poll(1000) == 0, f"the kernel answered an unauthenticated client on {channel}"
        stranger.close(0)
        plaintext.close(0)
    finally:
        context.term()


def _process_tree(pid: int) -> list[int]:
    children = {pid}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if parent in children:
                children.add(int(entry.name))
    return sorted(children)


def test_secrets_appear_nowhere_the_host_can_read(
    session: tuple[KernelManager, BlockingKernelClient], evil: EvilHostBackend, kernel_env: KernelEnv
) -> None:
    km, kc = session
    hmac_key = km.session.key
    curve_secret = km.curve_secretkey
    assert curve_secret is not None
    run(kc, "print('TOP-SECRET-OUTPUT-7f3a'); import os; os.system('echo TOP-SECRET-FD-OUTPUT-9c1d')")
    identity = GatewayIdentity.load_or_create().secret.private_bytes_raw()  # the gateway's G, in the data dir
    secrets = [hmac_key, curve_secret, b"TOP-SECRET-OUTPUT-7f3a", b"TOP-SECRET-FD-OUTPUT-9c1d", identity]
    secrets += [identity.hex().encode(), base64.b64encode(identity)]
    process = km.provisioner.process  # type: ignore[union-attr]
    assert process is not None and process.scratch is not None

    seen: dict[str, bytes] = {}
    for pid in _process_tree(process.pid):
        for name in ("cmdline", "environ"):
            seen[f"/proc/{pid}/{name}"] = Path(f"/proc/{pid}/{name}").read_bytes()
    for root in (process.scratch, kernel_env.data):
        for path in Path(root).rglob("*"):
            if path.is_file() and path != default_identity_file():  # G's own file is in the user's domain
                seen[str(path)] = path.read_bytes()
    for direction in ("to-tee", "to-gateway"):
        seen[f"handshake {direction}"] = b"".join(evil.proxies[-1].frames_to(direction))
    seen["TEE stdout/stderr"] = "".join(km.provisioner.host_output).encode()  # type: ignore[union-attr]
    assert len(seen) > 20 and seen["handshake to-tee"] and seen["handshake to-gateway"]
    for where, content in seen.items():
        for secret in secrets:
            assert secret not in content, f"{secret[:12]!r}… is visible to the host in {where}"


def test_replayed_evidence_is_refused_for_a_new_nonce(kernel_env: KernelEnv, evil: EvilHostBackend) -> None:
    km = KernelManager(kernel_name=KERNEL)
    km.start_kernel()  # an honest session, recorded by the host
    recorded_hello = evil.proxies[-1].frames_to("to-gateway")[0]
    km.shutdown_kernel(now=True)

    evil.replay_hello = recorded_hello
    replay = KernelManager(kernel_name=KERNEL)
    with pytest.raises(AttestationFailed) as refused:
        replay.start_kernel()
    assert refused.value.check == "policy.expected_report_data"
    assert "report_data" in refused.value.detail
    assert evil.launched[-1].poll() is not None  # the launched process was killed


def test_a_replayed_session_bundle_does_not_start_a_kernel(
    kernel_env: KernelEnv, evil: EvilHostBackend
) -> None:
    km = KernelManager(kernel_name=KERNEL)
    km.start_kernel()
    old_bundle = next(f for f in evil.proxies[-1].frames_to("to-tee") if b'"bundle"' in f)
    km.shutdown_kernel(now=True)

    evil.replacement_bundle = old_bundle
    second = KernelManager(kernel_name=KERNEL)
    with pytest.raises(AttestationFailed) as refused:
        second.start_kernel()
    assert refused.value.check in ("boot", "handshake")
    assert "does not open with this enclave's key" in "".join(second.provisioner.host_output)  # type: ignore[union-attr]
    assert evil.launched[-1].poll() is not None


def test_evidence_with_the_wrong_measurement_is_refused_and_the_process_killed(
    kernel_env: KernelEnv, evil: EvilHostBackend
) -> None:
    policy = write_policy(
        kernel_env, "wrong-measurement", f'allow_simulation = true\n[sgx]\nmrenclave = ["{"ab" * 32}"]\n'
    )
    km = KernelManager(kernel_name=KERNEL, config=Config({"TeeProvisioner": {"policy_file": str(policy)}}))
    with pytest.raises(AttestationFailed) as refused:
        km.start_kernel()
    assert refused.value.check == "policy.mrenclave"
    assert kernel_env.mrenclave[:8] in refused.value.detail
    assert evil.launched[-1].poll() is not None


def test_a_debug_enclave_is_refused_and_the_process_killed(
    kernel_env: KernelEnv, evil: EvilHostBackend, tmp_path: Path
) -> None:
    from teelab.enclave_runtime.images import kernel_image_spec

    image = evil.build(kernel_image_spec(), out=tmp_path / "debug-image", debug=True)
    assert image.sigstruct.debug
    policy = write_policy(kernel_env, "sim-no-debug", "allow_simulation = true\n")
    config = Config({"TeeProvisioner": {"policy_file": str(policy), "image_path": str(image.path)}})
    km = KernelManager(kernel_name=KERNEL, config=config)
    with pytest.raises(AttestationFailed) as refused:
        km.start_kernel()
    assert refused.value.check == "policy.debug"
    assert evil.launched[-1].poll() is not None
    assert not os.path.exists(km.connection_file)  # the refused session's keys are gone
