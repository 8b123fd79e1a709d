"""Inside an attested teelab kernel: the defaults a :class:`~teelab.dask.TeeCluster` takes from the kernel itself.

There, teelab's data folder is the TEE's private home, so the image ``teelab kernel install`` built and its sim
policy are not to be found; and they would be the wrong source anyway. A cluster made in a kernel launches **the
very image this kernel runs in** and admits only nodes of **exactly this kernel's measurement**:

- *The measurement* comes from ``teelab.session.attestation()``: the claims of the evidence the kernel's
  controller (its gateway) verified, bound to the session key ``E`` that only this TEE holds, delivered in the
  bundle sealed to ``E`` and signed by the controller. Not from a quote the kernel makes and parses itself:
  on hardware a quote passes through the host's quoting service, which could hand back a genuine quote of an
  enclave of its own; the verified claims cannot be swapped that way.
- *Simulation* is allowed exactly when the kernel itself was accepted as simulated (its own policy allowed
  it); debug when the kernel is a debug enclave (the nodes are the same enclave); the kernel's own TCB status
  and advisories are accepted besides ``UpToDate``, as its own policy accepted them.
- *The image folder* is the one the kernel's launcher placed its ``{tee_state}`` in
  (``launching.launched_image_dir``) — the host's word, so it is checked: an image there of another
  measurement is refused here with a clear error, and were the host to swap it after the check, every node
  launched from it fails attestation against the pinned own-measurement policy (check ``mrenclave``) and is
  killed before anything is sealed to it.
- *The backend* is the kernel's own, on the simulated platform the kernel itself runs on
  (``backends.sibling_backend``), so the nodes' quotes chain to the root the key broker already trusts.

Outside a kernel (a plain Python process on the host) none of this applies: :func:`own_kernel` is None.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import teelab.session
from teelab.enclave_runtime.backend import EnclaveBackend
from teelab.enclave_runtime.backends import sibling_backend
from teelab.enclave_runtime.launching import launched_image_dir
from teelab.enclave_runtime.runtime import current_runtime
from teelab.errors import ConfigError, EvidenceError
from teelab.gateway.policy import AppraisalPolicy, SgxReference, SnpReference, TdxReference

_HINT = "pass them explicitly: TeeCluster(image='<the kernel image folder>', policy='<the kernel policy>')"


@dataclass(frozen=True)
class OwnKernel:
    """What a cluster made in this kernel defaults to."""

    backend: EnclaveBackend
    image_dir: Path | None  # None: the launcher placed no image folder here (e.g. inside a LibOS)
    measurement: str
    policy: AppraisalPolicy


def own_kernel(backend: str) -> OwnKernel | None:
    """This kernel's own facts when this process is an attested teelab kernel running in a TEE of ``backend``;
    None elsewhere (a plain process on the host, or a cluster of another backend than the kernel's)."""
    if not teelab.session.is_attested():
        return None
    try:
        runtime = current_runtime()
    except EvidenceError:
        return None  # an attested session installed in a process outside any TEE (a test's stand-in)
    if runtime.backend != backend:
        return None
    attestation = teelab.session.attestation()
    policy = own_measurement_policy(attestation, backend)
    return OwnKernel(sibling_backend(backend), launched_image_dir(), attestation.measurement or "", policy)


def own_measurement_policy(result: Mapping[str, Any], backend: str) -> AppraisalPolicy:
    """A policy admitting exactly the measured identity of ``result`` (this kernel's attestation result)."""
    claims = result.get("claims") or {}
    tee = result.get("tee")
    sgx = tdx = snp = None
    try:
        if tee == "sgx":
            sgx = SgxReference(
                mrenclave=(str(claims["mrenclave"]),),
                mrsigner=(str(claims["mrsigner"]),),
                isv_prod_id=int(claims["isv_prod_id"]),
            )
        elif tee == "tdx":
            tdx = TdxReference(mrtd=(str(claims["mrtd"]),))
        elif tee == "sev-snp":
            snp = SnpReference(measurement=(str(claims["measurement"]),))
        else:
            raise ConfigError(
                f"this kernel's attestation names no TEE teelab can pin ({tee!r}), so no default node policy",
                hint=_HINT,
            )
    except (KeyError, TypeError, ValueError) as error:
        raise ConfigError(
            f"this kernel's attestation lacks the measured identity to pin its nodes to: {error}", hint=_HINT
        ) from None
    own_status = result.get("tcb_status")
    statuses = ("UpToDate", *((str(own_status),) if own_status and own_status != "UpToDate" else ()))
    return AppraisalPolicy(
        id=f"teelab-dask-own-kernel-{backend}",
        accepted_tcb_statuses=statuses,
        accepted_advisory_ids=tuple(str(a) for a in result.get("advisory_ids") or ()),
        allow_debug=claims.get("debug") is True,
        allow_simulation=result.get("simulated") is True,
        sgx=sgx,
        tdx=tdx,
        snp=snp,
    )
