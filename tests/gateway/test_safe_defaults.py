"""The default policy's answers to stale collateral and weak SEV-SNP guests, and policies that pin nothing.

Adversaries: the host that supplies collateral (it can present old, still-signed Intel documents from before a
TCB recovery), the host that runs an SEV-SNP guest on old firmware, below VMPL 0, with a migration agent, or
without AMD's CRL; and the host that runs an image of its own under a policy that pins no identity. Real
vectors at injected times where they exist, hand-built verified evidence where no vector has the property.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from teelab.errors import ConfigError
from teelab.gateway.anchors import TrustAnchors
from teelab.gateway.appraisal import appraise
from teelab.gateway.dcap import load_collateral
from teelab.gateway.policy import (
    AppraisalPolicy,
    SgxReference,
    SnpMinTcb,
    SnpReference,
    TdxReference,
    parse_policy,
)
from teelab.gateway.result import AttestationResult
from teelab.gateway.verifier import verify_evidence

from .test_appraisal import AT, MEASUREMENT, MRENCLAVE, MRSIGNER, MRTD, snp

VECTORS = Path(__file__).resolve().parents[2].parent / "shared" / "vectors"
NONPROD = VECTORS / "sgx-intel-qvl-sample-nonprod"
TDX = VECTORS / "tdx-dcap-qvl"


def failed(result: AttestationResult) -> dict[str, str]:
    return {check.name: check.detail for check in result.checks if not check.passed}


def nonprod(policy: AppraisalPolicy) -> AttestationResult:
    root = x509.load_pem_x509_certificate((NONPROD / "trustedRootCaCert.pem").read_bytes())
    anchors = TrustAnchors().with_intel_root(root.fingerprint(hashes.SHA256()).hex(), "QVL sample root")
    return verify_evidence(
        (NONPROD / "quote.dat").read_bytes(),
        collateral=NONPROD,
        at=datetime(2024, 1, 1, tzinfo=UTC),
        anchors=anchors,
        policy=policy,
    )


# --- Intel: stale collateral ------------------------------------------------------------------------------


def test_default_refuses_collateral_from_before_the_minimum_tcb_recovery() -> None:
    # Intel's QVL sample: valid signatures, TCB info evaluation number 3 (2019), UpToDate by its own account.
    result = nonprod(AppraisalPolicy())
    problems = failed(result)
    assert "TCB info 3, QE identity 0; minimum 17" in problems["policy.tcb_evaluation_data_number"]
    assert "the policy allows 30d" in problems["policy.collateral_age"]
    assert result.tcb_status == "UpToDate"  # exactly what stale collateral would claim
    explicit = parse_policy('min_tcb_evaluation_data_number = 0\nmax_collateral_age = "3650d"\n')
    assert nonprod(explicit).ok


def test_current_collateral_meets_the_defaults() -> None:
    result = verify_evidence(
        (TDX / "tdx_quote.bin").read_bytes(),
        collateral=load_collateral(TDX / "tdx_quote_collateral.json"),
        at=datetime(2025, 7, 1, tzinfo=UTC),
        policy=AppraisalPolicy(),
    )
    assert result.verdict == "affirming", result.error
    passed = {check.name: check.detail for check in result.checks if check.passed}
    assert "meet the policy's minimum 17" in passed["policy.tcb_evaluation_data_number"]
    assert "policy allows 30d" in passed["policy.collateral_age"]


def test_a_tighter_collateral_age_refuses_the_same_real_collateral_later() -> None:
    quote, collateral = (
        (TDX / "tdx_quote.bin").read_bytes(),
        load_collateral(TDX / "tdx_quote_collateral.json"),
    )
    week = parse_policy('max_collateral_age = "7d"\n')
    fresh = verify_evidence(quote, collateral=collateral, at=datetime(2025, 6, 20, tzinfo=UTC), policy=week)
    stale = verify_evidence(quote, collateral=collateral, at=datetime(2025, 7, 1, tzinfo=UTC), policy=week)
    assert fresh.ok, fresh.error
    assert not stale.ok and "the policy allows 7d" in failed(stale)["policy.collateral_age"]


def test_the_root_ca_crl_a_yearly_document_does_not_count_toward_the_age() -> None:
    result = verify_evidence(
        (TDX / "tdx_quote.bin").read_bytes(),
        collateral=load_collateral(TDX / "tdx_quote_collateral.json"),
        at=datetime(2025, 7, 1, tzinfo=UTC),
        policy=AppraisalPolicy(),
    )
    # The root CA CRL in this bundle was issued 2025-03-20; the TCB info 2025-06-19.
    assert result.collateral_issued_at is not None and result.collateral_issued_at.month == 6


# --- SEV-SNP ----------------------------------------------------------------------------------------------


def test_default_refuses_a_2022_milan_tcb_and_states_the_override() -> None:
    old = snp(
        details={**snp().details, "reported_tcb": {"bootloader": 2, "tee": 0, "snp": 5, "microcode": 68}}
    )
    detail = failed(appraise(old, AppraisalPolicy(), at=AT))["policy.min_tcb"]
    assert "below teelab's default minimum for Milan" in detail and "snp 5 < 8" in detail
    lowered = AppraisalPolicy(snp=SnpReference(min_tcb=SnpMinTcb(bootloader=2, tee=0, snp=5, microcode=68)))
    assert appraise(old, lowered, at=AT).ok


def test_a_product_without_a_default_minimum_needs_one_in_the_policy() -> None:
    genoa = snp(details={**snp().details, "product": "Genoa"})
    detail = failed(appraise(genoa, AppraisalPolicy(), at=AT))["policy.min_tcb"]
    assert "no default minimum TCB for Genoa" in detail and "snp.min_tcb" in detail
    assert appraise(genoa, AppraisalPolicy(snp=SnpReference(min_tcb=SnpMinTcb(snp=8))), at=AT).ok


@pytest.mark.parametrize(
    ("vmpl", "maximum", "ok"), [(0, 0, True), (1, 0, False), (2, 2, True), (3, 2, False)]
)
def test_vmpl(vmpl: int, maximum: int, ok: bool) -> None:
    evidence = snp(claims={**snp().claims, "vmpl": vmpl})
    policy = AppraisalPolicy() if maximum == 0 else AppraisalPolicy(snp=SnpReference(max_vmpl=maximum))
    result = appraise(evidence, policy, at=AT)
    assert result.ok is ok
    if not ok:
        assert (
            f"VMPL {vmpl}" in failed(result)["policy.vmpl"]
            and "snp.max_vmpl" in failed(result)["policy.vmpl"]
        )


def test_default_refuses_a_migration_agent() -> None:
    evidence = snp(claims={**snp().claims, "policy": 0x70000})
    assert "migration agent" in failed(appraise(evidence, AppraisalPolicy(), at=AT))["policy.migration_agent"]


def test_snp_defaults_in_policy_files() -> None:
    ref = parse_policy("[snp]\n").snp
    assert ref is not None
    assert (ref.require_crl, ref.allow_migration_agent, ref.max_vmpl, ref.min_tcb) == (True, False, 0, None)
    loose = parse_policy("[snp]\nrequire_crl = false\nallow_migration_agent = true\nmax_vmpl = 3\n").snp
    assert loose is not None and (loose.require_crl, loose.allow_migration_agent, loose.max_vmpl) == (
        False,
        True,
        3,
    )
    with pytest.raises(ConfigError, match="max_vmpl"):
        parse_policy("[snp]\nmax_vmpl = 4\n")
    with pytest.raises(ConfigError, match="min_tcb_evaluation_data_number"):
        parse_policy("min_tcb_evaluation_data_number = -1\n")


def test_the_sim_policy_kernel_install_writes_still_parses_with_the_defaults() -> None:
    # The `teelab-sim` policy: simulation allowed, the image pinned; the new defaults add no key it must set.
    text = f'id = "teelab-sim"\nallow_simulation = true\n[sgx]\nmrenclave = ["{MRENCLAVE}"]\n'
    policy = parse_policy(text)
    policy.require_identity_pin("sim", simulated=True)
    policy.require_identity_pin("gramine")


# --- policies that pin nothing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "policy",
    [
        AppraisalPolicy(sgx=SgxReference(mrenclave=(MRENCLAVE,))),
        AppraisalPolicy(sgx=SgxReference(mrsigner=(MRSIGNER,), isv_prod_id=0)),
        AppraisalPolicy(tdx=TdxReference(mrtd=(MRTD,))),
        AppraisalPolicy(snp=SnpReference(measurement=(MEASUREMENT,))),
    ],
)
def test_require_identity_pin_accepts_each_pin(policy: AppraisalPolicy) -> None:
    policy.require_identity_pin("gramine")


@pytest.mark.parametrize(
    "policy",
    [
        AppraisalPolicy(),
        AppraisalPolicy(sgx=SgxReference()),
        AppraisalPolicy(sgx=SgxReference(mrsigner=(MRSIGNER,))),
        AppraisalPolicy(sgx=SgxReference(mrenclave=(MRENCLAVE,)), snp=SnpReference()),
    ],
)
def test_require_identity_pin_refuses_a_policy_that_pins_nothing(policy: AppraisalPolicy) -> None:
    with pytest.raises(ConfigError, match="pins no kernel image") as raised:
        policy.require_identity_pin("gramine")
    assert raised.value.hint is not None and "teelab enclave measure" in raised.value.hint
    policy.require_identity_pin("sim", simulated=True)  # nothing to protect in a simulated TEE
