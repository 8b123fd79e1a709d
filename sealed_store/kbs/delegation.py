"""Grant delegation: an attested session derives a child grant for another attested enclave it admitted.

A notebook kernel that runs a Dask cluster (``teelab.dask.TeeCluster``) attests each worker itself; each
worker then needs its own session grant, bound to its own key ``E_w`` and its cluster's controller ``C_w``, so
that every release a worker makes is judged on the worker's own evidence. The kernel asks for that grant
with its own session grant and fresh evidence over a Challenge nonce (docs/protocols/kbs.md §4a). The
checks, in order; the first that fails decides the reason code:

1. the parent grant verifies (signature, issuer, audience, shape)          grant_invalid (junk: not audited)
2. the nonce was issued here, is unexpired and not known to be spent       nonce_invalid / nonce_expired
3. the parent grant has not expired and names this request's E.pub        grant_expired / grant_invalid
4. the parent is no child itself (no chains) and names a controller        forbidden
5. the datasets asked for are within the parent's                          not_granted
6. the evidence verifies (genuine TEE, TCB, not debug), its report_data is
   SHA-512("teelab/kbs/v1/delegate" ‖ nonce ‖ E.pub ‖ SHA-256(parent) ‖ SHA-256(child request)),
   and its launch-time field carries the parent's controller               evidence_rejected
7. commit: spend the nonce (atomically), audit parent, child, user; then sign and seal the child grant
   to the parent's E.pub                                                   nonce_invalid

The measurement is not judged here: a child grant releases nothing by itself, and each of the child's
releases is appraised against the dataset's release policy, with the child's own evidence. What this step
adds is that only the attested session holding the parent grant, launched by the parent's controller, can
mint a child, and that the child is never wider than the parent: same user and groups, same or fewer
datasets, an expiry no later than the parent's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from teelab.gateway.policy import AppraisalPolicy
from teelab.sealed_store.kbs.audit import AuditValue
from teelab.sealed_store.kbs.controller import controller_problem
from teelab.sealed_store.kbs.grants import SessionGrant, check_grant_times, issue_session_grant
from teelab.sealed_store.kbs.model import IssuedGrant
from teelab.sealed_store.kbs.protocol import (
    delegation_report_data,
    delegation_request_digest,
    enclave_key_sha256,
    seal_delegated_grant,
)
from teelab.sealed_store.kbs.reasons import Denied, Junk, Reason
from teelab.sealed_store.kbs.release import KeyRelease, evidence_fields

# Genuine, current TCB, not a debug enclave; simulated quotes only where this broker trusts the simulated
# root (a production broker does not). Measurements are the dataset release policies' business.
DELEGATION_POLICY = AppraisalPolicy(id="kbs:delegation", allow_simulation=True)


@dataclass(frozen=True)
class DelegateInput:
    """A validated delegation request (shapes checked; nothing in it is trusted yet)."""

    nonce: bytes
    enclave_key: bytes  # the parent session's E.pub
    grant: str  # the parent grant, opened
    child_enclave_key_sha256: str
    child_controller_sha256: str
    datasets: tuple[str, ...] | None
    ttl_seconds: int | None
    evidence: bytes
    certificates: bytes | None = None
    collateral: bytes | None = None

    def request_digest(self) -> bytes:
        return delegation_request_digest(
            self.child_enclave_key_sha256,
            self.child_controller_sha256,
            self.datasets or (),
            self.ttl_seconds or 0,
        )


@dataclass(frozen=True)
class Delegated:
    issued: IssuedGrant
    sealed_grant: bytes  # the child grant sealed to the parent's E.pub for this nonce


class GrantDelegation:
    def __init__(self, releases: KeyRelease, *, max_ttl: timedelta) -> None:
        self.releases = releases
        self.max_ttl = max_ttl

    def delegate(self, request: DelegateInput) -> Delegated:
        releases = self.releases
        at = releases.clock()
        fields: dict[str, AuditValue] = {
            "actor": "anonymous",
            "parent_ekh": enclave_key_sha256(request.enclave_key),
            "ekh": request.child_enclave_key_sha256,
            "controller": request.child_controller_sha256,
            "datasets": None if request.datasets is None else list[AuditValue](request.datasets),
        }
        try:
            parent = releases.grants.verify(request.grant, at=at, check_times=False)
        except Denied as refusal:
            releases.spend_junk_nonce(request.nonce)
            raise Junk(refusal.public()) from None
        fields.update(actor=f"user:{parent.user}", user=parent.user, parent_grant_id=parent.grant_id)
        try:
            expiry = self._check(request, parent, at, fields)
        except Denied as refusal:
            releases.record_denial(request.nonce, at, refusal, fields, event="delegate")
            raise refusal.public() from None
        ttl = self.max_ttl if request.ttl_seconds is None else timedelta(seconds=request.ttl_seconds)
        narrowed = request.datasets if request.datasets is not None else parent.datasets
        issued = issue_session_grant(
            releases.keys.signing_key,
            releases.keys.signing_key_id,
            user=parent.user,
            groups=list(parent.groups),
            enclave_key_sha256=request.child_enclave_key_sha256,
            controller_sha256=request.child_controller_sha256,
            now=at,
            ttl=ttl,
            parent_id=parent.grant_id,
            datasets=None if narrowed is None else list(narrowed),
            not_after=parent.expires_at,
        )
        fields.update(grant_id=issued.grant_id, expires_at=issued.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ"))
        # Recorded before it is handed out: no child grant exists that the log does not know.
        replayed = releases.store.commit_delegation(
            nonce=request.nonce, nonce_expires_at=expiry, at=at, fields=fields
        )
        releases.nonces.spent(request.nonce)
        if replayed is not None:
            raise replayed.public()
        return Delegated(issued, seal_delegated_grant(request.enclave_key, request.nonce, issued.token))

    def _check(
        self, request: DelegateInput, parent: SessionGrant, at: datetime, fields: dict[str, AuditValue]
    ) -> datetime:
        releases = self.releases
        expiry = releases.nonces.check(request.nonce, at)
        check_grant_times(parent, at)
        if parent.enclave_key_sha256 != fields["parent_ekh"]:
            raise Denied(
                Reason.GRANT_INVALID,
                f"the session grant is for enclave key {parent.enclave_key_sha256}, not the key in this "
                "request (a grant replayed from another session)",
            )
        if parent.parent_id is not None:
            raise Denied(
                Reason.FORBIDDEN,
                f"the grant {parent.grant_id} is itself delegated (from {parent.parent_id}): "
                "a child grant cannot be delegated further",
            )
        if parent.controller_sha256 is None:
            raise Denied(
                Reason.FORBIDDEN,
                "the session grant names no controller: only a controller-bound session may delegate",
            )
        if request.datasets is not None and parent.datasets is not None:
            wider = sorted(set(request.datasets) - set(parent.datasets))
            if wider:
                raise Denied(Reason.NOT_GRANTED, f"the parent grant does not cover {', '.join(wider)}")
        result = releases.appraiser.appraise(
            request.evidence,
            certificates=request.certificates,
            collateral=request.collateral,
            policy=DELEGATION_POLICY,
            expected_report_data=delegation_report_data(
                request.nonce, request.enclave_key, request.grant.encode(), request.request_digest()
            ),
            at=at,
        )
        fields.update(evidence_fields(result))
        if not result.ok:
            raise Denied(Reason.EVIDENCE_REJECTED, result.error or "the evidence was rejected")
        problem = controller_problem(result, parent.controller_sha256)
        if problem is not None:
            raise Denied(Reason.EVIDENCE_REJECTED, problem)
        return expiry
