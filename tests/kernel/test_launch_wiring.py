"""What the provisioner and the boot check at every kernel start, whatever was installed (issue 12).

- A real-TEE kernel whose policy pins no image identity is refused before anything is launched, also when the
  policy was edited after ``teelab kernel install`` or comes from ``c.TeeProvisioner.policy_file``.
- The boot obeys only the controller its platform was launched for: a host that launches the genuine image
  bound to one gateway's controller while the boot request names another key gets a boot that refuses and exits
  before it says anything on the handshake channel.
"""

from __future__ import annotations

import hashlib
import secrets
import select
import socket
import subprocess
from pathlib import Path

import pytest
from jupyter_client.manager import KernelManager
from traitlets.config import Config

from teelab.enclave_runtime.images import KERNEL_IMAGE
from teelab.enclave_runtime.sim.backend import SimBackend
from teelab.errors import ConfigError
from teelab.protocols.session import BOOT_REQUEST_ENV, NONCE_SIZE, BootRequest

from .conftest import KernelEnv, copy_kernelspec

UNPINNED = {
    "no TEE section": 'id = "pins-nothing"\n',
    "an empty [sgx] section": 'id = "pins-nothing"\n[sgx]\n',
    "MRSIGNER without ISVPRODID": f'id = "pins-nothing"\n[sgx]\nmrsigner = ["{"ab" * 32}"]\n',
}


@pytest.mark.parametrize("policy", sorted(UNPINNED))
@pytest.mark.parametrize("where", ["installed policy edited afterwards", "c.TeeProvisioner.policy_file"])
def test_a_real_backend_kernel_whose_policy_pins_no_identity_is_refused_at_start(
    kernel_env: KernelEnv, tmp_path: Path, policy: str, where: str
) -> None:
    name = "teelab-gramine"
    copy_kernelspec(kernel_env, kernel_env.jupyter_data, name=name, backend="gramine")
    config = Config()
    if where == "c.TeeProvisioner.policy_file":
        path = tmp_path / "server-policy.toml"
        config.TeeProvisioner.policy_file = str(path)
    else:
        path = kernel_env.config / "policies" / f"{name}.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(UNPINNED[policy])
    # The real Gramine backend, on a machine without Gramine and without an image: only a check before the
    # image is loaded gives a ConfigError (otherwise the start fails at "enclave_image").
    km = KernelManager(kernel_name=name, config=config)
    with pytest.raises(ConfigError) as refused:
        km.start_kernel()
    assert "policy 'pins-nothing' pins no kernel image for the gramine backend" in refused.value.message
    assert refused.value.hint is not None and "teelab enclave measure" in refused.value.hint
    assert km.provisioner is None or not km.provisioner.has_process


def test_a_sim_kernel_launched_for_one_controller_refuses_a_boot_request_naming_another(
    kernel_env: KernelEnv,
) -> None:
    victims_key, hosts_key = secrets.token_bytes(32), secrets.token_bytes(32)
    backend = SimBackend()
    image = backend.load_image(KERNEL_IMAGE)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        request = BootRequest(secrets.token_bytes(NONCE_SIZE), "127.0.0.1", port, controller_key=hosts_key)
        process = backend.launch(
            image,
            inputs={BOOT_REQUEST_ENV: request.to_env()},
            controller=hashlib.sha256(victims_key).digest(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            # The boot must exit without ever connecting: no hello, no evidence under the victim's controller.
            while process.poll() is None:
                connected, _, _ = select.select([listener], [], [], 0.2)
                assert not connected, (
                    "the boot connected to the gateway for a controller it was not launched for"
                )
            _, stderr = process.popen.communicate(timeout=10)
        finally:
            process.kill()
            process.cleanup()
    assert process.returncode == 1
    assert (
        "teelab boot: the boot request names another controller than the platform's launch-time field"
        in stderr.decode()
    )


def test_the_same_launch_naming_its_own_controller_gets_as_far_as_the_hello(kernel_env: KernelEnv) -> None:
    """The control for the test above: with matching keys the boot connects and sends its hello."""
    key = secrets.token_bytes(32)
    backend = SimBackend()
    image = backend.load_image(KERNEL_IMAGE)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(120)
        port = listener.getsockname()[1]
        request = BootRequest(secrets.token_bytes(NONCE_SIZE), "127.0.0.1", port, controller_key=key)
        process = backend.launch(
            image,
            inputs={BOOT_REQUEST_ENV: request.to_env()},
            controller=hashlib.sha256(key).digest(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            connection, _ = listener.accept()
            with connection:
                connection.settimeout(120)
                assert b'"hello"' in connection.recv(1 << 16)
        finally:
            process.kill()
            process.wait(10)
            process.cleanup()
