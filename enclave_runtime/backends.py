"""The registry of TEE backends by name."""

from __future__ import annotations

from teelab.enclave_runtime.backend import EnclaveBackend
from teelab.errors import UsageError


def backend_names() -> tuple[str, ...]:
    return ("sim",)


def get_backend(name: str) -> EnclaveBackend:
    if name == "sim":
        from teelab.enclave_runtime.sim.backend import SimBackend

        return SimBackend()
    raise UsageError(f"unknown TEE backend {name!r}", hint=f"choose one of: {', '.join(backend_names())}")
