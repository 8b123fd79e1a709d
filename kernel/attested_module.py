"""Measured Python programs other than the kernel (the hub's attested front door), through the backend contract.

The extension reaches the TEE backends only through the kernel part (docs/architecture.md), so this is its
surface for them:

- on the host, :func:`build_module_image` builds and measures an image that runs ``python -s -m MODULE`` with
  everything that interpreter imports trusted (as the kernel's image does), and :func:`launch_module` starts
  it through a backend with the launching gateway's controller bound at launch;
- inside the TEE, :func:`tee_evidence` is fresh evidence over 64 bytes of report_data from the runtime this
  process runs in.
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Mapping

from teelab.enclave_runtime.backend import EnclaveBackend, EnclaveProcess, Evidence, TeeRuntime
from teelab.enclave_runtime.backends import get_backend
from teelab.enclave_runtime.controller import CONTROLLER_ENV
from teelab.enclave_runtime.image import EnclaveImage
from teelab.enclave_runtime.images import python_module_spec
from teelab.enclave_runtime.manifest import ImageSpec
from teelab.enclave_runtime.runtime import current_runtime

# The hub's single-user server (extension/hub) builds, launches and runs in its image through these names.
__all__ = [
    "CONTROLLER_ENV",
    "EnclaveBackend",
    "EnclaveImage",
    "EnclaveProcess",
    "Evidence",
    "ImageSpec",
    "TeeRuntime",
    "build_module_image",
    "current_runtime",
    "get_backend",
    "launch_module",
    "module_image_spec",
    "python_module_spec",
    "tee_evidence",
    "tee_name",
]


def build_module_image(
    backend: EnclaveBackend,
    module: str,
    *,
    name: str,
    packages: tuple[str, ...],
    inputs: tuple[str, ...],
    extra_trusted: tuple[str, ...] = (),
    extra_env: Mapping[str, str] | None = None,
) -> EnclaveImage:
    """The image ``name`` running ``module``; ``inputs`` are the only variables the host may pass in.

    ``extra_trusted`` are more files or folders (folders recursively) the program runs or reads besides what
    its interpreter imports — another runtime and its code, such as node and configurable-http-proxy's
    ``node_modules`` for the hub pod, or a configuration file. They are measured like every trusted file: a
    change to any of them changes the measurement, and a launch refuses a file changed since the build.
    ``extra_env`` are fixed (measured) variables of the program, e.g. where those files are.
    """
    spec = module_image_spec(
        module, name=name, packages=packages, inputs=inputs, extra_trusted=extra_trusted, extra_env=extra_env
    )
    return backend.build(spec)


def module_image_spec(
    module: str,
    *,
    name: str,
    packages: tuple[str, ...],
    inputs: tuple[str, ...],
    extra_trusted: tuple[str, ...] = (),
    extra_env: Mapping[str, str] | None = None,
) -> ImageSpec:
    """The spec :func:`build_module_image` builds (``backend.measure(spec)`` gives its measurement unbuilt)."""
    spec = python_module_spec(module, name=name, packages=packages, passthrough_env=inputs)
    if not extra_trusted and not extra_env:
        return spec
    overlap = set(extra_env or {}) & (set(spec.env) | set(inputs))
    if overlap:
        raise ValueError(
            f"extra_env would replace the image's own or passthrough variables {sorted(overlap)}"
        )
    return dataclasses.replace(
        spec,
        trusted=tuple(dict.fromkeys((*spec.trusted, *extra_trusted))),
        env={**spec.env, **(extra_env or {})},
    )


def launch_module(
    backend: EnclaveBackend, image: EnclaveImage, *, inputs: Mapping[str, str], controller: bytes | None
) -> EnclaveProcess:
    """Start ``image`` in the TEE; its standard output is a pipe (the program announces itself there)."""
    return backend.launch(image, inputs=inputs, controller=controller, stdout=subprocess.PIPE)


def tee_name() -> str:
    """The backend whose TEE this process runs in (an EvidenceError when it runs in none)."""
    return current_runtime().backend


def tee_evidence(report_data: bytes) -> Evidence:
    """Evidence over ``report_data`` (64 bytes) from the TEE this process runs in (an EvidenceError outside one)."""
    return current_runtime().evidence(report_data)
