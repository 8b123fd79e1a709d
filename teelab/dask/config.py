"""The Dask configuration of an attested node: set in code, never read from the host.

A node's configuration decides where data goes, so none of it may come from what the TEE host controls: the
boot points Dask's configuration folders (``DASK_ROOT_CONFIG``, ``DASK_CONFIG``) at an empty folder in the
TEE's scratch space before Dask is imported, then drops whatever Dask collected anyway (the environment's
``etc/dask``) and keeps only Dask's built-in defaults plus :data:`HARDENED`. The side doors it closes
(research/scale_out.md A.1):

- every HTTP route (``/health``, ``/metrics``, ``/info/...``, the dashboard) — unauthenticated plaintext even
  with TLS comms; the listener itself is unconditional in ``distributed`` and bound to loopback;
- spilling to disk and P2P shuffle storage on disk: data stays in the node's (TEE) memory;
- plaintext comms: ``require-encryption`` makes any ``tcp://`` comm an error;
- preloads (code named by configuration) and the client's security loader;
- logs below WARNING (they go to the host's stderr).
"""

from __future__ import annotations

import os
from typing import Any

HARDENED: dict[str, Any] = {
    "distributed.scheduler.http.routes": [],
    "distributed.worker.http.routes": [],
    "distributed.nanny.http.routes": [],
    "distributed.worker.memory.target": False,
    "distributed.worker.memory.spill": False,
    "distributed.worker.memory.max-spill": False,
    "distributed.p2p.storage.disk": False,
    "distributed.comm.require-encryption": True,
    "distributed.comm.default-scheme": "tls",
    "distributed.scheduler.preload": [],
    "distributed.worker.preload": [],
    "distributed.client.preload": [],
    "distributed.client.security-loader": None,
    "distributed.diagnostics.nvml": False,
    "distributed.logging.distributed": "warning",
}
# The loopback interface for the HTTP listener `distributed` always opens (no routes on it).
HTTP_ADDRESS = "127.0.0.1:0"


def isolate_from_host(scratch: str) -> None:
    """Before Dask is imported: its configuration folders are an empty folder of the TEE's scratch space."""
    folder = os.path.join(scratch, "dask-config")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    os.environ["DASK_ROOT_CONFIG"] = folder
    os.environ["DASK_CONFIG"] = folder
    for name in [name for name in os.environ if name.startswith("DASK_") and not name.endswith("CONFIG")]:
        del os.environ[name]  # the image's environment has none; a future passthrough must not add any


def apply(scratch: str) -> None:
    """Dask's defaults and :data:`HARDENED` only; temporary files in the TEE's ``scratch``."""
    import logging

    import dask.config
    import distributed  # noqa: F401  (registers distributed's defaults before the refresh)

    dask.config.refresh(paths=[], env={})
    dask.config.set({**HARDENED, "temporary-directory": scratch})
    logging.getLogger("distributed").setLevel(logging.WARNING)
