"""Inside the TEE: find the runtime this process is running under."""

from __future__ import annotations

import os

from teelab.enclave_runtime.backend import TeeRuntime
from teelab.errors import EvidenceError


def current_runtime() -> TeeRuntime:
    """The runtime of the TEE this process runs in; an EvidenceError when it runs in none."""
    if os.environ.get("TEELAB_TEE") == "sim":
        from teelab.enclave_runtime.sim.runtime import SimRuntime

        return SimRuntime.from_environment()
    raise EvidenceError(
        "this process is not running inside a TEE teelab knows",
        hint="launch it through a teelab backend (e.g. the teelab-sim kernel)",
    )
