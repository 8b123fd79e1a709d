"""EAR: an attestation result as a signed token (draft-ietf-rats-ear; JWT, ES256).

Relying parties that take a *passport* (a key broker, a hub) receive the gateway's verdict as an EAR token
instead of re-verifying evidence. The token is signed by the gateway's signing key, a P-256 key created on
first use under ``<data dir>/gateway/ear-signing-key.pem``; relying parties pin its public key
(:func:`public_key_pem`) and call :func:`verify_ear`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import stat
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from teelab import __version__
from teelab.errors import ConfigError, VerificationError
from teelab.gateway.result import VERDICTS, AttestationResult
from teelab.paths import data_dir
from teelab.timeutil import utcnow

EAR_PROFILE = "tag:github.com,2023:veraison/ear"
VERIFIER_DEVELOPER = "teelab"
ALGORITHM = "ES256"
# A passport is a snapshot: short-lived unless the evidence's own validity ends sooner.
DEFAULT_TOKEN_LIFETIME = timedelta(hours=1)
KEY_FILE_NAME = "ear-signing-key.pem"


def signing_key_path() -> Path:
    return data_dir() / "gateway" / KEY_FILE_NAME


def load_or_create_signing_key(path: Path | None = None) -> ec.EllipticCurvePrivateKey:
    """The gateway's EAR signing key, created (P-256, file 0600, folder 0700) if it does not exist.

    Concurrent first use is safe: each process writes a complete key to a private temporary file and
    hard-links it into place, which fails if another process got there first; everyone then reads the one
    key that won. A reader never sees a half-written file.
    """
    path = path or signing_key_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    if not path.exists():
        _create_key_file(path)
    return _read_key_file(path)


def _create_key_file(path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # mkstemp creates the file 0600, so the secret is never readable by others, even briefly.
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".ear-key-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
        except OSError:
            # A file system without hard links: rename is still atomic for readers, but not exclusive, so
            # claim the name first; a loser of that race keeps the winner's key.
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def _read_key_file(path: Path) -> ec.EllipticCurvePrivateKey:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"the gateway signing key {path} is readable by other users (mode {stat.S_IMODE(mode):o})",
            hint=f"chmod 600 {path}; if others may have read it, delete it so a new key is created",
        )
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as error:
        raise ConfigError(
            f"the gateway signing key {path} cannot be read: {error}",
            hint="restore it from backup, or delete it so a new key is created (relying parties must re-pin)",
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError(
            f"the gateway signing key {path} is not a P-256 key",
            hint="delete it so a new key is created (relying parties must re-pin)",
        )
    return key


def public_key_pem(key: ec.EllipticCurvePrivateKey | None = None) -> str:
    """The gateway's public key in PEM (SubjectPublicKeyInfo), for relying parties to pin."""
    key = key or load_or_create_signing_key()
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """RFC 7638 JWK thumbprint: lets a relying party with several pinned keys pick the right one."""
    numbers = public_key.public_numbers()
    jwk = {
        "crv": "P-256",
        "kty": "EC",
        "x": _b64(numbers.x.to_bytes(32, "big")),
        "y": _b64(numbers.y.to_bytes(32, "big")),
    }
    canonical = json.dumps(jwk, separators=(",", ":"), sort_keys=True).encode()
    return _b64(hashlib.sha256(canonical).digest())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def ear_claims(
    result: AttestationResult,
    *,
    issued_at: datetime | None = None,
    lifetime: timedelta = DEFAULT_TOKEN_LIFETIME,
    submod: str | None = None,
) -> dict[str, object]:
    """The EAR claims set for ``result``. ``issued_at`` defaults to the result's verification time."""
    iat = issued_at or result.verified_at
    expires = iat + lifetime
    if result.valid_until is not None:
        expires = min(expires, result.valid_until)
    annotated: dict[str, object] = {
        "tee": result.tee,
        "claims": dict(result.claims),
        "tcb_status": result.tcb_status,
        "advisory_ids": list(result.advisory_ids),
        "simulated": result.simulated,
    }
    appraisal: dict[str, object] = {
        "ear.status": result.verdict,
        "ear.trustworthiness-vector": dict(result.trust_vector),
        "ear.appraisal-policy-id": result.policy_id,
        "ear.veraison.annotated-evidence": annotated,
    }
    claims: dict[str, object] = {
        "eat_profile": EAR_PROFILE,
        "iat": int(iat.timestamp()),
        "exp": max(int(expires.timestamp()), int(iat.timestamp())),
        "ear.verifier-id": {"developer": VERIFIER_DEVELOPER, "build": f"teelab {__version__}"},
        "submods": {submod or result.tee or "evidence": appraisal},
    }
    if result.expected_report_data is not None:
        claims["eat_nonce"] = _b64(result.expected_report_data)
    return claims


def encode_ear(
    result: AttestationResult,
    *,
    key: ec.EllipticCurvePrivateKey | None = None,
    issued_at: datetime | None = None,
    lifetime: timedelta = DEFAULT_TOKEN_LIFETIME,
    submod: str | None = None,
) -> str:
    """Sign ``result`` as an EAR JWT with the gateway key (created on first use)."""
    key = key or load_or_create_signing_key()
    claims = ear_claims(result, issued_at=issued_at, lifetime=lifetime, submod=submod)
    headers = {"kid": key_id(key.public_key()), "typ": "JWT"}
    return jwt.encode(claims, key, algorithm=ALGORITHM, headers=headers)


def verify_ear(
    token: str,
    public_key: ec.EllipticCurvePublicKey | str | bytes | None = None,
    *,
    at: datetime | None = None,
    leeway: timedelta = timedelta(seconds=60),
) -> dict[str, object]:
    """Check an EAR token's signature (ES256 only), profile, shape and lifetime at ``at`` (default now).

    ``public_key`` is the pinned gateway key (object or PEM); by default this machine's gateway key.
    Returns the claims; raises :class:`VerificationError` (check ``ear.*``) on any problem.
    """
    verifying_key = _public_key(public_key)
    try:
        claims = jwt.decode(
            token,
            verifying_key,
            algorithms=[ALGORITHM],
            # Time is an input here, not the wall clock: check iat/exp below against `at`.
            options={
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
                "require": ["iat", "exp"],
            },
        )
    except jwt.InvalidSignatureError:
        raise VerificationError(
            "ear.signature", "the token's signature does not verify under the gateway key"
        ) from None
    except jwt.PyJWTError as error:
        raise VerificationError("ear.format", f"not a valid EAR token: {error}") from None
    if not isinstance(claims, dict):
        raise VerificationError("ear.format", "the token's payload is not a JSON object")
    _check_shape(claims)
    now = at or utcnow()
    issued = datetime.fromtimestamp(cast(int, claims["iat"]), UTC)
    expires = datetime.fromtimestamp(cast(int, claims["exp"]), UTC)
    if now + leeway < issued:
        raise VerificationError("ear.time", f"the token is issued in the future ({issued.isoformat()})")
    if now - leeway > expires:
        raise VerificationError("ear.time", f"the token expired at {expires.isoformat()}")
    return claims


def _public_key(value: ec.EllipticCurvePublicKey | str | bytes | None) -> ec.EllipticCurvePublicKey:
    if value is None:
        return load_or_create_signing_key().public_key()
    if isinstance(value, ec.EllipticCurvePublicKey):
        return value
    try:
        key = serialization.load_pem_public_key(value.encode() if isinstance(value, str) else value)
    except ValueError as error:
        raise ConfigError(f"not a PEM public key: {error}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError("the pinned EAR key is not a P-256 public key")
    return key


def _check_shape(claims: dict[str, object]) -> None:
    if claims.get("eat_profile") != EAR_PROFILE:
        raise VerificationError(
            "ear.profile", f"eat_profile is {claims.get('eat_profile')!r}, not {EAR_PROFILE!r}"
        )
    for name in ("iat", "exp"):
        if not isinstance(claims.get(name), int) or isinstance(claims.get(name), bool):
            raise VerificationError("ear.format", f"{name} is not an integer time")
    submods = claims.get("submods")
    if not isinstance(submods, dict) or not submods:
        raise VerificationError("ear.format", "the token has no submods")
    for name, appraisal in submods.items():
        if not isinstance(appraisal, dict) or appraisal.get("ear.status") not in VERDICTS:
            raise VerificationError("ear.format", f"submod {name!r} has no valid ear.status")
