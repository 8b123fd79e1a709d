"""The controller check: does this evidence come from a kernel that *this* gateway launched?

A genuine kernel image runs arbitrary user code, so whoever launches it can use it as an attestation oracle
(evidence for the pinned measurement over any report_data). The controller rule (ARCHITECTURE §3) closes that:
the platform binds the launching gateway's controller hash — ``SHA-256(G.pub)`` of its identity key — into
every piece of evidence the kernel can produce, in a field only the launcher sets:

- SGX (KSS): CONFIGID, 64 bytes = controller hash ‖ 32 zero bytes;
- TDX: MRCONFIGID, 48 bytes = controller hash ‖ 16 zero bytes;
- SEV-SNP: HOST_DATA, 32 bytes = controller hash.

Where a TEE has no such field (SGX without KSS, Occlum) the policy says ``controller_binding = "measurement"``:
the measured image pins the controller, which holds only when the policy pins that image (enforced when the
policy is built). Evidence that has neither binding fails the check ``controller``.
"""

from __future__ import annotations

import hmac

from teelab.errors import UsageError
from teelab.gateway.checks import Check
from teelab.gateway.policy import AppraisalPolicy, SgxReference, SnpReference, TdxReference
from teelab.gateway.verified import Tee, VerifiedEvidence

CONTROLLER_HASH_BYTES = 32
CONTROLLER_CHECK = "controller"

# Per TEE: the claim carrying the controller, its name in the TEE's documentation, and its size in bytes.
_FIELDS: dict[Tee, tuple[str, str, int]] = {
    "sgx": ("config_id", "CONFIGID", 64),
    "tdx": ("mrconfigid", "MRCONFIGID", 48),
    "sev-snp": ("host_data", "HOST_DATA", 32),
}
_HINT = (
    "this is evidence from a kernel another gateway controls (or one launched without this gateway's "
    "controller): the host may be replaying an enclave it launched itself; do not trust it"
)


def controller_field(tee: Tee, controller_hash: bytes) -> bytes:
    """The platform field's expected value for ``controller_hash`` in evidence from ``tee``."""
    check_controller_hash(controller_hash)
    _claim, _label, size = _FIELDS[tee]
    return controller_hash + bytes(size - CONTROLLER_HASH_BYTES)


def check_controller_hash(controller_hash: object) -> bytes:
    """The caller's controller hash, or a UsageError: a wrong value is the caller's bug, not the evidence's."""
    if not isinstance(controller_hash, bytes) or len(controller_hash) != CONTROLLER_HASH_BYTES:
        raise UsageError(
            f"expected_controller must be the {CONTROLLER_HASH_BYTES}-byte SHA-256 of the gateway's identity "
            f"public key, got {type(controller_hash).__name__} of length {_length(controller_hash)}",
            hint="pass hashlib.sha256(gateway_public_key).digest()",
        )
    return controller_hash


def _length(value: object) -> str:
    return str(len(value)) if isinstance(value, bytes | bytearray | str) else "?"


def _reference(policy: AppraisalPolicy, tee: Tee) -> SgxReference | TdxReference | SnpReference | None:
    return {"sgx": policy.sgx, "tdx": policy.tdx, "sev-snp": policy.snp}[tee]


def judge_controller(evidence: VerifiedEvidence, policy: AppraisalPolicy, controller_hash: bytes) -> Check:
    """The check ``controller`` for authentic ``evidence``: passes iff its platform field names
    ``controller_hash``, or the policy binds the controller through the (pinned) measurement."""
    tee = evidence.tee
    claim, label, _size = _FIELDS[tee]
    expected = controller_field(tee, controller_hash)
    value = evidence.claims.get(claim)
    try:
        actual = bytes.fromhex(value) if isinstance(value, str) else None
    except ValueError:
        actual = None
    # Not secret, but constant time costs nothing and leaves no question.
    if actual is not None and hmac.compare_digest(actual, expected):
        detail = f"{label} carries this gateway's controller hash {controller_hash.hex()[:16]}…"
        return Check(CONTROLLER_CHECK, True, detail)
    ref = _reference(policy, tee)
    if ref is not None and ref.controller_binding == "measurement" and ref.pins_identity:
        detail = (
            f"{label} does not carry the controller; the policy binds the controller through the measured "
            f'image (controller_binding = "measurement") and pins that image'
        )
        return Check(CONTROLLER_CHECK, True, detail)
    shown = "absent" if actual is None else f"{actual.hex()[:16]}…" if any(actual) else "all zero"
    detail = (
        f"{label} is {shown}, not this gateway's controller hash {controller_hash.hex()[:16]}…: {_HINT}. "
        "If this TEE cannot carry the controller in a launch-time field, pin its image and set "
        f'{_section(tee)}.controller_binding = "measurement" in the policy'
    )
    return Check(CONTROLLER_CHECK, False, detail)


def _section(tee: Tee) -> str:
    return "snp" if tee == "sev-snp" else tee
