"""AttestationResult JSON and summary; EAR tokens: shape, round trip, tampering, the signing key on disk."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from teelab.errors import ConfigError, VerificationError
from teelab.gateway import ear
from teelab.gateway.appraisal import appraise, reject_unverified
from teelab.gateway.checks import Check
from teelab.gateway.policy import AppraisalPolicy, SgxReference
from teelab.gateway.result import NOT_CONFIDENTIAL, render_summary
from teelab.gateway.verified import VerifiedEvidence

AT = datetime(2025, 7, 1, tzinfo=UTC)
MRENCLAVE = "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
ISSUE_KEYS = ["ok", "verdict", "tee", "simulated", "tcb_status", "advisory_ids", "claims", "checks", "error"]


def evidence(**changes: object) -> VerifiedEvidence:
    base = VerifiedEvidence(
        tee="sgx",
        simulated=False,
        tcb_status="UpToDate",
        advisory_ids=[],
        claims={"mrenclave": MRENCLAVE, "isv_svn": 0, "report_data": "00" * 64, "debug": False},
        checks=[Check("quote_signature", True, "valid")],
        valid_from=AT - timedelta(days=10),
        valid_until=AT + timedelta(days=20),
        collateral_issued_at=AT - timedelta(days=10),
        # As the DCAP verifier reports them (the default policy requires 17 or later).
        details={"tcb_info_evaluation_data_number": 17, "qe_identity_evaluation_data_number": 17},
    )
    for name, value in changes.items():
        setattr(base, name, value)
    return base


@pytest.fixture
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


# --- JSON and summary ------------------------------------------------------------------------------------


def test_json_has_the_issue_keys_first_then_extras() -> None:
    result = appraise(evidence(), AppraisalPolicy(id="p"), at=AT, expected_report_data=bytes(64))
    document = result.to_json()
    assert list(document)[: len(ISSUE_KEYS)] == ISSUE_KEYS
    assert document["ok"] is True and document["verdict"] == "affirming" and document["tee"] == "sgx"
    assert (
        document["error"] is None and document["tcb_status"] == "UpToDate" and document["advisory_ids"] == []
    )
    assert document["claims"] == {
        "mrenclave": MRENCLAVE,
        "isv_svn": 0,
        "report_data": "00" * 64,
        "debug": False,
    }
    assert document["checks"][0] == {"name": "quote_signature", "passed": True, "detail": "valid"}  # type: ignore[index]
    assert document["verified_at"] == "2025-07-01T00:00:00Z" and document["policy_id"] == "p"
    assert document["expected_report_data"] == "00" * 64
    assert document["valid_until"] == "2025-07-21T00:00:00Z"
    json.dumps(document)  # serialisable as is


def test_claims_cannot_be_edited_through_the_result() -> None:
    result = appraise(evidence(), AppraisalPolicy(), at=AT)
    with pytest.raises(TypeError):
        result.claims["mrenclave"] = "00"  # type: ignore[index]


def test_summary_says_plainly_what_failed() -> None:
    policy = AppraisalPolicy(sgx=SgxReference(mrenclave=("ab" * 32,)))
    text = render_summary(appraise(evidence(tcb_status="OutOfDate"), policy, at=AT))
    lines = text.splitlines()
    assert lines[0] == "REJECTED: SGX enclave (policy teelab-default)"
    assert any(
        line.startswith("  failed policy.tcb_status: TCB status OutOfDate is not accepted") for line in lines
    )
    assert any(line.startswith("  failed policy.mrenclave: MRENCLAVE 33d8736d…") for line in lines)
    assert f"  mrenclave   {MRENCLAVE}" in lines  # the full value, ready to pin
    assert "1 failed" not in text and "2 failed" in text


def test_summary_for_simulated_results_says_not_confidential() -> None:
    accepted = appraise(evidence(simulated=True), AppraisalPolicy(allow_simulation=True), at=AT)
    text = render_summary(accepted)
    assert "simulated TEE — not confidential" in text.splitlines()[0]
    assert text.splitlines()[1].startswith("ACCEPTED WITH WARNINGS")
    rejected = render_summary(appraise(evidence(simulated=True), AppraisalPolicy(), at=AT))
    assert NOT_CONFIDENTIAL in rejected.splitlines()[0] and "REJECTED" in rejected


def test_summary_for_affirming_and_unparsed_results() -> None:
    assert render_summary(appraise(evidence(), AppraisalPolicy(), at=AT)).startswith(
        "ACCEPTED: SGX enclave verified and matches policy teelab-default"
    )
    garbage = reject_unverified(
        checks=[Check("evidence.format", False, "not recognised")],
        tee=None,
        at=AT,
        policy=AppraisalPolicy(),
        cause="unrecognized",
    )
    text = render_summary(garbage)
    assert text.startswith("REJECTED: evidence") and "failed evidence.format: not recognised" in text
    assert garbage.to_json()["tee"] is None


# --- EAR tokens ------------------------------------------------------------------------------------------


def _payload(token: str) -> dict[str, object]:
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))  # type: ignore[no-any-return]


def test_ear_token_shape(key: ec.EllipticCurvePrivateKey) -> None:
    result = appraise(
        evidence(tcb_status="SWHardeningNeeded", advisory_ids=["INTEL-SA-00615"]),
        AppraisalPolicy(
            id="prod", accepted_tcb_statuses=("UpToDate", "SWHardeningNeeded"), accepted_advisory_ids=("*",)
        ),
        at=AT,
        expected_report_data=bytes(64),
    )
    token = ear.encode_ear(result, key=key)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256" and header["kid"] == ear.key_id(key.public_key())
    claims = _payload(token)
    assert claims["eat_profile"] == "tag:github.com,2023:veraison/ear"
    assert claims["iat"] == int(AT.timestamp())
    assert claims["exp"] == int((AT + timedelta(hours=1)).timestamp())
    assert claims["ear.verifier-id"] == {"developer": "teelab", "build": claims["ear.verifier-id"]["build"]}  # type: ignore[index]
    assert claims["eat_nonce"] == base64.urlsafe_b64encode(bytes(64)).rstrip(b"=").decode()
    submod = claims["submods"]["sgx"]  # type: ignore[index]
    assert submod["ear.status"] == "warning"
    assert submod["ear.appraisal-policy-id"] == "prod"
    vector = submod["ear.trustworthiness-vector"]
    # No measurement pinned, so no claim about executables is made (AR4SI: absent = no claim).
    assert set(vector) == {"instance-identity", "configuration", "hardware", "runtime-opaque"}
    assert vector["hardware"] == 32 and vector["instance-identity"] == 2
    assert submod["ear.veraison.annotated-evidence"] == {
        "tee": "sgx",
        "claims": dict(result.claims),
        "tcb_status": "SWHardeningNeeded",
        "advisory_ids": ["INTEL-SA-00615"],
        "simulated": False,
    }


def test_ear_round_trip_and_lifetime(key: ec.EllipticCurvePrivateKey) -> None:
    result = appraise(evidence(), AppraisalPolicy(), at=AT)
    token = ear.encode_ear(result, key=key)
    claims = ear.verify_ear(token, key.public_key(), at=AT + timedelta(minutes=5))
    assert claims["submods"]["sgx"]["ear.status"] == "affirming"  # type: ignore[index]
    assert "eat_nonce" not in claims
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert ear.verify_ear(token, pem, at=AT)["iat"] == int(AT.timestamp())
    assert ear.verify_ear(token, pem.decode(), at=AT)["iat"] == int(AT.timestamp())
    with pytest.raises(VerificationError, match="expired"):
        ear.verify_ear(token, key.public_key(), at=AT + timedelta(hours=2))
    with pytest.raises(VerificationError, match="future"):
        ear.verify_ear(token, key.public_key(), at=AT - timedelta(hours=1))


def test_ear_lifetime_never_outlives_the_evidence(key: ec.EllipticCurvePrivateKey) -> None:
    result = appraise(evidence(valid_until=AT + timedelta(minutes=10)), AppraisalPolicy(), at=AT)
    claims = _payload(ear.encode_ear(result, key=key, lifetime=timedelta(days=1)))
    assert claims["exp"] == int((AT + timedelta(minutes=10)).timestamp())


def test_rejected_results_are_tokens_too(key: ec.EllipticCurvePrivateKey) -> None:
    result = reject_unverified(checks=[], tee=None, at=AT, policy=AppraisalPolicy(), cause="unrecognized")
    claims = ear.verify_ear(ear.encode_ear(result, key=key), key.public_key(), at=AT)
    assert claims["submods"]["evidence"]["ear.status"] == "contraindicated"  # type: ignore[index]


def _resign(claims: dict[str, object], key: ec.EllipticCurvePrivateKey) -> str:
    return jwt.encode(claims, key, algorithm="ES256")


def test_tampered_tokens_are_rejected(key: ec.EllipticCurvePrivateKey) -> None:
    result = appraise(evidence(simulated=True), AppraisalPolicy(), at=AT)
    token = ear.encode_ear(result, key=key)
    header, payload, signature = token.split(".")
    claims = _payload(token)
    claims["submods"]["sgx"]["ear.status"] = "affirming"  # type: ignore[index]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(VerificationError) as caught:
        ear.verify_ear(f"{header}.{forged}.{signature}", key.public_key(), at=AT)
    assert caught.value.check == "ear.signature"
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    with pytest.raises(VerificationError):
        ear.verify_ear(f"{header}.{payload}.{flipped}", key.public_key(), at=AT)
    # Signed by someone else.
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(VerificationError, match="does not verify"):
        ear.verify_ear(ear.encode_ear(result, key=other), key.public_key(), at=AT)
    # alg=none and HMAC-with-the-public-key confusion.
    unsigned = jwt.encode(claims, None, algorithm="none")
    with pytest.raises(VerificationError):
        ear.verify_ear(unsigned, key.public_key(), at=AT)
    with pytest.raises(VerificationError):
        ear.verify_ear("not.a.token", key.public_key(), at=AT)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"eat_profile": "tag:example.com,2024:other"}, "ear.profile"),
        ({"submods": {}}, "ear.format"),
        ({"submods": {"sgx": {"ear.status": "great"}}}, "ear.format"),
        ({"iat": "yesterday"}, "ear.format"),
    ],
)
def test_well_signed_tokens_of_the_wrong_shape_are_rejected(
    key: ec.EllipticCurvePrivateKey, change: dict[str, object], problem: str
) -> None:
    claims = _payload(ear.encode_ear(appraise(evidence(), AppraisalPolicy(), at=AT), key=key))
    claims.update(change)
    with pytest.raises(VerificationError) as caught:
        ear.verify_ear(_resign(claims, key), key.public_key(), at=AT)
    assert caught.value.check == problem


def test_pinned_key_must_be_a_p256_public_key() -> None:
    with pytest.raises(ConfigError):
        ear.verify_ear("a.b.c", "not a key", at=AT)


# --- the gateway signing key on disk ---------------------------------------------------------------------


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TEELAB_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def test_signing_key_created_on_first_use_private_and_stable(data_dir: Path) -> None:
    key = ear.load_or_create_signing_key()
    path = data_dir / "gateway" / "ear-signing-key.pem"
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = ear.load_or_create_signing_key()
    assert again.private_numbers() == key.private_numbers()
    assert isinstance(key.curve, ec.SECP256R1)
    assert ear.public_key_pem().startswith("-----BEGIN PUBLIC KEY-----")
    # Default keys on both sides: sign with the gateway key, verify against it.
    result = appraise(evidence(), AppraisalPolicy(), at=AT)
    assert ear.verify_ear(ear.encode_ear(result), at=AT)["eat_profile"] == ear.EAR_PROFILE
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".ear-key-")]


def test_signing_key_refuses_open_permissions_and_damage(data_dir: Path) -> None:
    path = ear.signing_key_path()
    ear.load_or_create_signing_key()
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="readable by other users") as caught:
        ear.load_or_create_signing_key()
    assert caught.value.hint is not None and "chmod 600" in caught.value.hint
    os.chmod(path, 0o600)
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError, match="cannot be read"):
        ear.load_or_create_signing_key()
    rsa_pem = (
        __import__("cryptography.hazmat.primitives.asymmetric.rsa", fromlist=["rsa"])
        .generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.write_bytes(rsa_pem)
    with pytest.raises(ConfigError, match="not a P-256 key"):
        ear.load_or_create_signing_key()


_RACER = """
import sys, time
from pathlib import Path
from teelab.gateway import ear
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.001)
print(ear.key_id(ear.load_or_create_signing_key(Path(sys.argv[1])).public_key()))
"""


def test_concurrent_first_use_agrees_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "gateway" / "ear-signing-key.pem"
    go = tmp_path / "go"
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(path), str(go)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(12)
    ]
    # Every racer is started and waiting before any may create the key, so they collide on first use.
    time.sleep(1.0)
    go.touch()
    ids = [racer.communicate(timeout=60)[0].strip() for racer in racers]
    assert all(racer.returncode == 0 for racer in racers)
    assert len(set(ids)) == 1
    assert ids[0] == ear.key_id(ear.load_or_create_signing_key(path).public_key())
    assert [p.name for p in path.parent.iterdir()] == ["ear-signing-key.pem"]
