"""``read_dataset`` — the one call an analyst makes, inside an attested kernel.

1. fresh evidence from this kernel's TEE, bound to the key broker's nonce, the session's attested key ``E``
   and the session grant the gateway obtained after attesting the kernel;
2. the broker checks the evidence against the dataset's release policy and the grant against the dataset's
   grants, and answers with the current version's data key sealed to ``E``;
3. the sealed parts are read from the store and decrypted here — only the columns and row groups asked for.

Nothing leaves the kernel: the data key lives in this call's memory only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from teelab.errors import KeyBrokerError
from teelab.protocols.session import KeyBrokerSection
from teelab.session import NotAttested

if TYPE_CHECKING:
    from teelab.sealed_store.kbs.client import KbsClient
    from teelab.sealed_store.kbs.model import ReleasedKey

_HINTS = {
    "not_granted": "ask the dataset's owner for access (`teelab dataset grant NAME user:YOU`)",
    "evidence_rejected": "this kernel's attestation does not satisfy the dataset's release policy; ask the "
    "owner which kernel image and TEE it accepts",
    "dataset_unknown": "check the name with the dataset browser or `teelab dataset list`",
    "grant_expired": "the session grant expired: restart the kernel to attest again and get a fresh one",
    "grant_invalid": "restart the kernel to attest again and get a fresh session grant",
    "release_expired": "the owner stopped releasing this dataset's key",
    "unavailable": "the key broker cannot be reached",
}


@dataclass(frozen=True)
class ReaderSession:
    """What this reader needs to ask the key broker for a data key; the kernel boot installs it."""

    key_broker: KeyBrokerSection | None  # None: no key broker was configured when the session was attested
    enclave_secret: X25519PrivateKey  # the secret of E, whose public half the session's evidence binds
    evidence: Callable[[bytes], Any]  # the TEE's evidence function, for fresh evidence at each release


_release: ReaderSession | None = None


def install_key_release(release: ReaderSession) -> None:
    """Called once by the kernel boot (and by a Dask worker's boot), beside :func:`teelab.session.install`."""
    global _release
    _release = release


def installed_session() -> ReaderSession | None:
    """The key-release session this process's boot installed, if any (``teelab.sealed_store.dask_keys``)."""
    return _release


def current_session() -> ReaderSession:
    """The installed session, or :class:`NotAttested` saying where ``read_dataset`` works."""
    session = _release
    if session is None:
        raise NotAttested(
            "read_dataset works only inside an attested teelab kernel",
            hint='switch this notebook to a teelab kernel, e.g. "Python 3 (teelab · simulated TEE)"',
        )
    return session


@dataclass(frozen=True)
class SessionGrantHolder:
    """A session whose key broker section has everything a release needs."""

    session: ReaderSession
    broker: KeyBrokerSection
    grant: str = field(repr=False)
    kbs_key: bytes


def granted(session: ReaderSession) -> SessionGrantHolder:
    """``session`` with its grant and broker key, or ``KeyBrokerError("no_session_grant")``."""
    broker = session.key_broker
    grant = broker.grant if broker is not None else None
    kbs_key = broker.kbs_key if broker is not None else None
    if (
        broker is None
        or not (grant and kbs_key and broker.address and broker.store)
        or session.evidence is None
    ):
        raise KeyBrokerError(
            "no_session_grant",
            "this kernel has no session grant: no key broker was reachable when the session was attested",
            hint="start the key broker (`teelab kbs serve`), then restart the kernel",
        )
    return SessionGrantHolder(session, broker, grant, kbs_key)


@contextmanager
def broker_client(holder: SessionGrantHolder) -> Iterator[KbsClient]:
    """A client of the session's key broker, its HPKE key pinned (the connection crosses the host)."""
    from teelab.sealed_store.kbs.client import KbsClient

    broker = holder.broker
    with KbsClient(
        broker.address,
        kbs_public_key=holder.kbs_key,
        # A private CA of a broker at grpcs://, from the sealed bundle.
        tls_ca=broker.kbs_ca.encode("ascii") if broker.kbs_ca else None,
    ) as client:
        yield client


def release_key(session: ReaderSession, name: str, *, version: int | None = None) -> ReleasedKey:
    """One key release for this session: fresh evidence, the session's grant, the key opened here."""
    holder = granted(session)
    try:
        with broker_client(holder) as client:
            return client.fetch_key(
                name,
                enclave_secret=session.enclave_secret,
                grant=holder.grant,
                attest=session.evidence,
                version=version,
            )
    except KeyBrokerError as error:
        refusal = KeyBrokerError(
            error.reason,
            f"the key broker refused {name!r}: {error.message}",
            hint=error.hint or _HINTS.get(error.reason),
        )
    # Raised outside the handler, so it carries no chain: on a Dask worker it is pickled to the client with
    # its traceback and context, and the gRPC error behind it cannot be pickled.
    raise refusal


def read_dataset(
    name: str,
    columns: Sequence[str] | None = None,
    filters: Any = None,
    *,
    version: int | None = None,
    engine: Literal["pandas", "dask"] = "pandas",
) -> Any:
    """Read sealed dataset ``name`` into a pandas DataFrame, decrypting only what is asked for.

    ``columns``: the columns to read; ``filters``: row filters in pyarrow's form, e.g.
    ``[("region", "==", "EU")]`` (row groups that cannot match are never decrypted); ``version``: a specific
    version instead of the current one (the key broker decides whether it still releases it).
    ``engine="dask"``: a lazy Dask DataFrame, one partition per sealed part, each decrypted by the worker
    that reads it with a key it obtains itself (:func:`teelab.sealed_store.dask.read_dataset`).
    """
    if engine == "dask":
        from teelab.sealed_store.dask import read_dataset as read_with_dask

        return read_with_dask(name, columns, filters, version=version)
    if engine != "pandas":
        raise ValueError(f'engine must be "pandas" or "dask", not {engine!r}')
    from teelab.sealed_store.reader import read_sealed
    from teelab.sealed_store.storage import DatasetStore

    session = current_session()
    if not isinstance(name, str):
        raise TypeError(f"the dataset name must be a string, not {type(name).__name__}")
    key = release_key(session, name, version=version)
    assert session.key_broker is not None  # release_key checked it
    # Tampering, a missing part or a rollback surfaces as a SealedDataError naming the part and the problem.
    return read_sealed(
        DatasetStore(session.key_broker.store),
        name,
        version=key.version,
        manifest_sha256=key.manifest_sha256,
        dek=key.dek,
        columns=list(columns) if columns is not None else None,
        filters=filters,
    )
