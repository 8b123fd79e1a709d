"""``teelab kernel install``: the kernel's enclave image, its operator-owned policy, and its kernelspec.

The kernelspec names the provisioner and the backend and nothing else; the policy goes into a policy folder
beside the install location (see :mod:`teelab.kernel.policy_files`). For the simulated backend, without a
``--policy``, the installed policy pins the image just built and allows simulation — and every surface that
shows its result says *simulated — not confidential*.

Where it goes: inside a virtual environment the default is the environment itself (``sys.prefix``), so two
environments each keep their own kernelspec and policy beside their own image; ``user=True`` opts into the
per-user place (shared by every environment of this user). For a backend that binds the controller by
measurement (Gramine has no KSS), the image is built with this install's gateway controller pinned
(:func:`~teelab.enclave_runtime.controller.pin_controller`): the gateway that launches it must use the same
identity file.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from jupyter_client.kernelspec import KernelSpecManager

from teelab.enclave_runtime.backends import get_backend
from teelab.enclave_runtime.controller import ControllerBinding, pin_controller
from teelab.enclave_runtime.image import EnclaveImage
from teelab.enclave_runtime.images import kernel_image_spec
from teelab.enclave_runtime.manifest import ProgressCallback
from teelab.errors import ConfigError, UsageError
from teelab.files import replace_atomically
from teelab.gateway.identity import GatewayIdentity
from teelab.gateway.policy import load_policy, parse_policy
from teelab.kernel.policy_files import sim_data_dir_marker, sys_prefix_policy_dir, user_policy_dir

DISPLAY_NAMES = {"sim": "Python 3 (teelab · simulated TEE)"}


@dataclass(frozen=True)
class InstalledKernel:
    name: str
    kernelspec_dir: Path
    policy_file: Path
    image: EnclaveImage
    user: bool = True  # installed per user (else into the environment, sys.prefix)
    controller: bytes | None = None  # the controller its measured image pins ("measurement" binding)


def in_virtual_environment() -> bool:
    return sys.prefix != sys.base_prefix


def default_user_install() -> bool:
    """Per user only outside a virtual environment: a per-user kernelspec and policy would be shared by every
    environment of this user, and each install would replace the other's (issue 11, item 7)."""
    return not in_virtual_environment()


def default_name(backend: str) -> str:
    return f"teelab-{backend}"


def sim_policy_text(image: EnclaveImage, name: str) -> str:
    return f"""\
# Attestation policy for the {name} kernel, written by `teelab kernel install`.
{sim_data_dir_marker()}
# The simulated TEE has no hardware isolation: this policy allows simulation, so every result it accepts
# is marked "simulated — not confidential". Edit this file (the operator's), not the kernelspec.
id = "{name}"
allow_simulation = true
allow_debug = {"true" if image.sigstruct.debug else "false"}

[sgx]
# The kernel image built by `teelab enclave build` (rebuild and reinstall after changing the environment).
mrenclave = ["{image.mrenclave.hex()}"]
mrsigner = ["{image.mrsigner.hex()}"]
isv_prod_id = {image.sigstruct.isv_prod_id}
"""


def kernel_json(name: str, backend: str, display_name: str | None) -> dict[str, object]:
    return {
        # Never run directly: the provisioner launches the measured image through the backend. Run by
        # hand, the boot stops at once because nobody gave it a boot request.
        "argv": [sys.executable, "-m", "teelab.kernel.boot"],
        "display_name": display_name or DISPLAY_NAMES.get(backend, f"Python 3 (teelab · {backend})"),
        "language": "python",
        "interrupt_mode": "message",
        "metadata": {
            "kernel_provisioner": {"provisioner_name": "teelab", "config": {"backend": backend}},
            "supported_encryption": ["curve"],
            "teelab": {"backend": backend, "simulated": backend == "sim"},
            "debugger": False,
        },
    }


_KERNEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_kernel_name(name: str) -> str:
    """A kernelspec name Jupyter accepts, which also names the policy file: no path of any kind."""
    if not _KERNEL_NAME.fullmatch(name):
        raise UsageError(
            f"not a kernel name: {name!r}", hint="use letters, digits, '.', '_' and '-' (e.g. teelab-sim)"
        )
    return name


@dataclass(frozen=True)
class BuiltKernelImage:
    image: EnclaveImage
    controller: bytes | None  # the controller a measurement-bound image pins
    policy_text: str  # the operator's policy, or the generated sim policy pinning this image
    simulated: bool


def build_kernel_image(
    backend: str,
    name: str,
    *,
    policy: Path | None = None,
    signing_key: Path | None = None,
    progress: ProgressCallback | None = None,
    identity_file: Path | None = None,
) -> BuiltKernelImage:
    """The kernel's enclave image for ``backend`` and the policy that judges it — checked before anything is
    written: a real TEE needs the operator's policy, and that policy must pin the image."""
    engine = get_backend(backend)
    if policy is not None:
        # Refuse a broken policy, or one that pins no image on real hardware, before anything is installed.
        load_policy(policy).require_identity_pin(backend, simulated=engine.simulated)
    elif not engine.simulated:
        raise UsageError(
            f"the {backend} backend needs an attestation policy",
            hint="pass --policy FILE (see docs/policy.md)",
        )
    spec, controller = kernel_image_spec(), None
    if engine.binding is ControllerBinding.MEASUREMENT:
        # No launch-time field on this TEE: the measured image itself names the gateway it obeys.
        controller = GatewayIdentity.load_or_create(identity_file).controller
        spec = pin_controller(spec, controller)
    image = engine.build(spec, signing_key=signing_key, progress=progress)
    text = policy.read_text() if policy is not None else sim_policy_text(image, name)
    parse_policy(text, source=str(policy or "generated policy"))
    return BuiltKernelImage(image, controller, text, engine.simulated)


def install(
    *,
    backend: str = "sim",
    name: str | None = None,
    display_name: str | None = None,
    policy: Path | None = None,
    user: bool | None = None,
    signing_key: Path | None = None,
    progress: ProgressCallback | None = None,
    identity_file: Path | None = None,
) -> InstalledKernel:
    """Build the image, write the policy, install the kernelspec. ``user=None``: the environment's place inside
    a virtual environment, else the user's; ``identity_file``: the gateway identity whose controller a
    measurement-bound image pins (default: the one the provisioner uses by default)."""
    user = default_user_install() if user is None else user
    name = check_kernel_name(name or default_name(backend))
    built = build_kernel_image(
        backend, name, policy=policy, signing_key=signing_key, progress=progress, identity_file=identity_file
    )
    image, controller, text = built.image, built.controller, built.policy_text
    policy_dir = user_policy_dir() if user else sys_prefix_policy_dir()
    policy_dir.mkdir(parents=True, exist_ok=True)
    policy_file = policy_dir / f"{name}.toml"
    replace_atomically(policy_file, text.encode(), mode=0o644)
    with tempfile.TemporaryDirectory() as staging:
        (Path(staging) / "kernel.json").write_text(
            json.dumps(kernel_json(name, backend, display_name), indent=1)
        )
        try:
            destination = KernelSpecManager().install_kernel_spec(
                staging, kernel_name=name, user=user, prefix=None if user else sys.prefix
            )
        except OSError as error:
            raise ConfigError(f"cannot install kernelspec {name}: {error.strerror or error}") from None
    return InstalledKernel(name, Path(destination), policy_file, image, user, controller)


def uninstall(name: str) -> list[Path]:
    check_kernel_name(name)
    removed: list[Path] = []
    manager = KernelSpecManager()
    try:
        removed.append(Path(manager.remove_kernel_spec(name)))
    except KeyError:
        raise UsageError(
            f"no kernelspec named {name!r}", hint="`jupyter kernelspec list` shows them"
        ) from None
    for folder in (user_policy_dir(), sys_prefix_policy_dir()):
        candidate = folder / f"{name}.toml"
        if candidate.exists():
            candidate.unlink()
            removed.append(candidate)
    return removed
