"""The host side of the front door: build its measured image, launch it in a TEE, stop it.

What a user pins for the front door is this image's measurement (:func:`front_door_policy_text` writes the
policy for a simulated one); ``teelab hub front-door measure`` prints it.
"""

from __future__ import annotations

import json
import select
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from teelab.errors import EnclaveError
from teelab.extension.hub.front_door import REQUEST_ENV
from teelab.extension.hub.front_door_limits import EvidenceLimits
from teelab.extension.hub.front_door_protocol import FrontDoorError

if TYPE_CHECKING:
    from teelab.kernel.attested_module import EnclaveBackend, EnclaveImage, EnclaveProcess

FRONT_DOOR_MODULE = "teelab.extension.hub.front_door"
FRONT_DOOR_IMAGE = "hub-front-door"
# The packages the front door imports in the TEE (the interpreter's sys.path is trusted as well).
FRONT_DOOR_PACKAGES = ("teelab", "teelab.kernel", "teelab.enclave_runtime", "teelab.extension")
START_SECONDS = 60.0


def build_front_door_image(backend: EnclaveBackend) -> EnclaveImage:
    from teelab.kernel.attested_module import build_module_image

    return build_module_image(
        backend, FRONT_DOOR_MODULE, name=FRONT_DOOR_IMAGE, packages=FRONT_DOOR_PACKAGES, inputs=(REQUEST_ENV,)
    )


def front_door_policy_text(image: EnclaveImage, *, simulated: bool) -> str:
    """The policy a user pins for this front door image (``teelab hub verify --policy``)."""
    warning = (
        "# Simulated TEE: nothing is confidential; this policy allows simulation for trying the protocol.\n"
        if simulated
        else ""
    )
    return (
        f"# The hub front door's image, measured by `teelab hub front-door measure`.\n{warning}"
        f'id = "hub-front-door"\nallow_simulation = {"true" if simulated else "false"}\n\n'
        f'[sgx]\nmrenclave = ["{image.mrenclave.hex()}"]\nmrsigner = ["{image.mrsigner.hex()}"]\n'
        f"isv_prod_id = {image.sigstruct.isv_prod_id}\n"
    )


@dataclass
class RunningFrontDoor:
    process: EnclaveProcess
    port: int
    tls_spki_sha256: bytes
    # The hub pod stops its hub (which stops the servers it spawned) before it exits: give it longer.
    stop_seconds: float = 10.0

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(self.stop_seconds)
        except Exception:
            self.process.kill()
            self.process.wait()
        if self.process.popen.stdout is not None:
            self.process.popen.stdout.close()
        self.process.cleanup()


def print_measured(image: EnclaveImage, *, simulated: bool, policy_out: Path | None) -> None:
    """What `teelab hub front-door-measure` and `pod-measure` print, and the policy to pin written to ``policy_out``."""
    print(f"image        {image.path}")
    print(f"mrenclave    {image.mrenclave.hex()}")
    if policy_out:
        policy_out.write_text(front_door_policy_text(image, simulated=simulated))
        print(f"policy       {policy_out}")


def launch_front_door(
    backend: EnclaveBackend,
    image: EnclaveImage,
    *,
    upstream: tuple[str, int],
    listen: tuple[str, int] = ("127.0.0.1", 0),
    hostnames: tuple[str, ...] = ("localhost", "127.0.0.1"),
    controller: bytes | None = None,
    limits: EvidenceLimits | None = None,
) -> RunningFrontDoor:
    """Start the front door in ``backend``'s TEE, proxying to ``upstream`` (loopback); return once it listens."""
    from teelab.kernel.attested_module import launch_module

    collateral = backend.collateral_path()
    request: dict[str, object] = {
        "listen_host": listen[0],
        "listen_port": listen[1],
        "upstream_host": upstream[0],
        "upstream_port": upstream[1],
        "hostnames": list(hostnames),
        "collateral": str(collateral) if collateral is not None else None,
    }
    if limits is not None:
        request["evidence_limits"] = limits.to_json()
    process = launch_module(backend, image, inputs={REQUEST_ENV: json.dumps(request)}, controller=controller)
    return wait_announced(process, START_SECONDS)


def wait_announced(
    process: EnclaveProcess, seconds: float, *, stop_seconds: float = 10.0
) -> RunningFrontDoor:
    """The front door's ``{"port", "tls_spki_sha256"}`` line, or an EnclaveError (the process is stopped)."""
    stdout = process.popen.stdout
    assert stdout is not None  # launch_module asks for a pipe
    ready, _, _ = select.select([stdout], [], [], seconds)
    line = stdout.readline() if ready else b""
    try:
        announced = json.loads(line)
        running = RunningFrontDoor(
            process, int(announced["port"]), bytes.fromhex(announced["tls_spki_sha256"]), stop_seconds
        )
    except (ValueError, TypeError, KeyError):
        process.kill()
        process.wait()
        stdout.close()
        process.cleanup()
        raise EnclaveError(
            f"the front door did not start (exit status {process.poll()}); its error is above"
        ) from None
    return running


__all__ = [
    "FRONT_DOOR_IMAGE",
    "FrontDoorError",
    "RunningFrontDoor",
    "build_front_door_image",
    "front_door_policy_text",
    "launch_front_door",
    "wait_announced",
]
