"""The pure pieces: nonces, session grants, the report_data binding, key wrapping, validation."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from teelab.errors import ConfigError, KeyBrokerError
from teelab.sealed_store.kbs import validation
from teelab.sealed_store.kbs.crypto import KbsKeys
from teelab.sealed_store.kbs.grants import GrantVerifier, issue_session_grant, verify_session_grant
from teelab.sealed_store.kbs.nonces import NonceIssuer
from teelab.sealed_store.kbs.protocol import (
    open_registered_dek,
    release_report_data,
    seal_dek_for_kbs,
)
from teelab.sealed_store.kbs.reasons import STATUS, Denied, Reason

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def test_nonces_are_authentic_single_use_in_memory_and_expire() -> None:
    issuer = NonceIssuer(os.urandom(32), timedelta(seconds=60))
    nonce, expires = issuer.issue(NOW)
    assert len(nonce) == 32 and expires == NOW + timedelta(seconds=60)
    assert issuer.check(nonce, NOW + timedelta(seconds=59)) == expires
    with pytest.raises(Denied) as late:
        issuer.check(nonce, expires)
    assert late.value.reason is Reason.NONCE_EXPIRED
    # Extending the expiry (bytes 12..20) breaks the tag; so does any other edit.
    for position in (0, 12, 19, 20, 31):
        forged = bytearray(nonce)
        forged[position] ^= 1
        with pytest.raises(Denied) as caught:
            issuer.check(bytes(forged), NOW)
        assert caught.value.reason is Reason.NONCE_INVALID
    other = NonceIssuer(os.urandom(32), timedelta(seconds=60))
    with pytest.raises(Denied):
        other.check(nonce, NOW)  # another KBS's key
    issuer.spent(nonce)
    with pytest.raises(Denied) as again:
        issuer.check(nonce, NOW)
    assert again.value.reason is Reason.NONCE_INVALID
    assert len({issuer.issue(NOW)[0] for _ in range(100)}) == 100


def test_session_grants_verify_only_as_issued() -> None:
    key = Ed25519PrivateKey.generate()
    ekh = hashlib.sha256(b"E.pub").hexdigest()
    issued = issue_session_grant(
        key, "kid", user="alice", enclave_key_sha256=ekh, now=NOW, ttl=timedelta(hours=1)
    )
    grant = verify_session_grant(issued.token, key.public_key(), at=NOW)
    assert (grant.user, grant.enclave_key_sha256, grant.grant_id) == ("alice", ekh, issued.grant_id)
    header = json.loads(base64.urlsafe_b64decode(issued.token.split(".")[0] + "=="))
    assert header == {"alg": "EdDSA", "kid": "kid", "typ": "JWT"}

    def reason(token: str, at: datetime = NOW) -> Reason:
        with pytest.raises(Denied) as caught:
            verify_session_grant(token, key.public_key(), at=at)
        return caught.value.reason

    assert reason(issued.token, NOW + timedelta(hours=1)) is Reason.GRANT_EXPIRED
    assert reason(issued.token, NOW - timedelta(minutes=5)) is Reason.GRANT_INVALID  # issued in the future
    claims = jwt.decode(issued.token, options={"verify_signature": False})
    # alg=none, HMAC with the public key as secret, another issuer, audience or signer: all invalid.
    assert reason(jwt.encode(claims, None, algorithm="none")) is Reason.GRANT_INVALID  # type: ignore[arg-type]
    assert reason(jwt.encode(claims, "x" * 32, algorithm="HS256")) is Reason.GRANT_INVALID
    stranger = Ed25519PrivateKey.generate()
    assert reason(jwt.encode(claims, stranger, algorithm="EdDSA")) is Reason.GRANT_INVALID
    for change in ({"iss": "other"}, {"aud": "other"}, {"ekh": "00"}, {"sub": "a b"}, {"exp": "soon"}):
        assert reason(jwt.encode({**claims, **change}, key, algorithm="EdDSA")) is Reason.GRANT_INVALID, (
            change
        )
    without_jti = {k: v for k, v in claims.items() if k != "jti"}
    assert reason(jwt.encode(without_jti, key, algorithm="EdDSA")) is Reason.GRANT_INVALID
    assert reason("x" * 5000) is Reason.GRANT_INVALID
    # The cache keeps verified grants only; their expiry is still judged every time.
    verifier = GrantVerifier(key.public_key(), size=2)
    assert verifier.verify(issued.token, at=NOW).user == "alice"
    with pytest.raises(Denied):
        verifier.verify(issued.token, at=NOW + timedelta(hours=2))


def test_report_data_binding_is_fixed_layout_sha512() -> None:
    nonce, key, grant = b"n" * 32, b"k" * 32, b"header.payload.signature"
    request = hashlib.sha256(b"sales\x00" + (0).to_bytes(4, "big")).digest()  # version 0: "the current one"
    expected = hashlib.sha512(
        b"teelab/kbs/v1" + nonce + key + hashlib.sha256(grant).digest() + request
    ).digest()
    assert release_report_data(nonce, key, grant, dataset="sales", version=None) == expected
    assert release_report_data(nonce, key, grant + b"x", dataset="sales", version=None) != expected
    # The request is bound: another version (a rollback) or dataset gives other report_data.
    assert release_report_data(nonce, key, grant, dataset="sales", version=1) != expected
    assert release_report_data(nonce, key, grant, dataset="sales2", version=None) != expected


def test_registration_sealing_is_bound_to_the_dataset_version() -> None:
    kbs = X25519PrivateKey.generate()
    public = kbs.public_key().public_bytes_raw()
    dek = os.urandom(32)
    sealed = seal_dek_for_kbs(public, "sales", 3, dek)
    assert open_registered_dek(kbs, "sales", 3, sealed) == dek
    for dataset, version in (("sales", 4), ("sales2", 3)):
        with pytest.raises(KeyBrokerError) as caught:
            open_registered_dek(kbs, dataset, version, sealed)
        assert caught.value.reason == "dek_invalid"
    with pytest.raises(KeyBrokerError):
        seal_dek_for_kbs(public, "sales", 3, b"short")


def test_wrapped_keys_are_bound_to_their_row_and_master_key(tmp_path: Path) -> None:
    keys = KbsKeys.load_or_create(tmp_path / "state")
    dek = os.urandom(32)
    wrapped = keys.wrap_dek("sales", 1, dek)
    assert dek not in wrapped and keys.unwrap_dek("sales", 1, wrapped) == dek
    with pytest.raises(ConfigError):
        keys.unwrap_dek("sales", 2, wrapped)
    other = KbsKeys.load_or_create(tmp_path / "other")
    with pytest.raises(ConfigError):
        other.unwrap_dek("sales", 1, wrapped)
    assert KbsKeys.load_or_create(tmp_path / "state").master_key == keys.master_key  # created once
    (tmp_path / "state" / "master.key").chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        KbsKeys.load(tmp_path / "state")


@pytest.mark.parametrize(
    ("check", "good", "bad"),
    [
        (
            validation.dataset_name,
            ["a", "Sales_2024.v1-x", "x" * 128],
            ["", "-a", "a/b", "a b", "x" * 129, "é"],
        ),
        (validation.user_name, ["alice", "a.b+c@example.org"], ["", "a:b", "a b", "\x00", ".a"]),
        (validation.principal, ["user:alice", "group:analysts"], ["alice", "role:x", "user:", "group:a b"]),
        (validation.version, [1, (1 << 31) - 1], [0, -1, 1 << 31, True, "1"]),
    ],
)
def test_validation(check: object, good: list[object], bad: list[object]) -> None:
    for value in good:
        check(value)  # type: ignore[operator]
    for value in bad:
        with pytest.raises(KeyBrokerError) as caught:
            check(value)  # type: ignore[operator]
        assert caught.value.reason == "invalid_argument"


def test_every_reason_has_a_status() -> None:
    assert set(STATUS) == set(Reason)
