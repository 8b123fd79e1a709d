"""Every policy decision and the verdict rules, on VerifiedEvidence built by hand (no verifier involved)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from teelab.gateway.appraisal import (
    AFFIRMING,
    CONTRAINDICATED,
    CRYPTO_VALIDATION_FAILED,
    UNEXPECTED_EVIDENCE,
    WARNING,
    appraise,
    reject_unverified,
    tier,
)
from teelab.gateway.checks import Check
from teelab.gateway.policy import (
    AppraisalPolicy,
    SgxReference,
    SnpMinTcb,
    SnpReference,
    TdxReference,
)
from teelab.gateway.result import AttestationResult
from teelab.gateway.verified import VerifiedEvidence

AT = datetime(2025, 7, 1, tzinfo=UTC)
MRENCLAVE = "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
MRSIGNER = "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6"
MRTD = "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"
RTMR = "44c0197b39157fdd7a4dcc44767f9d6b0bb3977c7a8e347b8492f827fe9d9e5c48aca29b220b80b6a540cf994b9bc9c0"
MEASUREMENT = (
    "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01"
)
OTHER_32 = "ab" * 32
OTHER_48 = "cd" * 48
REPORT_DATA = (b"Hello, world!" + bytes(51)).hex()
VERIFIER_CHECKS = [Check("quote_signature", True, "ok"), Check("pck_chain", True, "ok")]


def sgx(**changes: object) -> VerifiedEvidence:
    evidence = VerifiedEvidence(
        tee="sgx",
        simulated=False,
        tcb_status="UpToDate",
        advisory_ids=[],
        claims={
            "mrenclave": MRENCLAVE,
            "mrsigner": MRSIGNER,
            "isv_prod_id": 0,
            "isv_svn": 2,
            "report_data": REPORT_DATA,
            "debug": False,
        },
        checks=list(VERIFIER_CHECKS),
        valid_from=AT - timedelta(days=12),
        valid_until=AT + timedelta(days=18),
        collateral_issued_at=AT - timedelta(days=12),
        details={"tcb_info_evaluation_data_number": 17, "qe_identity_evaluation_data_number": 17},
    )
    return replace(evidence, **changes)  # type: ignore[arg-type]


def tdx(**changes: object) -> VerifiedEvidence:
    claims = {"mrtd": MRTD, "mrconfigid": "00" * 48, "report_data": REPORT_DATA, "debug": False}
    claims.update({f"rtmr{i}": RTMR for i in range(4)})
    return replace(sgx(tee="tdx", claims=claims), **changes)  # type: ignore[arg-type]


def snp(**changes: object) -> VerifiedEvidence:
    evidence = VerifiedEvidence(
        tee="sev-snp",
        simulated=False,
        tcb_status=None,
        advisory_ids=[],
        claims={
            "measurement": MEASUREMENT,
            "host_data": "00" * 32,
            "report_data": "0102030405" + "00" * 59,
            "policy": 0x30000,
            "vmpl": 0,
            "debug": False,
        },
        checks=list(VERIFIER_CHECKS),
        # At teelab's default minimum for Milan, with AMD's CRL checked: pristine under the default policy.
        details={
            "reported_tcb": {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115},
            "product": "Milan",
            "amd_crl_checked": True,
        },
    )
    return replace(evidence, **changes)  # type: ignore[arg-type]


def failed(result: AttestationResult) -> dict[str, str]:
    return {check.name: check.detail for check in result.checks if not check.passed}


def check(result: AttestationResult, name: str) -> Check:
    matches = [c for c in result.checks if c.name == name]
    assert len(matches) == 1, [c.name for c in result.checks]
    return matches[0]


# --- verdict rules ---------------------------------------------------------------------------------------


def test_default_policy_affirms_pristine_hardware_evidence() -> None:
    result = appraise(sgx(), AppraisalPolicy(), at=AT)
    assert result.verdict == "affirming" and result.ok and result.error is None
    assert failed(result) == {}
    # The verifier's checks come first, then the policy's, in order.
    assert [c.name for c in result.checks[:2]] == ["quote_signature", "pck_chain"]
    assert {"policy.simulation", "policy.tcb_status", "policy.advisories", "policy.debug"} <= {
        c.name for c in result.checks
    }
    assert result.policy_id == "teelab-default"
    assert result.verified_at == AT
    assert all(tier(value) <= 1 for value in result.trust_vector.values())


@pytest.mark.parametrize(
    ("evidence", "policy", "reason"),
    [
        (sgx(simulated=True), AppraisalPolicy(allow_simulation=True), "not confidential"),
        (
            sgx(tcb_status="SWHardeningNeeded"),
            AppraisalPolicy(accepted_tcb_statuses=("UpToDate", "SWHardeningNeeded")),
            "TCB status SWHardeningNeeded",
        ),
        (
            sgx(advisory_ids=["INTEL-SA-00615"]),
            AppraisalPolicy(accepted_advisory_ids=("*",)),
            "INTEL-SA-00615",
        ),
        (sgx(claims={**sgx().claims, "debug": True}), AppraisalPolicy(allow_debug=True), "debug TEE"),
    ],
)
def test_accepted_but_not_pristine_is_a_warning(
    evidence: VerifiedEvidence, policy: AppraisalPolicy, reason: str
) -> None:
    result = appraise(evidence, policy, at=AT)
    assert result.verdict == "warning" and result.ok
    assert any(reason in warning for warning in result.warnings)
    # A relying party deriving the status from the trust vector reaches the same verdict.
    assert max(tier(value) for value in result.trust_vector.values()) == 2


def test_any_failed_check_is_contraindicated_and_the_vector_agrees() -> None:
    result = appraise(sgx(simulated=True), AppraisalPolicy(), at=AT)
    assert result.verdict == "contraindicated" and not result.ok
    assert result.error is not None and result.error.startswith(
        "policy.simulation: simulated TEE — not confidential"
    )
    assert max(tier(value) for value in result.trust_vector.values()) == 3


def test_a_failed_verifier_finding_rejects_even_when_policy_checks_pass() -> None:
    noted = sgx(checks=[*VERIFIER_CHECKS, Check("tcb_level", False, "a finding the verifier noted")])
    result = appraise(noted, AppraisalPolicy(), at=AT)
    assert result.verdict == "contraindicated"
    assert result.error == "tcb_level: a finding the verifier noted"


def test_every_rule_is_evaluated_so_all_problems_show_at_once() -> None:
    evidence = sgx(
        simulated=True,
        tcb_status="OutOfDate",
        advisory_ids=["INTEL-SA-00289"],
        claims={**sgx().claims, "debug": True, "mrenclave": OTHER_32},
    )
    policy = AppraisalPolicy(sgx=SgxReference(mrenclave=(MRENCLAVE,)))
    assert set(failed(appraise(evidence, policy, at=AT))) == {
        "policy.simulation",
        "policy.tcb_status",
        "policy.advisories",
        "policy.debug",
        "policy.mrenclave",
    }


# --- common rules ----------------------------------------------------------------------------------------


def test_simulation_is_rejected_by_default_with_the_way_out() -> None:
    detail = failed(appraise(sgx(simulated=True), AppraisalPolicy(), at=AT))["policy.simulation"]
    assert "simulated TEE — not confidential" in detail and "--allow-simulation" in detail
    accepted = appraise(sgx(simulated=True), AppraisalPolicy(allow_simulation=True), at=AT)
    assert "not confidential" in check(accepted, "policy.simulation").detail


def test_debug_is_rejected_by_default_for_every_tee() -> None:
    for evidence in (sgx(), tdx(), snp()):
        debug = replace(evidence, claims={**evidence.claims, "debug": True})
        detail = failed(appraise(debug, AppraisalPolicy(), at=AT))["policy.debug"]
        assert "debug TEE" in detail and "--allow-debug" in detail
        assert appraise(debug, AppraisalPolicy(allow_debug=True), at=AT).verdict == "warning"


def test_debug_flag_missing_fails_closed_except_snp_policy_bit_19() -> None:
    claims = {k: v for k, v in sgx().claims.items() if k != "debug"}
    assert "policy.debug" in failed(appraise(sgx(claims=claims), AppraisalPolicy(), at=AT))
    snp_claims = {k: v for k, v in snp().claims.items() if k != "debug"}
    debug_bits = snp(claims={**snp_claims, "policy": 0xB0000})
    assert "policy.debug" in failed(appraise(debug_bits, AppraisalPolicy(), at=AT))
    assert appraise(snp(claims=snp_claims), AppraisalPolicy(), at=AT).ok


@pytest.mark.parametrize(
    ("status", "advice"),
    [
        ("SWHardeningNeeded", "software mitigations"),
        ("ConfigurationNeeded", "BIOS configuration"),
        ("ConfigurationAndSWHardeningNeeded", "BIOS configuration"),
        ("OutOfDate", "update it"),
        ("OutOfDateConfigurationNeeded", "update it"),
        ("TcbLevelNotFound", "no TCB level"),
        ("Revoked", "revoked"),
    ],
)
def test_tcb_status_not_accepted_explains_what_to_do(status: str, advice: str) -> None:
    result = appraise(sgx(tcb_status=status), AppraisalPolicy(), at=AT)
    detail = failed(result)["policy.tcb_status"]
    assert f"TCB status {status} is not accepted (policy accepts: UpToDate)" in detail
    assert advice in detail
    # Statuses no policy may accept do not suggest accepting them.
    assert ("accepted_tcb_statuses" in detail) == (status not in ("Revoked", "TcbLevelNotFound"))


def test_tcb_status_accepted_when_listed() -> None:
    policy = AppraisalPolicy(accepted_tcb_statuses=("UpToDate", "ConfigurationNeeded"))
    result = appraise(sgx(tcb_status="ConfigurationNeeded"), policy, at=AT)
    assert result.verdict == "warning"
    assert result.trust_vector["configuration"] == WARNING
    assert result.trust_vector["hardware"] == WARNING


def test_tcb_status_missing_fails_for_intel_and_is_not_applicable_for_snp() -> None:
    assert "policy.tcb_status" in failed(appraise(sgx(tcb_status=None), AppraisalPolicy(), at=AT))
    result = appraise(snp(), AppraisalPolicy(), at=AT)
    assert "judged by policy.min_tcb" in check(result, "policy.tcb_status").detail
    assert "teelab's default minimum for Milan" in check(result, "policy.min_tcb").detail
    pinned = AppraisalPolicy(snp=SnpReference(min_tcb=SnpMinTcb(snp=5)))
    assert "judged by policy.min_tcb" in check(appraise(snp(), pinned, at=AT), "policy.tcb_status").detail


def test_every_advisory_must_be_accepted_unless_star() -> None:
    evidence = sgx(advisory_ids=["INTEL-SA-00289", "INTEL-SA-00615"])
    partly = AppraisalPolicy(accepted_advisory_ids=("INTEL-SA-00615",))
    detail = failed(appraise(evidence, partly, at=AT))["policy.advisories"]
    assert "does not accept INTEL-SA-00289;" in detail and "accepted_advisory_ids" in detail
    both = AppraisalPolicy(accepted_advisory_ids=("INTEL-SA-00289", "INTEL-SA-00615"))
    assert appraise(evidence, both, at=AT).verdict == "warning"
    assert appraise(evidence, AppraisalPolicy(accepted_advisory_ids=("*",)), at=AT).verdict == "warning"
    assert not appraise(evidence, AppraisalPolicy(), at=AT).ok
    # Advisory ids compare case-insensitively (the policy normalises to upper case).
    assert appraise(
        sgx(advisory_ids=["intel-sa-00289"]),
        AppraisalPolicy(accepted_advisory_ids=("INTEL-SA-00289",)),
        at=AT,
    ).ok


def test_collateral_age() -> None:
    policy = AppraisalPolicy(max_collateral_age=timedelta(days=30))
    assert check(appraise(sgx(), policy, at=AT), "policy.collateral_age").passed
    tight = AppraisalPolicy(max_collateral_age=timedelta(days=7))
    detail = failed(appraise(sgx(), tight, at=AT))["policy.collateral_age"]
    assert "12d before 2025-07-01T00:00:00Z; the policy allows 7d" in detail
    future = sgx(collateral_issued_at=AT + timedelta(hours=1), valid_from=None)
    assert "after the verification time" in failed(appraise(future, policy, at=AT))["policy.collateral_age"]
    assert (
        "no collateral issue date"
        in failed(appraise(sgx(collateral_issued_at=None), policy, at=AT))["policy.collateral_age"]
    )
    assert check(appraise(snp(), policy, at=AT), "policy.collateral_age").passed
    # Without max_collateral_age (only in code: a policy file cannot unset it) there is no such check.
    unlimited = AppraisalPolicy(max_collateral_age=None)
    assert "policy.collateral_age" not in {c.name for c in appraise(sgx(), unlimited, at=AT).checks}
    # The default allows 30 days: Intel's documents live that long and a PCCS refreshes them daily.
    assert check(appraise(sgx(), AppraisalPolicy(), at=AT), "policy.collateral_age").passed
    stale = sgx(collateral_issued_at=AT - timedelta(days=31))
    assert (
        "the policy allows 30d" in failed(appraise(stale, AppraisalPolicy(), at=AT))["policy.collateral_age"]
    )


def test_validity_window_is_rechecked_at_the_appraisal_time() -> None:
    later = AT + timedelta(days=365)
    detail = failed(appraise(sgx(), AppraisalPolicy(), at=later))["policy.validity"]
    assert "expired at 2026-07-01T00:00:00Z" in detail and "--at" in detail
    earlier = AT - timedelta(days=30)
    assert "not yet" in failed(appraise(sgx(), AppraisalPolicy(), at=earlier))["policy.validity"]
    assert "policy.validity" not in {c.name for c in appraise(snp(), AppraisalPolicy(), at=later).checks}


def test_report_data_from_policy_and_from_the_caller_in_constant_time() -> None:
    policy = AppraisalPolicy(report_data=b"Hello, world!")
    assert check(appraise(sgx(), policy, at=AT), "policy.report_data").passed
    wrong = AppraisalPolicy(report_data=b"Hello, world?")
    assert (
        "does not match the policy's report_data"
        in failed(appraise(sgx(), wrong, at=AT))["policy.report_data"]
    )
    full = bytes.fromhex(REPORT_DATA)
    result = appraise(sgx(), AppraisalPolicy(), at=AT, expected_report_data=full)
    assert check(result, "policy.expected_report_data").passed
    assert result.expected_report_data == full
    replay = appraise(sgx(), AppraisalPolicy(), at=AT, expected_report_data=b"\x01" * 64)
    assert "a replay" in failed(replay)["policy.expected_report_data"]
    assert replay.trust_vector["instance-identity"] == CONTRAINDICATED
    too_long = appraise(sgx(), AppraisalPolicy(), at=AT, expected_report_data=b"\x00" * 65)
    assert "65 bytes" in failed(too_long)["policy.expected_report_data"]
    missing = sgx(claims={k: v for k, v in sgx().claims.items() if k != "report_data"})
    assert "no report_data" in failed(appraise(missing, policy, at=AT))["policy.report_data"]
    bad_hex = sgx(claims={**sgx().claims, "report_data": "zz"})
    assert "no report_data" in failed(appraise(bad_hex, policy, at=AT))["policy.report_data"]


def test_policy_sections_decide_which_tees_are_accepted() -> None:
    sgx_only = AppraisalPolicy(sgx=SgxReference(mrenclave=(MRENCLAVE,)))
    assert appraise(sgx(), sgx_only, at=AT).ok
    detail = failed(appraise(snp(), sgx_only, at=AT))["policy.tee"]
    assert "only has reference values for [sgx]" in detail and "add a [snp] section" in detail
    assert not appraise(tdx(), sgx_only, at=AT).ok
    # An empty section accepts the TEE without pins; no section at all accepts every TEE.
    assert appraise(tdx(), AppraisalPolicy(sgx=SgxReference(), tdx=TdxReference()), at=AT).ok
    assert "policy.tee" not in {c.name for c in appraise(tdx(), AppraisalPolicy(), at=AT).checks}


# --- SGX -------------------------------------------------------------------------------------------------


def test_sgx_mrenclave_pin() -> None:
    assert appraise(sgx(), AppraisalPolicy(sgx=SgxReference(mrenclave=(OTHER_32, MRENCLAVE))), at=AT).ok
    result = appraise(sgx(), AppraisalPolicy(sgx=SgxReference(mrenclave=(OTHER_32, "ef" * 32))), at=AT)
    detail = failed(result)["policy.mrenclave"]
    assert detail.startswith("MRENCLAVE 33d8736d… is not in the policy's allowed list (2 values)")
    assert "`teelab enclave measure`" in detail
    assert result.trust_vector["executables"] == CONTRAINDICATED
    # Claims compare case-insensitively.
    upper = sgx(claims={**sgx().claims, "mrenclave": MRENCLAVE.upper()})
    assert appraise(upper, AppraisalPolicy(sgx=SgxReference(mrenclave=(MRENCLAVE,))), at=AT).ok


def test_sgx_mrsigner_product_and_svn() -> None:
    good = AppraisalPolicy(sgx=SgxReference(mrsigner=(MRSIGNER,), isv_prod_id=0, min_isv_svn=2))
    result = appraise(sgx(), good, at=AT)
    assert result.ok and result.trust_vector["executables"] == AFFIRMING
    bad = AppraisalPolicy(sgx=SgxReference(mrsigner=(OTHER_32,), isv_prod_id=1, min_isv_svn=3))
    problems = failed(appraise(sgx(), bad, at=AT))
    assert "MRSIGNER 815f42f1… is not in the policy's allowed list (1 value)" in problems["policy.mrsigner"]
    assert "ISVPRODID 0 is not the policy's product 1" in problems["policy.isv_prod_id"]
    assert "ISVSVN 2 is below the policy's minimum 3" in problems["policy.min_isv_svn"]


def test_missing_claims_fail_closed() -> None:
    policy = AppraisalPolicy(sgx=SgxReference(mrenclave=(MRENCLAVE,), isv_prod_id=0, min_isv_svn=0))
    problems = failed(appraise(sgx(claims={"debug": False}), policy, at=AT))
    assert "no MRENCLAVE" in problems["policy.mrenclave"]
    assert {"policy.isv_prod_id", "policy.min_isv_svn"} <= set(problems)


# --- TDX -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mrconfigid"])
def test_tdx_pins(name: str) -> None:
    actual = tdx().claims[name]
    assert appraise(tdx(), AppraisalPolicy(tdx=TdxReference(**{name: (actual,)})), at=AT).ok  # type: ignore[arg-type]
    result = appraise(tdx(), AppraisalPolicy(tdx=TdxReference(**{name: (OTHER_48,)})), at=AT)  # type: ignore[arg-type]
    detail = failed(result)[f"policy.{name}"]
    assert detail.startswith(
        f"{name.upper()} {str(actual)[:8]}… is not in the policy's allowed list (1 value)"
    )
    assert f"tdx.{name}" in detail


# --- SEV-SNP ---------------------------------------------------------------------------------------------


def test_snp_measurement_and_host_data() -> None:
    assert appraise(
        snp(), AppraisalPolicy(snp=SnpReference(measurement=(MEASUREMENT,), host_data=("00" * 32,))), at=AT
    ).ok
    problems = failed(
        appraise(
            snp(), AppraisalPolicy(snp=SnpReference(measurement=(OTHER_48,), host_data=(OTHER_32,))), at=AT
        )
    )
    assert "MEASUREMENT b07af962…" in problems["policy.measurement"]
    assert "HOST_DATA 00000000…" in problems["policy.host_data"]


def test_snp_min_tcb() -> None:
    exact = AppraisalPolicy(snp=SnpReference(min_tcb=SnpMinTcb(bootloader=3, tee=0, snp=8, microcode=115)))
    assert (
        "bootloader 3, tee 0, snp 8, microcode 115"
        in check(appraise(snp(), exact, at=AT), "policy.min_tcb").detail
    )
    higher = AppraisalPolicy(snp=SnpReference(min_tcb=SnpMinTcb(snp=9, microcode=116)))
    detail = failed(appraise(snp(), higher, at=AT))["policy.min_tcb"]
    assert "snp 8 < 9; microcode 115 < 116" in detail and "firmware" in detail
    fmc = AppraisalPolicy(snp=SnpReference(min_tcb=SnpMinTcb(fmc=1)))
    assert "fmc is not reported" in failed(appraise(snp(), fmc, at=AT))["policy.min_tcb"]
    assert "no REPORTED_TCB" in failed(appraise(snp(details={}), higher, at=AT))["policy.min_tcb"]


@pytest.mark.parametrize(
    ("reference", "bits", "name", "ok"),
    [
        (SnpReference(allow_smt=False), 0x30000, "policy.smt", False),
        (SnpReference(allow_smt=False), 0x20000, "policy.smt", True),
        (SnpReference(allow_migration_agent=False), 0x70000, "policy.migration_agent", False),
        (SnpReference(allow_migration_agent=False), 0x30000, "policy.migration_agent", True),
        (SnpReference(require_single_socket=True), 0x30000, "policy.single_socket", False),
        (SnpReference(require_single_socket=True), 0x130000, "policy.single_socket", True),
    ],
)
def test_snp_guest_policy_bits(reference: SnpReference, bits: int, name: str, ok: bool) -> None:
    evidence = snp(claims={**snp().claims, "policy": bits})
    result = appraise(evidence, AppraisalPolicy(snp=reference), at=AT)
    assert check(result, name).passed is ok
    assert result.ok is ok


def test_snp_defaults_refuse_a_migration_agent_only_and_missing_policy_fails_closed() -> None:
    result = appraise(snp(claims={**snp().claims, "policy": 0x170000}), AppraisalPolicy(), at=AT)
    assert not {c.name for c in result.checks} & {"policy.smt", "policy.single_socket"}
    assert "allow_migration_agent = false" in failed(result)["policy.migration_agent"]
    allowed = AppraisalPolicy(snp=SnpReference(allow_migration_agent=True))
    assert appraise(snp(claims={**snp().claims, "policy": 0x170000}), allowed, at=AT).ok
    no_policy = snp(claims={k: v for k, v in snp().claims.items() if k != "policy"})
    assert "policy.guest_policy" in failed(
        appraise(no_policy, AppraisalPolicy(snp=SnpReference(allow_smt=False)), at=AT)
    )


# --- results for evidence that never verified ------------------------------------------------------------


def test_reject_unverified_carries_checks_and_no_claims() -> None:
    checks = [
        Check("evidence.format", True, "Intel DCAP quote v3"),
        Check("pck_chain", False, "root differs"),
    ]
    result = reject_unverified(
        checks=checks, tee="sgx", at=AT, policy=AppraisalPolicy(id="p"), cause="verification"
    )
    assert result.verdict == "contraindicated" and not result.ok
    assert result.claims == {} and result.tee == "sgx" and result.policy_id == "p"
    assert result.error == "pck_chain: root differs"
    assert set(result.trust_vector.values()) == {CRYPTO_VALIDATION_FAILED}
    unknown = reject_unverified(checks=[], tee=None, at=AT, policy=AppraisalPolicy(), cause="unrecognized")
    assert set(unknown.trust_vector.values()) == {UNEXPECTED_EVIDENCE}
    assert unknown.error == "rejected"


def test_tiers() -> None:
    assert [tier(v) for v in (-1, 0, 1, 2, 31, 32, 95, 96, 127)] == [0, 0, 0, 1, 1, 2, 2, 3, 3]


def test_snp_require_crl() -> None:
    required = AppraisalPolicy(snp=SnpReference(require_crl=True))
    checked = snp(details={**snp().details, "amd_crl_checked": True})
    unchecked = snp(details={**snp().details, "amd_crl_checked": False})
    assert check(appraise(checked, required, at=AT), "policy.amd_crl").passed
    refused = appraise(unchecked, required, at=AT)
    assert not refused.ok and "snp.require_crl = true" in failed(refused)["policy.amd_crl"]
    silent = {k: v for k, v in snp().details.items() if k != "amd_crl_checked"}
    assert "policy.amd_crl" in failed(appraise(snp(details=silent), required, at=AT))  # no word: fails closed
    # Required by default; a policy that accepts unchecked revocation says so.
    assert "policy.amd_crl" in failed(appraise(unchecked, AppraisalPolicy(), at=AT))
    optional = AppraisalPolicy(snp=SnpReference(require_crl=False))
    assert "policy.amd_crl" not in {c.name for c in appraise(unchecked, optional, at=AT).checks}
