"""Key broker grants for the Dask workers an attested kernel admits (``teelab.dask.TeeCluster``).

The kernel is the cluster's controller. Once it has verified a worker's evidence — its measured image, its
key ``E_w``, the cluster controller ``C_w`` in its launch-time field — it calls :func:`delegate_grant` and
seals the answer into the worker's bundle. The key broker derives the worker's grant from the kernel's own
session grant, on fresh evidence from the kernel (docs/protocols/kbs.md §4a): bound to ``E_w`` and ``C_w``,
the same user, no wider and no longer-lived than the kernel's. The worker then asks for each data key itself,
with its own evidence, so the audit log names the worker that received each key, and no key passes through
the kernel, the scheduler or the task graph.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from teelab.protocols.session import KeyBrokerSection
from teelab.sealed_store.notebook import broker_client, granted, installed_session


def delegate_grant(
    enclave_key: bytes, controller: bytes, *, datasets: Sequence[str] | None = None
) -> KeyBrokerSection | None:
    """The key broker section for a worker whose attested key is ``enclave_key`` (E_w.pub, 32 bytes),
    launched with controller hash ``controller`` (32 bytes); ``datasets`` narrows its grant.

    None when this process has no key-release session (not an attested kernel) or its session has no
    key broker; a refusal by the broker is a ``KeyBrokerError`` with its reason code.
    """
    session = installed_session()
    if session is None or session.key_broker is None or not session.key_broker.grant:
        return None
    holder = granted(session)
    with broker_client(holder) as client:
        child = client.delegate_grant(
            enclave_secret=session.enclave_secret,
            grant=holder.grant,
            attest=session.evidence,
            child_enclave_key=enclave_key,
            child_controller=controller,
            datasets=datasets,
        )
    # Same broker (address, pinned key, CA) and store as the kernel's; only the grant is the worker's own.
    return dataclasses.replace(holder.broker, grant=child.token, grant_expires_at=child.expires_at)
