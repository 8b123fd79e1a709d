"""The controller rule (ARCHITECTURE §3, issue 12): a kernel obeys only the gateway that launched it.

The attack these tests replay: the kernel image is genuine and runs arbitrary code, so a host that launches it
itself — under its own gateway key, with a session of its own — owns an *attestation oracle*: code in a genuine,
pinned enclave that can ask the TEE for evidence over any report_data (on the simulated TEE, as under a LibOS,
in-enclave code reaches the raw evidence function). With it the host answers another gateway's nonce with its
own key. The defences: the platform binds the launching gateway's controller hash into every evidence (the sim
backend's SGX CONFIGID), the gateway checks it (check ``controller``); the boot opens only a bundle its
controller signed; user code's ``teelab.session.attest`` is domain-separated.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager
from traitlets.config import Config

from teelab.errors import AttestationFailed
from teelab.gateway.identity import GatewayIdentity
from teelab.kernel.provisioner import TeeProvisioner
from teelab.protocols.session import (
    Hello,
    SealedBundle,
    SessionBundle,
    decode_body,
    encode_frame,
    seal_bundle,
    session_report_data,
    sign_bundle,
)

from .conftest import KERNEL, KernelEnv
from .evil_host import EvilHostBackend
from .test_kernel_manager import run

pytestmark = pytest.mark.evil_host


@pytest.fixture
def evil(monkeypatch: pytest.MonkeyPatch) -> EvilHostBackend:
    backend = EvilHostBackend()
    monkeypatch.setattr(TeeProvisioner, "_backend", lambda self: backend)
    return backend


@pytest.fixture
def host_kernel(
    kernel_env: KernelEnv, evil: EvilHostBackend, tmp_path: Path
) -> Iterator[BlockingKernelClient]:
    """The genuine kernel image, launched by the host itself under its own gateway key: the oracle."""
    config = Config({"TeeProvisioner": {"identity_file": str(tmp_path / "host-gateway.pem")}})
    km = KernelManager(kernel_name=KERNEL, config=config)
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    yield kc
    kc.stop_channels()
    km.shutdown_kernel(now=True)


def _raw_evidence(kc: BlockingKernelClient, report_data: bytes) -> dict[str, object]:
    """Evidence over any report_data, from code the host runs inside its own genuine kernel."""
    code = (
        "from teelab.enclave_runtime.runtime import current_runtime\n"
        f"import json; print(json.dumps(current_runtime().evidence(bytes.fromhex('{report_data.hex()}')).to_json()))"
    )
    content, out = run(kc, code)
    assert content["status"] == "ok", out
    evidence: dict[str, object] = json.loads(out)
    return evidence


def _raw_key(secret: X25519PrivateKey) -> bytes:
    return secret.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def test_an_oracle_kernel_under_the_hosts_controller_is_refused_by_another_gateway(
    kernel_env: KernelEnv, evil: EvilHostBackend, host_kernel: BlockingKernelClient
) -> None:
    host_secret = X25519PrivateKey.generate()

    def oracle_hello(victims_nonce: bytes) -> bytes:
        report_data = session_report_data(_raw_key(host_secret), victims_nonce)
        return encode_frame(Hello(_raw_key(host_secret), _raw_evidence(host_kernel, report_data)))

    evil.forge_hello = oracle_hello
    victim = KernelManager(kernel_name=KERNEL)
    with pytest.raises(AttestationFailed) as refused:
        victim.start_kernel()
    assert refused.value.check == "controller"
    # Everything else about the oracle's evidence passes the victim's fully pinned policy: the controller check
    # is what stops it.
    result = victim.provisioner.result  # type: ignore[union-attr]
    assert result is not None and [check.name for check in result.failed_checks] == ["controller"]
    assert evil.launched[-1].poll() is not None  # the process that answered was killed
    victim_controller = GatewayIdentity.load_or_create().controller
    assert evil.controllers[-1] == victim_controller  # the launch was bound to the victim's controller
    proxy = evil.proxies[-1]
    assert proxy.gateway_done.wait(10)
    answers = [decode_body(frame[4:]) for frame in proxy.frames_to("to-tee")]
    assert answers == [{"type": "refused", "reason": "controller"}]  # nothing of a bundle reached the host


def _host_made_bundle(hello_frame: bytes, nonce: bytes, signer: Ed25519PrivateKey) -> bytes:
    """A session bundle of the host's own keys, sealed to the victim kernel's attested E.pub."""
    enclave_key = Hello.from_json(decode_body(hello_frame[4:])).enclave_key
    bundle = SessionBundle(
        session_id=str(uuid.uuid4()),
        kernel_id=None,
        ip="127.0.0.1",
        ports=(41001, 41002, 41003, 41004, 41005),
        key=b"00" * 32,
        signature_scheme="hmac-sha256",
        curve_publickey=b"P" * 40,
        curve_secretkey=b"S" * 40,
        attestation={"verdict": "affirming"},
    )
    sealed = seal_bundle(enclave_key, nonce, bundle)
    return encode_frame(SealedBundle(sealed, sign_bundle(signer, sealed, nonce, enclave_key)))


@pytest.mark.parametrize(
    "bundle", ["host-made, signed by the host's key", "genuine, re-signed by the host", "unsigned"]
)
def test_the_boot_refuses_a_bundle_its_controller_did_not_authenticate_and_exits(
    kernel_env: KernelEnv, evil: EvilHostBackend, bundle: str
) -> None:
    host_key = Ed25519PrivateKey.generate()

    def forge(hello_frame: bytes, nonce: bytes, genuine_frame: bytes) -> bytes:
        if bundle.startswith("host-made"):
            return _host_made_bundle(hello_frame, nonce, host_key)
        enclave_key = Hello.from_json(decode_body(hello_frame[4:])).enclave_key
        genuine = SealedBundle.from_json(decode_body(genuine_frame[4:]))
        signature = (
            sign_bundle(host_key, genuine.sealed, nonce, enclave_key) if "re-signed" in bundle else bytes(64)
        )
        return encode_frame(SealedBundle(genuine.sealed, signature))

    evil.forge_bundle = forge
    km = KernelManager(kernel_name=KERNEL)
    with pytest.raises(AttestationFailed) as refused:
        km.start_kernel()
    assert refused.value.check in ("boot", "handshake")
    said = "".join(km.provisioner.host_output)  # type: ignore[union-attr]
    assert "teelab boot: the session bundle was not authenticated by this kernel's controller" in said
    assert evil.launched[-1].returncode == 1  # the boot exited by itself, before the gateway killed it


def test_user_code_attest_cannot_serve_as_a_session_oracle(
    kernel_env: KernelEnv, evil: EvilHostBackend
) -> None:
    from teelab.enclave_runtime.backend import Evidence
    from teelab.gateway.policy import load_policy
    from teelab.gateway.session import appraiser
    from teelab.session import user_report_data

    km = KernelManager(kernel_name=KERNEL)
    km.start_kernel()
    try:
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        enclave_key, nonce = bytes(range(32)), bytes(32)
        # The preimage of a session's report_data, handed to attest() as user data.
        chosen = b"teelab/session/v1" + enclave_key + nonce
        content, out = run(
            kc,
            "import json, teelab.session as s\n"
            f"print(json.dumps(s.attest(bytes.fromhex('{chosen.hex()}')).to_json()))\n"
            "print(sorted(n for n in dir(s) if any(w in n.lower() for w in ('runtime', 'evidence', 'release'))))",
        )
        kc.stop_channels()
    finally:
        km.shutdown_kernel(now=True)
    assert content["status"] == "ok", out
    evidence_json, exposed = out.splitlines()
    assert (
        exposed == "[]"
    )  # no raw evidence function (or key-release capability) among teelab.session's names
    evidence = Evidence.from_json(json.loads(evidence_json))
    controller = GatewayIdentity.load_or_create().controller
    appraise = appraiser(evil, load_policy(kernel_env.policy), controller=controller)
    as_session = appraise(evidence, session_report_data(enclave_key, nonce))
    assert [check.name for check in as_session.failed_checks] == ["policy.expected_report_data"]
    as_user = appraise(evidence, user_report_data(chosen))
    assert as_user.ok  # genuine evidence of this kernel, under its controller, over the user-domain digest
    assert user_report_data(chosen) == hashlib.sha512(b"teelab/user/v1" + chosen).digest()


def test_the_boot_refuses_a_boot_request_naming_another_controller_than_its_platform() -> None:
    """A host launching the image bound to a victim's controller while naming its own key in the boot request."""
    from teelab.kernel.boot import _check_launch_controller
    from teelab.protocols.session import BootRequest, HandshakeError, controller_hash

    victim, host = bytes(range(32)), bytes(range(1, 33))

    class Runtime:
        def __init__(self, bound: bytes) -> None:
            self.bound = bound

        def controller(self) -> bytes:
            return self.bound

    request = BootRequest(nonce=bytes(32), host="127.0.0.1", port=1, controller_key=host)
    with pytest.raises(HandshakeError, match="another controller than the platform's"):
        _check_launch_controller(Runtime(controller_hash(victim)), request, env={})  # type: ignore[arg-type]
    _check_launch_controller(Runtime(controller_hash(host)), request, env={})  # type: ignore[arg-type]
    _check_launch_controller(Runtime(bytes(32)), request, env={})  # type: ignore[arg-type]  # none bound
    # An image that pins its controller in the measured environment ("measurement" binding).
    pinned = {"TEELAB_CONTROLLER": controller_hash(victim).hex()}
    with pytest.raises(HandshakeError, match="another controller than the measured image"):
        _check_launch_controller(Runtime(bytes(32)), request, env=pinned)  # type: ignore[arg-type]
    _check_launch_controller(
        Runtime(bytes(32)), request, env={"TEELAB_CONTROLLER": controller_hash(host).hex()}
    )  # type: ignore[arg-type]


def test_the_gateway_identity_is_made_once_private_and_names_its_controller(tmp_path: Path) -> None:
    from teelab.errors import ConfigError

    path = tmp_path / "gateway" / "identity.pem"
    first = GatewayIdentity.load_or_create(path)
    assert path.stat().st_mode & 0o777 == 0o600
    again = GatewayIdentity.load_or_create(path)
    assert again.public == first.public and len(first.public) == 32
    assert first.controller == hashlib.sha256(first.public).digest()
    assert GatewayIdentity.load_or_create(tmp_path / "other.pem").controller != first.controller
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by other users"):
        GatewayIdentity.load_or_create(path)
    path.chmod(0o600)
    path.write_bytes(b"not a key")
    with pytest.raises(ConfigError, match="not a PEM private key"):
        GatewayIdentity.load_or_create(path)
