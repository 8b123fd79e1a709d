"""Judging a kernel's evidence against a dataset's release policy, with the gateway's verifier.

The release policy's reference values are the evidence verifier's policy format (``docs/policy.md``), parsed
once per policy text and cached. Trust anchors are the production roots, the simulated roots this machine
knows (``default_anchors()``, which marks them simulated), the configured extra roots, and the simulated
root of the configured collateral source.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from datetime import datetime

from teelab.errors import ConfigError, TeelabError
from teelab.gateway.anchors import TrustAnchors
from teelab.gateway.checks import Check
from teelab.gateway.policy import AppraisalPolicy, parse_policy
from teelab.gateway.result import AttestationResult
from teelab.gateway.verifier import default_anchors, verify_evidence
from teelab.sealed_store.kbs.collateral import CollateralSource
from teelab.sealed_store.kbs.reasons import Reason, denied

_POLICY_CACHE_SIZE = 512
_ANCHOR_RECHECK_SECONDS = 30.0
MAX_RELEASE_POLICY_BYTES = 64 * 1024


def parse_release_policy(text: str, dataset: str) -> AppraisalPolicy:
    """A dataset's release policy, or ``KeyBrokerError("policy_invalid")`` naming what is wrong."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_RELEASE_POLICY_BYTES:
        raise denied(Reason.POLICY_INVALID, f"the release policy is over {MAX_RELEASE_POLICY_BYTES} bytes")
    try:
        policy = parse_policy(text, source=f"release policy of {dataset}", default_id=f"kbs:{dataset}")
    except ConfigError as error:
        raise denied(Reason.POLICY_INVALID, error.message) from None
    if policy.report_data is not None:
        # The protocol fixes report_data per request (nonce, enclave key, grant); a fixed value would
        # either never match or, worse, replace the binding.
        raise denied(
            Reason.POLICY_INVALID, "a release policy must not set report_data: the protocol binds it"
        )
    return policy


class EvidenceAppraiser:
    def __init__(
        self,
        source: CollateralSource,
        *,
        intel_roots: Mapping[str, str] | None = None,
        simulated_roots: Mapping[str, str] | None = None,
    ) -> None:
        self.source = source
        self._intel_roots = dict(intel_roots or {})
        self._simulated_roots = dict(simulated_roots or {})
        self._lock = threading.Lock()
        self._policies: OrderedDict[tuple[str, str], AppraisalPolicy] = OrderedDict()
        self._anchors: tuple[float, dict[str, str], TrustAnchors] | None = None

    def policy(self, dataset: str, text: str, sha256: str) -> AppraisalPolicy:
        key = (dataset, sha256)
        with self._lock:
            cached = self._policies.get(key)
            if cached is not None:
                self._policies.move_to_end(key)
                return cached
        policy = parse_release_policy(text, dataset)
        with self._lock:
            self._policies[key] = policy
            while len(self._policies) > _POLICY_CACHE_SIZE:
                self._policies.popitem(last=False)
        return policy

    def anchors(self) -> TrustAnchors:
        """The anchors, rebuilt when the machine's simulated roots or the source's root change."""
        extra_simulated = {**self._simulated_roots, **self.source.simulated_roots()}
        with self._lock:
            cached = self._anchors
        if cached is not None and time.monotonic() - cached[0] < _ANCHOR_RECHECK_SECONDS:
            if cached[1] == extra_simulated:
                return cached[2]
        anchors = default_anchors()
        for fingerprint, label in self._intel_roots.items():
            anchors = anchors.with_intel_root(fingerprint, label)
        for fingerprint, label in extra_simulated.items():
            anchors = anchors.with_simulated_root(fingerprint, label)
        with self._lock:
            self._anchors = (time.monotonic(), extra_simulated, anchors)
        return anchors

    def appraise(
        self,
        evidence: bytes,
        *,
        certificates: bytes | None,
        collateral: bytes | None,
        policy: AppraisalPolicy,
        expected_report_data: bytes,
        at: datetime,
    ) -> AttestationResult:
        """The verifier's result; never raises for anything wrong with the evidence or its collateral."""
        try:
            chosen = collateral if collateral else self.source.collateral(at)
            anchors = self.anchors()  # after the source loaded, so its simulated root is known
            return verify_evidence(
                evidence,
                collateral=chosen,
                certs=certificates or None,
                at=at,
                anchors=anchors,
                policy=policy,
                expected_report_data=expected_report_data,
            )
        except TeelabError as error:
            return _rejected(policy, at, f"{type(error).__name__}: {error}")


def _rejected(policy: AppraisalPolicy, at: datetime, detail: str) -> AttestationResult:
    return AttestationResult(
        verdict="contraindicated",
        tee=None,
        simulated=False,
        tcb_status=None,
        advisory_ids=(),
        claims={},
        checks=(Check("kbs.collateral", False, detail),),
        verified_at=at,
        policy_id=policy.id,
    )
