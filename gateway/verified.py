"""What a verifier establishes from evidence before any policy is applied.

Format verifiers (``teelab.gateway.dcap``, ``teelab.gateway.snp``) turn evidence + collateral + a time into a
:class:`VerifiedEvidence`: the evidence is authentic (signatures, chains, pinned root, revocation, collateral
windows) and here is what it claims. Whether those claims are *acceptable* is the appraisal policy's job
(``teelab.gateway.policy``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from teelab.gateway.checks import Check

Tee = Literal["sgx", "tdx", "sev-snp"]

# Intel's TCB status names (QVL / PCS), plus the status for "no TCB level matches the platform".
TCB_STATUSES = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
    "TcbLevelNotFound",
)

ClaimValue = str | int | bool


@dataclass
class VerifiedEvidence:
    """Authentic evidence and its claims.

    ``claims`` uses the names of the CLI's JSON: hex strings for measurements and report data
    (``mrenclave``, ``mrsigner``, ``mrtd``, ``rtmr0``..``rtmr3``, ``mrconfigid``, ``measurement``,
    ``host_data``, ``chip_id``, ``report_data``), integers for ids and SVNs (``isv_prod_id``, ``isv_svn``,
    ``guest_svn``, ``vmpl``, ``policy``), and the boolean ``debug``.
    """

    tee: Tee
    simulated: bool
    tcb_status: str | None
    advisory_ids: list[str]
    claims: dict[str, ClaimValue]
    checks: list[Check]
    # The span in which every certificate, CRL and collateral document involved is valid.
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    # The oldest issue date among the collateral documents (TCB info, QE identity, CRLs) used.
    collateral_issued_at: datetime | None = None
    # Extra facts for policy (e.g. the SNP reported TCB) that are not in the CLI's claims.
    details: dict[str, object] = field(default_factory=dict)
