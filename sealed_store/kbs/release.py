"""Key release: challenge, then evidence + session grant -> the data key sealed to the enclave's key.

The checks, in order (docs/protocols/kbs.md §5); the first that fails decides the reason code:

1. the nonce was issued by this KBS (its tag), has not expired, and is
   not known to be spent                                                 nonce_invalid / nonce_expired
2. the session grant verifies (signature, issuer, audience, expiry) and
   names this request's enclave key: grant.ekh == SHA-256(E.pub)         grant_invalid / grant_expired
3. the grant's user, or a group the user is in *now*, holds an unexpired
   grant on the dataset                                                  not_granted
4. the dataset and the version exist (and are not deleted)               dataset_unknown / version_unknown
5. the dataset's release period has not ended                            release_expired
6. the evidence verifies, satisfies the dataset's release policy, and its
   report_data is SHA-512("teelab/kbs/v1" ‖ nonce ‖ E.pub ‖ SHA-256(grant))  evidence_rejected
7. commit, serialised with every other write: spend the nonce (the database
   decides "unused", atomically), check 3-5 again against the current state,
   unwrap the key, audit                                                 nonce_invalid / 3-5

Access (3) is checked before existence (4), so someone without a grant learns nothing about which datasets
exist. Every refusal spends the nonce: one try per challenge. Evidence is judged outside the serialised
commit so verification (CPU) runs in parallel; the commit's re-check makes a revocation, deletion or policy
change that lands meanwhile win.
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
from teelab.sealed_store.kbs.crypto import KbsKeys
from teelab.sealed_store.kbs.grants import GrantVerifier
from teelab.sealed_store.kbs.model import Challenge
from teelab.sealed_store.kbs.nonces import NonceIssuer, nonce_key
from teelab.sealed_store.kbs.protocol import (
    enclave_key_sha256,
    release_report_data,
    seal_dek_for_enclave,
)
from teelab.sealed_store.kbs.reasons import Denied, Reason, denied
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

    def _record_denial(
        self, nonce: bytes | None, at: datetime, refusal: Denied, fields: dict[str, AuditValue]
    ) -> None:
        expiry = self.nonces.authentic(nonce) if nonce is not None else None
        self.store.record_denial(
            nonce=nonce if expiry is not None else None,
            nonce_expires_at=expiry,
            at=at,
            refusal=refusal,
            fields=fields,
        )
        if nonce is not None and expiry is not None:
            self.nonces.spent(nonce)

    def refuse_malformed(self, nonce: bytes | None, detail: str) -> None:
        """Record a release request that did not even parse (its nonce, if authentic, is spent)."""
        self._record_denial(
            nonce, self.clock(), Denied(Reason.INVALID_ARGUMENT, detail), {"actor": "anonymous"}
        )

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
            user, expected_version, policy_sha256, nonce_expiry = self._check(request, at, fields)
        except Denied as refusal:
            self._record_denial(request.nonce, at, refusal, fields)
            raise refusal.public() from None
        commit = self.store.commit_release(
            nonce=request.nonce,
            nonce_expires_at=nonce_expiry,
            purge_before=self._purge_due(at),
            dataset=request.dataset,
            version=request.version,
            user=user,
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
            sealed_dek=seal_dek_for_enclave(request.enclave_key, request.nonce, commit.dek),
        )

    def _check(
        self, request: ReleaseInput, at: datetime, fields: dict[str, AuditValue]
    ) -> tuple[str, int, str, datetime]:
        # 1. the nonce: authentic and unexpired here; spent (atomically) by the commit or the denial's record
        expiry = self.nonces.check(request.nonce, at)
        # 2. the session grant, bound to this enclave key
        grant = self.grants.verify(request.grant, at=at)
        fields.update(actor=f"user:{grant.user}", user=grant.user, grant_id=grant.grant_id)
        if grant.enclave_key_sha256 != fields["ekh"]:
            raise Denied(
                Reason.GRANT_INVALID,
                f"the session grant is for enclave key {grant.enclave_key_sha256}, "
                "not the key in this request (a grant replayed from another session)",
            )
        # 3-5. access, existence, release period
        view = self.store.release_view(request.dataset, request.version, grant.user, at)
        refusal = view.refusal(request.version, at)
        if refusal is not None:
            raise refusal
        assert view.version is not None and view.policy_toml is not None and view.policy_sha256 is not None
        fields.update(version=view.version, policy_sha256=view.policy_sha256)
        # 6. the evidence against the dataset's release policy, bound to nonce, enclave key and grant
        try:
            policy = self.appraiser.policy(request.dataset, view.policy_toml, view.policy_sha256)
        except KeyBrokerError as error:  # stored before a verifier change made it invalid: refuse safely
            raise Denied(
                Reason.EVIDENCE_REJECTED, f"the stored release policy no longer parses: {error}"
            ) from None
        result = self.appraiser.appraise(
            request.evidence,
            certificates=request.certificates,
            collateral=request.collateral,
            policy=policy,
            expected_report_data=release_report_data(
                request.nonce, request.enclave_key, request.grant.encode()
            ),
            at=at,
        )
        fields.update(_evidence_fields(result))
        if not result.ok:
            raise Denied(Reason.EVIDENCE_REJECTED, result.error or "the evidence was rejected")
        return grant.user, view.version, view.policy_sha256, expiry


def _evidence_fields(result: AttestationResult) -> dict[str, AuditValue]:
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
