"""Attested Dask clusters (issue 16, ARCHITECTURE §9): ``from teelab.dask import TeeCluster``.

The package is imported inside TEEs too (the node boot, :mod:`teelab.dask.boot`), which must import no verifier
code: the cluster (controller side) is loaded only when asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from teelab.dask.agents import AgentCredentials as AgentCredentials
    from teelab.dask.cluster import TeeCluster as TeeCluster
    from teelab.dask.records import NodeAttestation as NodeAttestation

__all__ = ["AgentCredentials", "NodeAttestation", "TeeCluster"]


def __getattr__(name: str) -> Any:
    if name == "TeeCluster":
        from teelab.dask.cluster import TeeCluster

        return TeeCluster
    if name == "NodeAttestation":
        from teelab.dask.records import NodeAttestation

        return NodeAttestation
    if name == "AgentCredentials":
        from teelab.dask.agents import AgentCredentials

        return AgentCredentials
    raise AttributeError(name)
