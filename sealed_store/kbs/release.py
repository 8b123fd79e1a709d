"""Key release: challenge, then evidence + session grant -> the data key sealed to the enclave's key.

The checks, in order (docs/protocols/kbs.md §5); the first that fails decides the reason code:

1. the session grant verifies (signature, issuer, audience, shape)        grant_invalid (junk: not audited)
2. the nonce was issued by this KBS (its tag), has not expired, and is
   not known to be spent                                                 nonce_invalid / nonce_expired
3. the grant has not expired and names this request's enclave key:
   grant.ekh == SHA-256(E.pub)                                           grant_expired / grant_invalid
4. the grant covers the dataset (a delegated grant may be narrowed, ``dst``), and the grant's user, a
   group the user is in *now*, or a group its identity provider reported in the grant, holds an
   unexpired grant on the dataset                                        not_granted
5. the dataset and the version exist (and are not deleted)               dataset_unknown / version_unknown
6. the dataset's release period has not ended                            release_expired
7. the evidence verifies, satisfies the dataset's release policy, its report_data is
   SHA-512("teelab/kbs/v1" ‖ nonce ‖ E.pub ‖ SHA-256(grant) ‖ SHA-256(dataset ‖ 0 ‖ u32be(version))),
   and, when the grant names a controller, its launch-time field carries it  evidence_rejected
8. commit, serialised with every other write: spend the nonce (the database
   decides "unused", atomically), check 4-6 again against the current state,
   unwrap the key, audit                                                 nonce_invalid / 4-6

Access (4) is checked before existence (5), so someone without a grant learns nothing about which datasets
exist. A request whose grant does not verify, or that does not even parse, is junk: no one authenticated it,
so it is counted against its peer (``junk.py``) and never written to the signed audit log. Every other
refusal is audited and spends the nonce: one try per challenge. Evidence is judged outside the serialised
commit so verification (CPU) runs in parallel; the commit's re-check makes a revocation, deletion or policy
change that lands meanwhile win. The key is sealed to E.pub with the answer (dataset, version, manifest
digest) in its HPKE info, so the answer cannot be rewritten on the way back.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from teelab.errors import KeyBrokerError
from teelab.gateway.result import AttestationResult
from teelab.sealed_store.kbs.appraisal import EvidenceAppraiser
from teelab.sealed_store.kbs.audit import AuditValue
from teelab.sealed_store.kbs.controller import controller_problem
from teelab.sealed_store.kbs.crypto import KbsKeys
from teelab.sealed_store.kbs.grants import GrantVerifier, SessionGrant, check_grant_times
from teelab.sealed_store.kbs.model import Challenge
from teelab.sealed_store.kbs.nonces import NonceIssuer, nonce_key
from teelab.sealed_store.kbs.protocol import (
    enclave_key_sha256,
    release_report_data,
    seal_dek_for_enclave,
)
from teelab.sealed_store.kbs.reasons import Denied, Junk, Reason, denied
from teelab.sealed_store.kbs.store import Store

Clock = Callable[[], datetime]
_MEASUREMENT_CLAIMS = ("mrenclave", "mrsigner", "mrtd", "measurement")


@dataclass(frozen=True)
class ReleaseInput:
    """A validated release request (shapes checked; nothing in it is trusted yet)."""

    nonce: bytes
    dataset: str
    version: int | None
    enclave_key: bytes
    grant: str
    evidence: bytes
    certificates: bytes | None = None
    collateral: bytes | None = None


@dataclass(frozen=True)
class ReleaseOutput:
    dataset: str
    version: int
    manifest_sha256: str
    sealed_dek: bytes = field(repr=False)


class KeyRelease:
    def __init__(
        self,
        store: Store,
        keys: KbsKeys,
        appraiser: EvidenceAppraiser,
        *,
        clock: Clock,
        nonce_ttl: timedelta,
    ) -> None:
        self.store = store
        self.keys = keys
        self.appraiser = appraiser
        self.clock = clock
        self.nonces = NonceIssuer(nonce_key(keys.master_key), nonce_ttl)
        self.grants = GrantVerifier(keys.signing_key.public_key())
        self._purge_lock = threading.Lock()
        self._last_purge: datetime | None = None

    def challenge(self) -> Challenge:
        nonce, expires_at = self.nonces.issue(self.clock())
        return Challenge(nonce, expires_at)

    def _purge_due(self, at: datetime) -> datetime | None:
        # Spent nonces are deleted once expired, now and then (once per TTL), inside a release's commit.
        with self._purge_lock:
            last = self._last_purge
            if last is not None and timedelta(0) <= at - last < self.nonces.ttl:
                return None
            self._last_purge = at
            return at - self.nonces.ttl

    def record_denial(
        self,
        nonce: bytes | None,
        at: datetime,
        refusal: Denied,
        fields: dict[str, AuditValue],
        event: str = "release",
    ) -> None:
        expiry = self.nonces.authentic(nonce) if nonce is not None else None
        self.store.record_denial(
            nonce=nonce if expiry is not None else None,
            nonce_expires_at=expiry,
            at=at,
            refusal=refusal,
            fields=fields,
            event=event,
        )
        if nonce is not None and expiry is not None:
            self.nonces.spent(nonce)

    def spend_junk_nonce(self, nonce: bytes | None) -> None:
        """A junk request's nonce, if authentic, is spent on this replica (one try per challenge) without a
        database write: junk costs a counter, not a transaction."""
        if nonce is not None and self.nonces.authentic(nonce) is not None:
            self.nonces.spent(nonce)

    def release(self, request: ReleaseInput) -> ReleaseOutput:
        """The sealed data key, or ``KeyBrokerError`` with the reason code (the detail is audited)."""
        at = self.clock()
        fields: dict[str, AuditValue] = {
            "actor": "anonymous",
            "dataset": request.dataset,
            "requested_version": request.version,
            "ekh": enclave_key_sha256(request.enclave_key),
        }
        try:
            grant = self.grants.verify(request.grant, at=at, check_times=False)
        except Denied as refusal:
            self.spend_junk_nonce(request.nonce)
            raise Junk(refusal.public()) from None
        fields.update(actor=f"user:{grant.user}", user=grant.user, grant_id=grant.grant_id)
        try:
            expected_version, policy_sha256, nonce_expiry = self._check(request, grant, at, fields)
        except Denied as refusal:
            self.record_denial(request.nonce, at, refusal, fields)
            raise refusal.public() from None
        commit = self.store.commit_release(
            nonce=request.nonce,
            nonce_expires_at=nonce_expiry,
            purge_before=self._purge_due(at),
            dataset=request.dataset,
            version=request.version,
            user=grant.user,
            groups=grant.groups,
            policy_sha256=policy_sha256,
            expected_version=expected_version,
            at=at,
            fields=fields,
            open_dek=self.keys.unwrap_dek,
        )
        self.nonces.spent(request.nonce)
        if commit.refusal is not None or commit.dek is None or commit.version is None:
            raise commit.refusal.public() if commit.refusal else denied(Reason.INTERNAL)
        return ReleaseOutput(
            dataset=request.dataset,
            version=commit.version,
            manifest_sha256=commit.manifest_sha256 or "",
            sealed_dek=seal_dek_for_enclave(
                request.enclave_key,
                request.nonce,
                commit.dek,
                dataset=request.dataset,
                version=commit.version,
                manifest_sha256=commit.manifest_sha256 or "",
            ),
        )

    def _check(
        self, request: ReleaseInput, grant: SessionGrant, at: datetime, fields: dict[str, AuditValue]
    ) -> tuple[int, str, datetime]:
        # 2. the nonce: authentic and unexpired here; spent (atomically) by the commit or the denial's record
        expiry = self.nonces.check(request.nonce, at)
        # 3. the session grant's times, and its binding to this enclave key
        check_grant_times(grant, at)
        if grant.enclave_key_sha256 != fields["ekh"]:
            raise Denied(
                Reason.GRANT_INVALID,
                f"the session grant is for enclave key {grant.enclave_key_sha256}, "
                "not the key in this request (a grant replayed from another session)",
            )
        # 4. a delegated grant narrowed to some datasets releases only those
        if not grant.covers(request.dataset):
            raise Denied(
                Reason.NOT_GRANTED,
                f"the delegated grant {grant.grant_id} covers only {', '.join(grant.datasets or ())}",
            )
        # 4-6. access, existence, release period
        view = self.store.release_view(request.dataset, request.version, grant.user, at, groups=grant.groups)
        refusal = view.refusal(request.version, at)
        if refusal is not None:
            raise refusal
        assert view.version is not None and view.policy_toml is not None and view.policy_sha256 is not None
        fields.update(version=view.version, policy_sha256=view.policy_sha256)
        # 7. the evidence against the dataset's release policy, bound to nonce, enclave key, grant and request
        result = self._appraise(request, view.policy_toml, view.policy_sha256, at)
        fields.update(evidence_fields(result))
        if not result.ok:
            raise Denied(Reason.EVIDENCE_REJECTED, result.error or "the evidence was rejected")
        if grant.controller_sha256 is not None:
            problem = controller_problem(result, grant.controller_sha256)
            if problem is not None:
                raise Denied(Reason.EVIDENCE_REJECTED, problem)
        return view.version, view.policy_sha256, expiry

    def _appraise(
        self, request: ReleaseInput, policy_toml: str, policy_sha256: str, at: datetime
    ) -> AttestationResult:
        try:
            policy = self.appraiser.policy(request.dataset, policy_toml, policy_sha256)
        except KeyBrokerError as error:  # stored before a verifier change made it invalid: refuse safely
            raise Denied(
                Reason.EVIDENCE_REJECTED, f"the stored release policy no longer parses: {error}"
            ) from None
        return self.appraiser.appraise(
            request.evidence,
            certificates=request.certificates,
            collateral=request.collateral,
            policy=policy,
            expected_report_data=release_report_data(
                request.nonce,
                request.enclave_key,
                request.grant.encode(),
                dataset=request.dataset,
                version=request.version,
            ),
            at=at,
        )


def evidence_fields(result: AttestationResult) -> dict[str, AuditValue]:
    fields: dict[str, AuditValue] = {
        "tee": result.tee,
        "verdict": result.verdict,
        "simulated": result.simulated,
        "tcb_status": result.tcb_status,
        "policy_id": result.policy_id,
    }
    for name in _MEASUREMENT_CLAIMS:
        value = result.claims.get(name)
        if isinstance(value, str):
            fields[name] = value
    return fields
