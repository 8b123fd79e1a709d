"""The controller check: evidence is accepted only from a kernel that names this gateway as its controller.

The adversary is the host running our genuine image itself (an attestation oracle): its evidence passes
every signature and measurement check, and only the controller field tells it apart.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from teelab.errors import ConfigError, UsageError
from teelab.gateway.appraisal import appraise
from teelab.gateway.controller import controller_field
from teelab.gateway.policy import (
    AppraisalPolicy,
    SgxReference,
    SnpReference,
    TdxReference,
    parse_policy,
)
from teelab.gateway.result import AttestationResult
from teelab.gateway.verifier import verify_evidence

from .test_appraisal import AT, MEASUREMENT, MRENCLAVE, MRSIGNER, MRTD, sgx, snp, tdx
from .test_dcap_synthetic import NOW, Platform

OURS = hashlib.sha256(b"this gateway's identity public key").digest()
THEIRS = hashlib.sha256(b"the host's own gateway key").digest()
SIM = AppraisalPolicy(id="sim", allow_simulation=True)


def controller_check(result: AttestationResult) -> tuple[bool, str]:
    (check,) = [c for c in result.checks if c.name == "controller"]
    return check.passed, check.detail


@pytest.fixture(scope="module")
def platform() -> Platform:
    return Platform()


# --- end to end on a synthetic DCAP platform -------------------------------------------------------------


def test_controller_sgx_config_id_of_this_gateway_passes(platform: Platform) -> None:
    quote = platform.quote(config_id=OURS + bytes(32))
    result = verify_evidence(
        quote,
        collateral=platform.collateral(),
        at=NOW,
        anchors=platform.anchors,
        policy=SIM,
        expected_controller=OURS,
    )
    assert result.ok, result.error
    passed, detail = controller_check(result)
    assert passed and "CONFIGID" in detail
    assert result.claims["config_id"] == (OURS + bytes(32)).hex()


@pytest.mark.parametrize("config_id", [THEIRS + bytes(32), bytes(64), OURS + b"\1" + bytes(31)])
def test_controller_oracle_evidence_from_another_gateway_is_refused(
    platform: Platform, config_id: bytes
) -> None:
    # The oracle: a genuine enclave the host launched under its own controller (or none, or a near miss).
    result = verify_evidence(
        platform.quote(config_id=config_id),
        collateral=platform.collateral(),
        at=NOW,
        anchors=platform.anchors,
        policy=SIM,
        expected_controller=OURS,
    )
    assert result.verdict == "contraindicated"
    passed, detail = controller_check(result)
    assert not passed
    assert "another gateway controls" in detail and "CONFIGID" in detail
    assert result.error is not None and result.error.startswith("controller:")


def test_controller_tdx_mrconfigid(platform: Platform) -> None:
    collateral = platform.collateral(tee="tdx")
    # TEE_TCB_SVN major 0: the base TDX module, which needs no module identity in the collateral.
    svn = bytes(16)
    ours = platform.quote(tee="tdx", version=4, qe_prod=2, tee_tcb_svn=svn, mrconfigid=OURS + bytes(16))
    theirs = platform.quote(tee="tdx", version=4, qe_prod=2, tee_tcb_svn=svn, mrconfigid=THEIRS + bytes(16))
    common = dict(collateral=collateral, at=NOW, anchors=platform.anchors, policy=SIM)
    accepted = verify_evidence(ours, expected_controller=OURS, **common)  # type: ignore[arg-type]
    refused = verify_evidence(theirs, expected_controller=OURS, **common)  # type: ignore[arg-type]
    assert accepted.ok, accepted.error
    assert controller_check(accepted)[0]
    assert not refused.ok and not controller_check(refused)[0]
    assert "MRCONFIGID" in controller_check(refused)[1]


def test_without_an_expected_controller_there_is_no_controller_check(platform: Platform) -> None:
    result = verify_evidence(
        platform.quote(config_id=THEIRS + bytes(32)),
        collateral=platform.collateral(),
        at=NOW,
        anchors=platform.anchors,
        policy=SIM,
    )
    assert result.ok and "controller" not in {c.name for c in result.checks}


@pytest.mark.parametrize("bad", [b"", OURS[:31], OURS + b"\0", OURS.hex()])
def test_controller_hash_must_be_32_bytes(platform: Platform, bad: object) -> None:
    with pytest.raises(UsageError, match="32-byte SHA-256"):
        verify_evidence(
            platform.quote(),
            collateral=platform.collateral(),
            at=NOW,
            anchors=platform.anchors,
            policy=SIM,
            expected_controller=bad,  # type: ignore[arg-type]
        )


def test_unverified_evidence_is_refused_before_any_controller_check() -> None:
    result = verify_evidence(b"\0" * 64, at=NOW, policy=SIM, expected_controller=OURS)
    assert not result.ok and "controller" not in {c.name for c in result.checks}


# --- the platform field of each TEE, and the measurement binding ----------------------------------------


def test_controller_field_encodings() -> None:
    assert controller_field("sgx", OURS) == OURS + bytes(32)
    assert controller_field("tdx", OURS) == OURS + bytes(16)
    assert controller_field("sev-snp", OURS) == OURS


def test_controller_snp_host_data() -> None:
    ours = snp(claims={**snp().claims, "host_data": OURS.hex()})
    assert controller_check(appraise(ours, AppraisalPolicy(), at=AT, expected_controller=OURS))[0]
    refused = appraise(snp(), AppraisalPolicy(), at=AT, expected_controller=OURS)
    passed, detail = controller_check(refused)
    assert not passed and refused.verdict == "contraindicated"
    assert "HOST_DATA is all zero" in detail and 'snp.controller_binding = "measurement"' in detail


@pytest.mark.parametrize(
    ("evidence", "policy"),
    [
        (sgx(), AppraisalPolicy(sgx=SgxReference(mrenclave=(MRENCLAVE,), controller_binding="measurement"))),
        (
            sgx(),
            AppraisalPolicy(
                sgx=SgxReference(mrsigner=(MRSIGNER,), isv_prod_id=0, controller_binding="measurement")
            ),
        ),
        (tdx(), AppraisalPolicy(tdx=TdxReference(mrtd=(MRTD,), controller_binding="measurement"))),
        (
            snp(),
            AppraisalPolicy(snp=SnpReference(measurement=(MEASUREMENT,), controller_binding="measurement")),
        ),
    ],
)
def test_controller_measurement_binding_passes_when_the_image_is_pinned(
    evidence: object, policy: AppraisalPolicy
) -> None:
    result = appraise(evidence, policy, at=AT, expected_controller=OURS)  # type: ignore[arg-type]
    passed, detail = controller_check(result)
    assert passed and "measured image" in detail
    assert result.ok, result.error


def test_controller_measurement_binding_does_not_rescue_a_different_tee_section() -> None:
    # SGX binds through the measurement; TDX evidence is still judged by its platform field.
    policy = AppraisalPolicy(
        sgx=SgxReference(mrenclave=(MRENCLAVE,), controller_binding="measurement"), tdx=TdxReference()
    )
    assert not controller_check(appraise(tdx(), policy, at=AT, expected_controller=OURS))[0]


@pytest.mark.parametrize(
    "build",
    [
        lambda: SgxReference(controller_binding="measurement"),
        lambda: SgxReference(mrsigner=(MRSIGNER,), controller_binding="measurement"),
        lambda: TdxReference(controller_binding="measurement"),
        lambda: SnpReference(controller_binding="measurement"),
        lambda: SnpReference(controller_binding="image"),
    ],
)
def test_controller_measurement_binding_requires_a_pinned_identity(build: object) -> None:
    with pytest.raises(ConfigError, match="controller_binding"):
        build()  # type: ignore[operator]


def test_controller_binding_in_policy_files() -> None:
    policy = parse_policy(f'[sgx]\nmrenclave = ["{MRENCLAVE}"]\ncontroller_binding = "measurement"\n')
    assert policy.sgx is not None and policy.sgx.controller_binding == "measurement"
    assert parse_policy("[tdx]\n").tdx == TdxReference(controller_binding="platform")
    with pytest.raises(
        ConfigError, match=r"policy.toml: key 'snp.controller_binding'.*teelab enclave measure"
    ):
        parse_policy('[snp]\ncontroller_binding = "measurement"\n', source="policy.toml")
    with pytest.raises(ConfigError, match=r"tdx\.controller_binding"):
        parse_policy("[tdx]\ncontroller_binding = 1\n")


def test_controller_check_is_named_in_the_result_json() -> None:
    evidence = replace(sgx(), claims={**sgx().claims, "config_id": (OURS + bytes(32)).hex()})
    result = appraise(evidence, AppraisalPolicy(), at=AT, expected_controller=OURS)
    assert result.ok
    assert "controller" in [check["name"] for check in result.to_json()["checks"]]  # type: ignore[index,union-attr]
