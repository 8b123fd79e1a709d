"""The controller rule at release: the evidence must come from a kernel the grant's gateway launched.

A genuine kernel image runs arbitrary user code, so a host that launches the image itself holds an
attestation oracle: evidence for the pinned measurement over any report_data. The gateway that asked for the
session grant put its controller hash (``SHA-256(G.pub)``) in it (claim ``ctl``); the platform writes the
launcher's controller into a launch-time field of every piece of evidence (ARCHITECTURE §3):

- SGX: CONFIGID (claim ``config_id``, 64 bytes) = controller hash ‖ 32 zero bytes;
- TDX: MRCONFIGID (claim ``mrconfigid``, 48 bytes) = controller hash ‖ 16 zero bytes;
- SEV-SNP: HOST_DATA (claim ``host_data``, 32 bytes) = controller hash.

Evidence whose field differs — another launcher's kernel, an "oracle" — is refused and audited.
"""

from __future__ import annotations

import hmac

from teelab.gateway.controller import controller_field
from teelab.gateway.result import AttestationResult

_CLAIMS = {"sgx": "config_id", "tdx": "mrconfigid", "sev-snp": "host_data"}


def controller_problem(result: AttestationResult, controller_sha256: str) -> str | None:
    """None when the evidence carries the controller hash; else why not (for the audit log)."""
    claim = _CLAIMS.get(result.tee or "")
    if claim is None:
        return f"oracle evidence: {result.tee} evidence has no launch-time field to carry the controller"
    expected = controller_field(result.tee, bytes.fromhex(controller_sha256))  # type: ignore[arg-type]
    found = result.claims.get(claim)
    if not isinstance(found, str):
        return f"oracle evidence: the evidence carries no {claim}; the grant names controller {controller_sha256}"
    try:
        value = bytes.fromhex(found)
    except ValueError:
        return f"oracle evidence: its {claim} is not hex"
    if not hmac.compare_digest(value, expected):
        return (
            f"oracle evidence: its {claim} {found} is not the grant's controller {controller_sha256} "
            "(a kernel launched by someone else)"
        )
    return None
