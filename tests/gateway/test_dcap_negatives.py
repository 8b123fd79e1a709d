"""Intel negatives: each is rejected at the expected check, with a reason a person can act on."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from teelab.errors import VerificationError
from teelab.gateway.anchors import TrustAnchors
from teelab.gateway.checks import CheckLog
from teelab.gateway.dcap import IntelCollateral, load_collateral, verify_intel_quote

SPR_AT = datetime.fromisoformat("2023-07-01T01:00:00+00:00")

# go-tdx-guest TestNegativeVerification mutations of tdx_prod_quote_SPR_E4.dat -> the check that rejects them.
GO_TDX_GUEST = {
    "version_byte_changed": ("quote_parse", "TEE type"),
    "signed_data_size_byte_changed": ("quote_parse", "remain"),
    "cert_chain_byte_changed": ("pck_chain", "BEGIN markers"),
    "root_cert_byte_changed": ("pck_chain", "root CA certificate"),
    "intermediate_cert_byte_changed": ("pck_chain", "PCK CA certificate"),
    "pck_cert_byte_changed": ("pck_chain", "the PCK certificate"),
    "header_byte_changed": ("quote_signature", "attestation key"),
    "td_quote_body_changed": ("quote_signature", "attestation key"),
}

WINDOW_CASES = {
    "sgx-dcap-qvl/sgx_quote": "sgx-dcap-qvl/sgx_quote_collateral.json",
    "tdx-dcap-qvl/tdx_quote": "tdx-dcap-qvl/tdx_quote_collateral.json",
    "tdx-dcap-qvl/tdx_quote_outdated": "tdx-dcap-qvl/tdx_quote_outdated_collateral.json",
    "tdx-dcap-qvl/near_tdx_quote": "tdx-dcap-qvl/near_tdx_quote_collateral.json",
    "tdx-go-tdx-guest/tdx_prod_quote_SPR_E4": "tdx-go-tdx-guest",
    "tdx-go-tdx-guest/quote_v5_sample": "tdx-go-tdx-guest/quote_v5_sample_collateral.ASSEMBLED.json",
    "sgx-intel-qvl-sample-nonprod/quote": "sgx-intel-qvl-sample-nonprod",
}
INTEL_TEST_ROOT = "842a5bcb64ba3f7d755036ce1bb85778b3481a5dd75f4731c381b8eea658aa0d"


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _reject(
    quote: bytes, collateral: IntelCollateral, at: datetime, anchors: TrustAnchors | None = None
) -> tuple[VerificationError, CheckLog]:
    log = CheckLog()
    with pytest.raises(VerificationError) as caught:
        verify_intel_quote(quote, collateral, at=at, anchors=anchors or TrustAnchors(), log=log)
    # The failure is the last check recorded, and nothing after it ran.
    assert log.checks[-1].name == caught.value.check
    assert not log.checks[-1].passed
    return caught.value, log


def test_manifest_lists_the_go_tdx_guest_negatives(vector_manifest: dict[str, Any]) -> None:
    listed = {
        n["file"].split(".")[-2] for n in vector_manifest["negatives"] if "tdx_prod_quote_SPR_E4" in n["file"]
    }
    assert listed == set(GO_TDX_GUEST)


@pytest.mark.parametrize("mutation", sorted(GO_TDX_GUEST))
def test_go_tdx_guest_negative(mutation: str, vector_dir: Path) -> None:
    quote = (vector_dir / "tdx-go-tdx-guest/negative" / f"tdx_prod_quote_SPR_E4.{mutation}.dat").read_bytes()
    error, log = _reject(quote, load_collateral(vector_dir / "tdx-go-tdx-guest"), SPR_AT)
    check, words = GO_TDX_GUEST[mutation]
    assert error.check == check
    assert words in error.detail
    assert all(c.passed for c in log.checks[:-1])


def test_unmutated_spr_quote_passes_every_authenticity_check(vector_dir: Path) -> None:
    # The control for the negatives above: the original only fails at TCB level matching.
    evidence = verify_intel_quote(
        (vector_dir / "tdx-go-tdx-guest/tdx_prod_quote_SPR_E4.dat").read_bytes(),
        load_collateral(vector_dir / "tdx-go-tdx-guest"),
        at=SPR_AT,
        anchors=TrustAnchors(),
    )
    assert evidence.tcb_status == "TcbLevelNotFound"
    assert evidence.details["tdx_module_id"] == "tdxModule"


def test_fmspc_mismatch(vector_dir: Path, read_vector: Callable[[str], bytes]) -> None:
    error, _ = _reject(
        read_vector("tdx-dcap-qvl/tdx_quote.bin"),
        load_collateral(vector_dir / "tdx-dcap-qvl/near_tdx_quote_collateral.json"),
        _time("2025-09-15T00:00:00Z"),
    )
    assert error.check == "tcb_info_match"
    assert "b0c06f000000" in error.detail and "20a06f000000" in error.detail
    assert error.hint and "b0c06f000000" in error.hint


def test_pck_certificate_not_yet_valid_in_the_collateral_window(
    vector_dir: Path, read_vector: Callable[[str], bytes]
) -> None:
    error, _ = _reject(
        read_vector("tdx-dcap-qvl/near_tdx_quote.hex"),
        load_collateral(vector_dir / "tdx-dcap-qvl/tdx_quote_collateral.json"),
        _time("2025-07-01T00:00:00Z"),
    )
    assert error.check == "pck_cert_validity"
    assert error.detail == (
        "the PCK certificate is not valid before 2025-07-31T07:28:39Z "
        "(verification time 2025-07-01T00:00:00Z)"
    )


@pytest.mark.parametrize("case_id", sorted(WINDOW_CASES))
def test_window_plus_one_year_is_expired(
    case_id: str, vector_dir: Path, vector_manifest: dict[str, Any], read_vector: Callable[[str], bytes]
) -> None:
    entry = next(p for p in vector_manifest["positives"] if p["id"] == case_id)
    end = _time(entry["valid_window_utc"][1])
    at = end + timedelta(days=365)
    anchors = TrustAnchors().with_intel_root(INTEL_TEST_ROOT, "Intel test root")
    error, _ = _reject(
        read_vector(entry["quote"]), load_collateral(vector_dir / WINDOW_CASES[case_id]), at, anchors
    )
    # Collateral lasts ~30 days, certificates years; the Intel sample's PCK certificate expires first.
    assert error.check in ("collateral_validity", "pck_cert_validity")
    assert "expired at" in error.detail
    assert f"(verification time {at.strftime('%Y-%m-%dT%H:%M:%SZ')})" in error.detail
    if error.check == "collateral_validity":
        assert error.hint and "fresh collateral" in error.hint


@pytest.mark.parametrize("case_id", sorted(WINDOW_CASES))
def test_just_outside_the_window_is_rejected(
    case_id: str, vector_dir: Path, vector_manifest: dict[str, Any], read_vector: Callable[[str], bytes]
) -> None:
    entry = next(p for p in vector_manifest["positives"] if p["id"] == case_id)
    start, end = (_time(t) for t in entry["valid_window_utc"])
    collateral = load_collateral(vector_dir / WINDOW_CASES[case_id])
    anchors = TrustAnchors().with_intel_root(INTEL_TEST_ROOT, "Intel test root")
    quote = read_vector(entry["quote"])
    for at, words in (
        (start - timedelta(seconds=1), "not valid before"),
        (end + timedelta(seconds=1), "expired"),
    ):
        error, _ = _reject(quote, collateral, at, anchors)
        assert error.check in ("collateral_validity", "pck_cert_validity")
        assert words in error.detail
    # The window's edges themselves are inside.
    for at in (start, end):
        verify_intel_quote(quote, collateral, at=at, anchors=anchors)


def test_sgx_quote_with_tdx_collateral(vector_dir: Path, read_vector: Callable[[str], bytes]) -> None:
    error, _ = _reject(
        read_vector("sgx-dcap-qvl/sgx_quote.bin"),
        load_collateral(vector_dir / "tdx-dcap-qvl/tdx_quote_collateral.json"),
        _time("2025-07-01T00:00:00Z"),
    )
    assert error.check == "tcb_info_match"
    assert "no SGX TCB info" in error.detail


def test_tdx_quote_without_a_td_qe_identity(vector_dir: Path, read_vector: Callable[[str], bytes]) -> None:
    tdx = load_collateral(vector_dir / "tdx-dcap-qvl/tdx_quote_collateral.json")
    sgx = load_collateral(vector_dir / "sgx-dcap-qvl/sgx_quote_collateral.json")
    error, _ = _reject(
        read_vector("tdx-dcap-qvl/tdx_quote.bin"),
        replace(tdx, qe_identities=sgx.qe_identities),
        _time("2025-07-01T00:00:00Z"),
    )
    assert error.check == "qe_identity_match"
    assert "TD_QE" in error.detail


def test_pck_crl_of_the_other_ca(vector_dir: Path, read_vector: Callable[[str], bytes]) -> None:
    # The TDX quote chains through the Platform CA; give it only the Processor CA's CRL.
    tdx = load_collateral(vector_dir / "tdx-dcap-qvl/tdx_quote_collateral.json")
    sgx = load_collateral(vector_dir / "sgx-dcap-qvl/sgx_quote_collateral.json")
    error, _ = _reject(
        read_vector("tdx-dcap-qvl/tdx_quote.bin"),
        replace(tdx, pck_crls=sgx.pck_crls),
        _time("2025-07-01T00:00:00Z"),
    )
    assert error.check == "pck_crl"
    assert "Intel SGX PCK Platform CA" in error.detail and "Processor" in error.detail


def _bundle(vector_dir: Path, name: str) -> dict[str, str]:
    bundle: dict[str, str] = json.loads((vector_dir / name).read_text())
    return bundle


def test_altered_tcb_info_fails_its_signature(vector_dir: Path, read_vector: Callable[[str], bytes]) -> None:
    bundle = _bundle(vector_dir, "sgx-dcap-qvl/sgx_quote_collateral.json")
    bundle["tcb_info"] = bundle["tcb_info"].replace(
        '"tcbEvaluationDataNumber":17', '"tcbEvaluationDataNumber":18'
    )
    error, _ = _reject(
        read_vector("sgx-dcap-qvl/sgx_quote.bin"),
        IntelCollateral.from_bundle_json(json.dumps(bundle)),
        _time("2025-07-01T00:00:00Z"),
    )
    assert error.check == "tcb_info_signature"


def test_reserialised_tcb_info_fails_its_signature(
    vector_dir: Path, read_vector: Callable[[str], bytes]
) -> None:
    # Same meaning, different bytes: Intel signs the bytes as served, so this must not verify.
    bundle = _bundle(vector_dir, "sgx-dcap-qvl/sgx_quote_collateral.json")
    bundle["tcb_info"] = json.dumps(json.loads(bundle["tcb_info"]))
    error, _ = _reject(
        read_vector("sgx-dcap-qvl/sgx_quote.bin"),
        IntelCollateral.from_bundle_json(json.dumps(bundle)),
        _time("2025-07-01T00:00:00Z"),
    )
    assert error.check == "tcb_info_signature"


def test_swapped_qe_identity_signature(vector_dir: Path, read_vector: Callable[[str], bytes]) -> None:
    bundle = _bundle(vector_dir, "sgx-dcap-qvl/sgx_quote_collateral.json")
    bundle["qe_identity_signature"] = bundle["tcb_info_signature"]
    error, _ = _reject(
        read_vector("sgx-dcap-qvl/sgx_quote.bin"),
        IntelCollateral.from_bundle_json(json.dumps(bundle)),
        _time("2025-07-01T00:00:00Z"),
    )
    assert error.check == "qe_identity_signature"


def test_collateral_signed_under_another_root(vector_dir: Path, read_vector: Callable[[str], bytes]) -> None:
    # Production quote, collateral chain from Intel's non-production sample (same subject names, other key).
    bundle = _bundle(vector_dir, "sgx-dcap-qvl/sgx_quote_collateral.json")
    bundle["tcb_info_issuer_chain"] = (
        vector_dir / "sgx-intel-qvl-sample-nonprod/tcbSignChain.pem"
    ).read_text()
    error, _ = _reject(
        read_vector("sgx-dcap-qvl/sgx_quote.bin"),
        IntelCollateral.from_bundle_json(json.dumps(bundle)),
        _time("2025-07-01T00:00:00Z"),
    )
    assert error.check == "collateral_chain"
    assert INTEL_TEST_ROOT in error.detail


def test_root_crl_from_another_root(vector_dir: Path, read_vector: Callable[[str], bytes]) -> None:
    bundle = _bundle(vector_dir, "sgx-dcap-qvl/sgx_quote_collateral.json")
    bundle["root_ca_crl"] = (vector_dir / "sgx-intel-qvl-sample-nonprod/rootCaCrl.der").read_bytes().hex()
    error, _ = _reject(
        read_vector("sgx-dcap-qvl/sgx_quote.bin"),
        IntelCollateral.from_bundle_json(json.dumps(bundle)),
        _time("2025-07-01T00:00:00Z"),
    )
    assert error.check == "root_ca_crl"


def test_pck_crl_from_another_root(vector_dir: Path, read_vector: Callable[[str], bytes]) -> None:
    bundle = _bundle(vector_dir, "sgx-dcap-qvl/sgx_quote_collateral.json")
    bundle["pck_crl"] = (vector_dir / "sgx-intel-qvl-sample-nonprod/intermediateCaCrl.der").read_bytes().hex()
    error, _ = _reject(
        read_vector("sgx-dcap-qvl/sgx_quote.bin"),
        IntelCollateral.from_bundle_json(json.dumps(bundle)),
        _time("2025-07-01T00:00:00Z"),
    )
    assert error.check == "pck_crl"
    assert "not signed by" in error.detail


def test_naive_verification_time_is_refused(vector_dir: Path, read_vector: Callable[[str], bytes]) -> None:
    error, _ = _reject(
        read_vector("sgx-dcap-qvl/sgx_quote.bin"),
        load_collateral(vector_dir / "sgx-dcap-qvl/sgx_quote_collateral.json"),
        datetime(2025, 7, 1),  # naive on purpose
    )
    assert error.check == "verification_time"


def test_a_pinned_intel_root_does_not_make_a_quote_simulated(
    vector_dir: Path, read_vector: Callable[[str], bytes]
) -> None:
    intel_only = TrustAnchors(simulated_roots={})
    evidence = verify_intel_quote(
        read_vector("sgx-dcap-qvl/sgx_quote.bin"),
        load_collateral(vector_dir / "sgx-dcap-qvl/sgx_quote_collateral.json"),
        at=_time("2025-07-01T00:00:00Z"),
        anchors=intel_only,
    )
    assert evidence.simulated is False
    empty = TrustAnchors(intel_roots={})
    error, _ = _reject(
        read_vector("sgx-dcap-qvl/sgx_quote.bin"),
        load_collateral(vector_dir / "sgx-dcap-qvl/sgx_quote_collateral.json"),
        _time("2025-07-01T00:00:00Z"),
        empty,
    )
    assert error.check == "root_pinned"
