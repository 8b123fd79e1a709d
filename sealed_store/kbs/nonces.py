"""Challenge nonces that need no database write to issue.

A nonce is 32 bytes: ``random (12) ‖ u64be(expiry, µs since the epoch) ‖ HMAC-SHA256(K, random ‖ expiry)[:12]``
with ``K = HKDF(master key, "teelab/kbs/v1/nonce")``. The tag proves the KBS issued it (any replica sharing
the master key can check it) and protects the expiry from editing. *Single use* is enforced where it must be
atomic: the release's commit inserts the nonce into ``kbs_used_nonces`` (primary key) in the same
transaction as its audit entry, so of two releases racing on one nonce exactly one commits; used nonces
are purged once expired, when they could not be replayed anyway.

So Challenge is pure computation (a write per challenge would cost as much as the release itself, and an
unauthenticated caller could fill the database with them), while the guarantees — issued here, unexpired,
used once — are the same as a stored nonce's.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from teelab.sealed_store.kbs.protocol import NONCE_SIZE, PROTOCOL
from teelab.sealed_store.kbs.reasons import Denied, Reason

_RANDOM = 12
_TAG = 12
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Recently spent nonces, to refuse a replay before spending CPU on its evidence (the database decides).
_SPENT_MEMORY = 65536


def nonce_key(master_key: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=PROTOCOL.encode() + b"/nonce").derive(
        master_key
    )


@dataclass
class NonceIssuer:
    key: bytes = field(repr=False)
    ttl: timedelta
    _spent: OrderedDict[bytes, None] = field(default_factory=OrderedDict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def issue(self, at: datetime) -> tuple[bytes, datetime]:
        expires_at = at + self.ttl
        body = secrets.token_bytes(_RANDOM) + struct.pack(">Q", _micros(expires_at))
        return body + self._tag(body), expires_at

    def _tag(self, body: bytes) -> bytes:
        return hmac.new(self.key, body, hashlib.sha256).digest()[:_TAG]

    def authentic(self, nonce: bytes) -> datetime | None:
        """The nonce's expiry if this KBS issued it, else None."""
        if len(nonce) != NONCE_SIZE:
            return None
        body, tag = nonce[:-_TAG], nonce[-_TAG:]
        if not hmac.compare_digest(self._tag(body), tag):
            return None
        (micros,) = struct.unpack(">Q", body[_RANDOM:])
        try:
            return _EPOCH + timedelta(microseconds=micros)
        except OverflowError:
            return None

    def check(self, nonce: bytes, at: datetime) -> datetime:
        """The nonce's expiry; ``Denied`` when it is forged, known spent, or expired."""
        expiry = self.authentic(nonce)
        if expiry is None:
            raise Denied(Reason.NONCE_INVALID, "the nonce was not issued by this key broker")
        with self._lock:
            if nonce in self._spent:
                raise Denied(Reason.NONCE_INVALID, "the nonce was already used")
        if at >= expiry:
            raise Denied(Reason.NONCE_EXPIRED, f"the nonce expired at {expiry.isoformat()}")
        return expiry

    def spent(self, nonce: bytes) -> None:
        with self._lock:
            self._spent[nonce] = None
            while len(self._spent) > _SPENT_MEMORY:
                self._spent.popitem(last=False)


def _micros(at: datetime) -> int:
    return (at.astimezone(UTC) - _EPOCH) // timedelta(microseconds=1)
