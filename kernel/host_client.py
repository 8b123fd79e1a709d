"""The gateway's client of a host agent: it lives in :mod:`teelab.enclave_runtime.agent.client`, beside the
agent's protocol, so a Dask cluster's controller (teelab.dask, which may not import teelab.kernel) uses the same
client."""

from teelab.enclave_runtime.agent.client import (
    CALL_TIMEOUT,
    RELAY_CHUNK,
    Channel,
    HostAgentError,
    HostClient,
    HostTarget,
)

__all__ = ["CALL_TIMEOUT", "RELAY_CHUNK", "Channel", "HostAgentError", "HostClient", "HostTarget"]
