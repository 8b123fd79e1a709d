"""The controller a kernel obeys, and how each platform field carries it (ARCHITECTURE §3, the controller rule).

The controller is the launching gateway's identity: ``SHA-256(G.pub)``, 32 bytes. A backend binds it at launch
into the field of the platform that every evidence of the TEE then carries, so evidence from a kernel some other
party launched cannot pass for evidence from ours:

- SGX KSS ``CONFIGID`` (64 bytes) = controller ‖ 32 zero bytes (the simulated platform models this field);
- TDX ``MRCONFIGID`` (48 bytes) = controller ‖ 16 zero bytes;
- SEV-SNP ``HOST_DATA`` (32 bytes) = controller.

Where a TEE has no launch-time field (SGX without KSS, Occlum), the measured image pins the controller instead
(:data:`CONTROLLER_ENV` in the measured manifest). ``None`` means "no controller": the fields stay zero, as
before the rule existed.
"""

from __future__ import annotations

import dataclasses
import hmac
from collections.abc import Iterable
from enum import StrEnum

from teelab.enclave_runtime.manifest import EnclaveManifest, ImageSpec
from teelab.errors import EnclaveError

CONTROLLER_SIZE = 32
# The measured manifest's variable that pins the controller in images built for one gateway ("measurement"
# binding); its value is the controller hash in hex.
CONTROLLER_ENV = "TEELAB_CONTROLLER"


class ControllerBinding(StrEnum):
    """How a backend binds the controller into its evidence."""

    CONFIGID = "sgx-configid"  # SGX KSS CONFIGID, set by the launcher
    MRCONFIGID = "tdx-mrconfigid"  # TDX MRCONFIGID, set by the VMM when it creates the TD
    HOST_DATA = "snp-host-data"  # SEV-SNP HOST_DATA, set by the VMM at SNP_LAUNCH_FINISH
    MEASUREMENT = "measurement"  # no launch-time field: the measured image pins it


def check_controller(controller: bytes | None) -> bytes | None:
    """``controller`` itself when it is a 32-byte hash (or None); anything else is an EnclaveError."""
    if controller is None:
        return None
    if not isinstance(controller, bytes) or len(controller) != CONTROLLER_SIZE:
        size = len(controller) if isinstance(controller, bytes) else type(controller).__name__
        raise EnclaveError(f"a controller is the 32-byte SHA-256 of the gateway's key, not {size}")
    return controller


def pinned_controller(env: Iterable[tuple[str, str]]) -> bytes | None:
    """The controller a measured manifest's environment pins (None: it pins none)."""
    value = dict(env).get(CONTROLLER_ENV)
    if value is None:
        return None
    try:
        return check_controller(bytes.fromhex(value))
    except ValueError:
        raise EnclaveError(f"the image pins a malformed controller {value!r}") from None


def pin_controller(spec: ImageSpec, controller: bytes) -> ImageSpec:
    """``spec`` with ``controller`` pinned in its measured environment (the "measurement" binding: for TEEs whose
    launcher cannot set a platform field, e.g. upstream Gramine, build the gateway's image this way)."""
    if check_controller(controller) is None:
        raise EnclaveError("pinning needs a controller")
    return dataclasses.replace(spec, env={**spec.env, CONTROLLER_ENV: controller.hex()})


def refuse_other_controller(manifest: EnclaveManifest, controller: bytes | None, *, backend: str) -> None:
    """For backends whose measured image binds the controller: launching for ``controller`` needs an image
    that pins exactly it, since the image, not the launcher, puts it into the evidence."""
    if controller is None:
        return
    if CONTROLLER_ENV in manifest.passthrough_env:
        raise EnclaveError(f"the image lets {CONTROLLER_ENV} in from the host, so it pins no controller")
    pinned = pinned_controller(manifest.env)
    if pinned is None or not hmac.compare_digest(pinned, controller):
        said = "pins no controller" if pinned is None else f"pins the controller {pinned.hex()[:16]}…"
        raise EnclaveError(
            f"this {backend} image {said}, not this gateway's {controller.hex()[:16]}…: a {backend} TEE cannot "
            "be bound to its controller at launch, so its measured image must name it",
            hint=f"rebuild the image with {CONTROLLER_ENV}={controller.hex()} in its environment",
        )


def _padded(controller: bytes | None, size: int) -> bytes:
    checked = check_controller(controller)
    return bytes(size) if checked is None else checked + bytes(size - CONTROLLER_SIZE)


def sgx_config_id(controller: bytes | None) -> bytes:
    """SGX CONFIGID for ``controller``: the hash, then 32 zero bytes (all zero without a controller)."""
    return _padded(controller, 64)


def tdx_mrconfigid(controller: bytes | None) -> bytes:
    """TDX MRCONFIGID for ``controller``: the hash, then 16 zero bytes."""
    return _padded(controller, 48)


def snp_host_data(controller: bytes | None) -> bytes:
    """SEV-SNP HOST_DATA for ``controller``: the hash itself."""
    return _padded(controller, 32)


def controller_from_field(field: bytes) -> bytes | None:
    """The controller a platform field carries (the inverse of the encodings above): its first 32 bytes, None
    when the field is all zero (no controller bound). Any other content is no controller teelab bound: an
    EnclaveError, so the boot refuses rather than guess."""
    if len(field) < CONTROLLER_SIZE:
        raise EnclaveError(
            f"a {len(field)}-byte platform field cannot carry a {CONTROLLER_SIZE}-byte controller"
        )
    if not any(field):
        return None
    if any(field[CONTROLLER_SIZE:]):
        raise EnclaveError(
            "the platform field carries something other than a controller (its padding is not zero)"
        )
    return field[:CONTROLLER_SIZE]
