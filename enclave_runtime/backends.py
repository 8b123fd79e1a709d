"""The registry of TEE backends by name.

``gramine-direct`` is the Gramine backend launching with ``gramine-direct`` instead of ``gramine-sgx``: no SGX
and no attestation, for checking that an image starts. It exists only under its own, explicit name.
"""

from __future__ import annotations

import os
from pathlib import Path

from teelab.enclave_runtime.backend import EnclaveBackend, RootPin
from teelab.errors import UsageError

HARDWARE_BACKENDS = ("gramine", "occlum", "cvm")


def backend_names() -> tuple[str, ...]:
    return ("sim", *HARDWARE_BACKENDS, "gramine-direct")


def get_backend(name: str, *, sim_platform: Path | None = None) -> EnclaveBackend:
    """The backend called ``name``; ``sim_platform`` is the simulated platform's folder (default: the user's)."""
    if name == "sim":
        from teelab.enclave_runtime.sim.backend import SimBackend

        return SimBackend(sim_platform)
    if name in ("gramine", "gramine-direct"):
        from teelab.enclave_runtime.gramine.backend import GramineBackend

        return GramineBackend(insecure_direct=name == "gramine-direct")
    if name == "occlum":
        from teelab.enclave_runtime.occlum.backend import OcclumBackend

        return OcclumBackend()
    if name == "cvm":
        from teelab.enclave_runtime.cvm.backend import CvmBackend

        return CvmBackend()
    raise UsageError(f"unknown TEE backend {name!r}", hint=f"choose one of: {', '.join(backend_names())}")


def sibling_backend(name: str) -> EnclaveBackend:
    """The backend ``name`` for launching TEEs beside the one this process runs in.

    Inside the simulated TEE: on the simulated platform this process was itself launched on (its loader named
    it), so the siblings' quotes chain to the root the verifiers of this machine already trust — the default
    platform would be a fresh one in this TEE's private home. Everywhere else: :func:`get_backend`.
    """
    if name == "sim" and os.environ.get("TEELAB_TEE") == "sim":
        from teelab.enclave_runtime.sim.runtime import SimRuntime

        return get_backend(name, sim_platform=SimRuntime.from_environment().identity.platform)
    return get_backend(name)


def known_root_pins() -> tuple[RootPin, ...]:
    """The extra roots evidence from TEEs on this machine chains to, for a verifier with no backend at hand:
    each backend's :meth:`~teelab.enclave_runtime.backend.EnclaveBackend.known_root_pins` (today only the
    simulated platform's, if one exists). Nothing is created."""
    from teelab.enclave_runtime.sim.backend import SimBackend

    return SimBackend.known_root_pins()
