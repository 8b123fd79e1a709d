"""Session grants: short-lived tokens binding a notebook user to one attested session's enclave key.

The gateway asks for one (gateway token) after it verified a kernel's evidence, and delivers it to that kernel
inside the sealed session bundle. Format: a compact JWT (RFC 7519) signed with the KBS's Ed25519 key
(``alg: EdDSA``, ``kid``: first 16 hex digits of SHA-256 of the raw public key), claims::

    iss "teelab-kbs"  aud "teelab/kbs/v1/release"  sub <user>  ekh <hex SHA-256(E.pub)>
    iat <unix seconds>  exp <unix seconds>  jti <32 hex digits, unique>
    grp [<group>, ...]   the groups the user's identity provider reported when the grant was minted (optional)
    ctl <hex SHA-256(G.pub)>  the controller hash of the gateway that launched the enclave (optional): a
                         release's evidence must carry it in its launch-time field (docs/protocols/kbs.md §5)
    par <jti>            a delegated (child) grant: the parent grant it was derived from (docs/protocols/kbs.md
                         §4a); a child grant cannot be delegated further
    dst [<dataset>, ...] the only datasets the grant may release (optional; a delegation can narrow to them)

Only the authenticated user gets a grant naming it (``broker.issue_session_grant``).

Verification takes the time as an input (PyJWT's own clock checks are off and done here), so tests and
replicas judge expiry with the same injectable clock as everything else.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from teelab.errors import KeyBrokerError
from teelab.sealed_store.kbs import validation
from teelab.sealed_store.kbs.model import IssuedGrant
from teelab.sealed_store.kbs.reasons import Denied, Reason

GRANT_ISSUER = "teelab-kbs"
GRANT_AUDIENCE = "teelab/kbs/v1/release"
GRANT_ALGORITHM = "EdDSA"
MAX_GRANT_CHARS = 4096
# Replicas' clocks differ a little; a grant "issued" further in the future than this is not ours.
CLOCK_SKEW = timedelta(seconds=60)
_REQUIRED = ["iss", "aud", "sub", "ekh", "iat", "exp", "jti"]


@dataclass(frozen=True)
class SessionGrant:
    """A verified session grant."""

    user: str
    enclave_key_sha256: str
    issued_at: datetime
    expires_at: datetime
    grant_id: str
    groups: tuple[str, ...] = ()
    controller_sha256: str | None = None
    parent_id: str | None = None  # set on a delegated grant
    datasets: tuple[str, ...] | None = None  # None: every dataset the user may receive

    def covers(self, dataset: str) -> bool:
        return self.datasets is None or dataset in self.datasets


def issue_session_grant(
    signing_key: Ed25519PrivateKey,
    key_id: str,
    *,
    user: str,
    enclave_key_sha256: str,
    now: datetime,
    ttl: timedelta,
    groups: list[str] | None = None,
    controller_sha256: str | None = None,
    parent_id: str | None = None,
    datasets: list[str] | None = None,
    not_after: datetime | None = None,
) -> IssuedGrant:
    issued = int(now.timestamp())
    expires = issued + max(1, int(ttl.total_seconds()))
    if not_after is not None:  # a child grant never outlives its parent
        expires = min(expires, int(not_after.timestamp()))
    grant_id = secrets.token_hex(16)
    claims: dict[str, Any] = {
        "iss": GRANT_ISSUER,
        "aud": GRANT_AUDIENCE,
        "sub": user,
        "ekh": enclave_key_sha256,
        "iat": issued,
        "exp": expires,
        "jti": grant_id,
    }
    if groups:
        claims["grp"] = groups
    if controller_sha256 is not None:
        claims["ctl"] = controller_sha256
    if parent_id is not None:
        claims["par"] = parent_id
    if datasets is not None:
        claims["dst"] = datasets
    token = jwt.encode(claims, signing_key, algorithm=GRANT_ALGORITHM, headers={"kid": key_id})
    return IssuedGrant(
        token=token,
        grant_id=grant_id,
        user=user,
        enclave_key_sha256=enclave_key_sha256,
        issued_at=datetime.fromtimestamp(issued, UTC),
        expires_at=datetime.fromtimestamp(expires, UTC),
    )


def verify_session_grant(
    token: str, public_key: Ed25519PublicKey, *, at: datetime, check_times: bool = True
) -> SessionGrant:
    """The grant's claims if its signature, issuer, audience and shape are right and it has not expired.

    Raises :class:`Denied` (``grant_invalid`` / ``grant_expired``) with the detail for the audit log.
    """
    if not token or len(token) > MAX_GRANT_CHARS or not token.isascii():
        raise Denied(Reason.GRANT_INVALID, "the session grant is missing, too long or not ASCII")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            public_key,
            algorithms=[GRANT_ALGORITHM],
            audience=GRANT_AUDIENCE,
            issuer=GRANT_ISSUER,
            options={"verify_exp": False, "verify_iat": False, "verify_nbf": False, "require": _REQUIRED},
        )
    except jwt.PyJWTError as error:
        raise Denied(Reason.GRANT_INVALID, f"the session grant does not verify: {error}") from None
    except (ValueError, TypeError, OverflowError) as error:  # malformed input the library did not expect
        raise Denied(Reason.GRANT_INVALID, f"the session grant is malformed: {error}") from None
    try:
        user = validation.user_name(claims["sub"], "sub")
        ekh = validation.sha256_hex(claims["ekh"], "ekh")
        issued_at = _time(claims["iat"], "iat")
        expires_at = _time(claims["exp"], "exp")
        grant_id = claims["jti"]
        if not isinstance(grant_id, str) or not 1 <= len(grant_id) <= 64:
            raise ValueError("jti must be a short string")
        groups = claims.get("grp", [])
        if not isinstance(groups, list) or len(groups) > 256:
            raise ValueError("grp must be a list of group names")
        groups = tuple(validation.group_name(g, "grp") for g in groups)
        controller = claims.get("ctl")
        if controller is not None:
            controller = validation.sha256_hex(controller, "ctl")
        parent = claims.get("par")
        if parent is not None and (not isinstance(parent, str) or not 1 <= len(parent) <= 64):
            raise ValueError("par must be a short string")
        datasets = claims.get("dst")
        if datasets is not None:
            if not isinstance(datasets, list) or len(datasets) > 256:
                raise ValueError("dst must be a list of dataset names")
            datasets = tuple(validation.dataset_name(d, "dst") for d in datasets)
    except (ValueError, KeyError, KeyBrokerError) as error:
        raise Denied(Reason.GRANT_INVALID, f"the session grant's claims are malformed: {error}") from None
    grant = SessionGrant(user, ekh, issued_at, expires_at, grant_id, groups, controller, parent, datasets)
    if check_times:
        check_grant_times(grant, at)
    return grant


class GrantVerifier:
    """``verify_session_grant`` with a cache of grants whose signature and claims already checked out.

    A session's kernel presents the same grant on every release; its signature need not be checked again.
    Only the time-dependent checks (issued-at, expiry) run each time. The cache holds verified claims only:
    a token that failed is checked afresh every time.
    """

    def __init__(self, public_key: Ed25519PublicKey, size: int = 4096) -> None:
        self.public_key = public_key
        self._size = size
        self._cache: OrderedDict[str, SessionGrant] = OrderedDict()
        self._lock = threading.Lock()

    def verify(self, token: str, *, at: datetime, check_times: bool = True) -> SessionGrant:
        """The grant's verified claims; ``check_times`` False leaves expiry to ``check_grant_times``."""
        with self._lock:
            grant = self._cache.get(token)
            if grant is not None:
                self._cache.move_to_end(token)
        if grant is None:
            grant = verify_session_grant(token, self.public_key, at=at, check_times=False)
            with self._lock:
                self._cache[token] = grant
                while len(self._cache) > self._size:
                    self._cache.popitem(last=False)
        if check_times:
            check_grant_times(grant, at)
        return grant


def check_grant_times(grant: SessionGrant, at: datetime) -> None:
    if grant.issued_at > at + CLOCK_SKEW:
        raise Denied(Reason.GRANT_INVALID, f"the session grant is issued in the future ({grant.issued_at})")
    if grant.expires_at <= at:
        raise Denied(
            Reason.GRANT_EXPIRED,
            f"the session grant {grant.grant_id} expired at {grant.expires_at.isoformat()}",
        )


def _time(value: object, name: str) -> datetime:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 253402300800:
        raise ValueError(f"{name} must be a unix time in seconds")
    return datetime.fromtimestamp(value, UTC)
