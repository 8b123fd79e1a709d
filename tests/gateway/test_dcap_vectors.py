"""Every public Intel vector (shared/vectors/manifest.json) verifies to its expected result at its time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from teelab.errors import VerificationError
from teelab.gateway.anchors import TrustAnchors
from teelab.gateway.checks import CheckLog
from teelab.gateway.dcap import load_collateral, parse_quote, verify_intel_quote
from teelab.gateway.verified import TCB_STATUSES

INTEL_TEST_ROOT = "842a5bcb64ba3f7d755036ce1bb85778b3481a5dd75f4731c381b8eea658aa0d"


@dataclass(frozen=True)
class Case:
    collateral: str  # bundle file or PCS folder, relative to shared/vectors
    test_root: bool = False  # the Intel QVL sample is signed under Intel's non-production root


# Which collateral each Intel positive of the manifest is verified with (the manifest says it in prose).
CASES = {
    "sgx-dcap-qvl/sgx_quote": Case("sgx-dcap-qvl/sgx_quote_collateral.json"),
    "tdx-dcap-qvl/tdx_quote": Case("tdx-dcap-qvl/tdx_quote_collateral.json"),
    "tdx-dcap-qvl/tdx_quote_outdated": Case("tdx-dcap-qvl/tdx_quote_outdated_collateral.json"),
    "tdx-dcap-qvl/near_tdx_quote": Case("tdx-dcap-qvl/near_tdx_quote_collateral.json"),
    "tdx-go-tdx-guest/tdx_prod_quote_SPR_E4": Case("tdx-go-tdx-guest"),
    "tdx-go-tdx-guest/quote_v5_sample": Case("tdx-go-tdx-guest/quote_v5_sample_collateral.ASSEMBLED.json"),
    "sgx-intel-qvl-sample-nonprod/quote": Case("sgx-intel-qvl-sample-nonprod", test_root=True),
}
NO_MATCH_PREFIXES = ("NO_MATCH", "TCB_NOT_SUPPORTED")


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _status(expected: str) -> str:
    return "TcbLevelNotFound" if expected.startswith(NO_MATCH_PREFIXES) else expected


def _positive(manifest: dict[str, Any], case_id: str) -> dict[str, Any]:
    entry: dict[str, Any] = next(p for p in manifest["positives"] if p["id"] == case_id)
    return entry


def _anchors(case: Case) -> TrustAnchors:
    anchors = TrustAnchors()
    return (
        anchors.with_intel_root(INTEL_TEST_ROOT, "Intel SGX Root CA (non-production)")
        if case.test_root
        else anchors
    )


def test_every_intel_positive_has_a_case(vector_manifest: dict[str, Any]) -> None:
    intel = {p["id"] for p in vector_manifest["positives"] if p["tee"] in ("SGX", "TDX")}
    assert intel == set(CASES)


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_intel_positive_vector(
    case_id: str, vector_dir: Path, vector_manifest: dict[str, Any], read_vector: Callable[[str], bytes]
) -> None:
    entry = _positive(vector_manifest, case_id)
    case = CASES[case_id]
    expected = entry["expected"]
    log = CheckLog()
    evidence = verify_intel_quote(
        read_vector(entry["quote"]),
        load_collateral(vector_dir / case.collateral),
        at=_time(entry["verify_time_utc"]),
        anchors=_anchors(case),
        log=log,
    )
    status = _status(expected["final_tcb_status"])
    assert status in TCB_STATUSES
    assert evidence.tcb_status == status
    assert evidence.advisory_ids == expected["advisory_ids"]
    assert evidence.tee == entry["tee"].lower()
    assert evidence.simulated is False
    assert evidence.details["fmspc"] == expected["fmspc"]
    assert evidence.details["qe_tcb_status"] == expected["qe_tcb_status"]
    assert evidence.details["platform_tcb_status"] == _status(expected["platform_tcb_status"])
    if "tdx_module" in expected:
        module = expected["tdx_module"]
        assert evidence.details["tdx_module_id"] == module["module_id"]
        assert evidence.details["tdx_module_tcb_status"] == module["module_status"]
    # Every claim and detail the manifest lists, under the names the CLI uses.
    values = {**evidence.details, **evidence.claims}
    for name, value in entry["fields"].items():
        assert values[name] == value, name
    # The reported window is the intersection of every certificate, CRL and document window.
    assert [evidence.valid_from, evidence.valid_until] == [_time(t) for t in entry["valid_window_utc"]]
    assert evidence.collateral_issued_at is not None
    assert evidence.collateral_issued_at <= _time(entry["verify_time_utc"])
    # All checks pass except the ones that carry a TCB level that was not found.
    failed = [c.name for c in log.checks if not c.passed]
    if status == "TcbLevelNotFound":
        assert failed == ["platform_tcb", "tcb_status"]
    else:
        assert failed == []
    assert evidence.checks == log.checks
    names = [c.name for c in log.checks]
    for required in (
        "quote_parse",
        "quote_signature",
        "pck_chain",
        "root_pinned",
        "pck_cert_validity",
        "qe_report_signature",
        "qe_report_data",
        "tcb_info_signature",
        "qe_identity_signature",
        "root_ca_crl",
        "pck_crl",
        "revocation",
        "collateral_validity",
        "qe_identity",
        "qe_tcb",
        "platform_tcb",
        "tcb_status",
    ):
        assert required in names
    if evidence.tee == "tdx":
        assert {"tdx_module", "tdx_module_tcb"} <= set(names)


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_quote_fields_match_the_manifest(
    case_id: str, vector_manifest: dict[str, Any], read_vector: Callable[[str], bytes]
) -> None:
    entry = _positive(vector_manifest, case_id)
    quote = parse_quote(read_vector(entry["quote"]))
    assert quote.header.version == entry["quote_version"]
    assert quote.trailing == entry["trailing_bytes_after_sig_data"]
    assert {"SGX": "SGX enclave report", "TDX10": "TD report 1.0", "TDX15": "TD report 1.5"}[
        entry["body"]
    ] == quote.body_name
    qe = quote.signature.qe_report
    expected = entry["qe_report"]
    assert qe.mrenclave.hex() == expected["mrenclave"]
    assert qe.mrsigner.hex() == expected["mrsigner"]
    assert qe.isv_prod_id == expected["isv_prod_id"]
    assert qe.isv_svn == expected["isv_svn"]
    assert int.from_bytes(qe.miscselect, "little") == expected["miscselect"]
    assert qe.attributes.hex() == expected["attributes"]
    assert qe.report_data.hex() == expected["report_data"]


def test_intel_sample_is_rejected_under_the_production_root(
    vector_dir: Path, read_vector: Callable[[str], bytes]
) -> None:
    log = CheckLog()
    with pytest.raises(VerificationError) as caught:
        verify_intel_quote(
            read_vector("sgx-intel-qvl-sample-nonprod/quote.dat"),
            load_collateral(vector_dir / "sgx-intel-qvl-sample-nonprod"),
            at=_time("2024-01-01T00:00:00Z"),
            anchors=TrustAnchors(),
            log=log,
        )
    assert caught.value.check == "root_pinned"
    assert INTEL_TEST_ROOT in caught.value.detail
    assert "not a pinned root" in caught.value.detail
    assert caught.value.hint and "with_intel_root" in caught.value.hint
    assert log.checks[-1].name == "root_pinned" and not log.checks[-1].passed


def test_intel_sample_verifies_when_its_test_root_is_pinned(
    vector_dir: Path, read_vector: Callable[[str], bytes]
) -> None:
    anchors = TrustAnchors().with_intel_root(INTEL_TEST_ROOT, "Intel test root")
    evidence = verify_intel_quote(
        read_vector("sgx-intel-qvl-sample-nonprod/quote.dat"),
        load_collateral(vector_dir / "sgx-intel-qvl-sample-nonprod"),
        at=_time("2024-01-01T00:00:00Z"),
        anchors=anchors,
    )
    assert evidence.tcb_status == "UpToDate"
    assert evidence.advisory_ids == []
    # The byte-order pitfall: MISCSELECT "D182B18C" in the QE identity is the report's byte sequence.
    assert {c.name for c in evidence.checks if c.passed} >= {"qe_identity", "qe_tcb"}


def test_intel_sample_as_a_simulated_root_is_marked_simulated(
    vector_dir: Path, read_vector: Callable[[str], bytes]
) -> None:
    anchors = TrustAnchors().with_simulated_root(INTEL_TEST_ROOT, "a simulated platform")
    evidence = verify_intel_quote(
        read_vector("sgx-intel-qvl-sample-nonprod/quote.dat"),
        load_collateral(vector_dir / "sgx-intel-qvl-sample-nonprod"),
        at=_time("2024-01-01T00:00:00Z"),
        anchors=anchors,
    )
    assert evidence.simulated is True
    assert evidence.tcb_status == "UpToDate"
    assert "SIMULATED" in next(c.detail for c in evidence.checks if c.name == "root_pinned")


def test_sgx_claims(vector_dir: Path, read_vector: Callable[[str], bytes]) -> None:
    evidence = verify_intel_quote(
        read_vector("sgx-dcap-qvl/sgx_quote.bin"),
        load_collateral(vector_dir / "sgx-dcap-qvl/sgx_quote_collateral.json"),
        at=_time("2025-07-01T00:00:00Z"),
        anchors=TrustAnchors(),
    )
    assert set(evidence.claims) == {
        "mrenclave",
        "mrsigner",
        "isv_prod_id",
        "isv_svn",
        "config_id",
        "report_data",
        "debug",
    }
    # CONFIGID names the controlling gateway (the controller rule); this quote predates it: all zero.
    assert evidence.claims["config_id"] == "00" * 64
    assert bytes.fromhex(str(evidence.claims["report_data"])).startswith(b"Hello, world!")
    # TCB matching uses the PCK certificate's SVNs, which differ from the report's CPUSVN here.
    assert evidence.details["pck_tcb_svns"] == [11, 11, 2, 2, 255, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    assert evidence.details["pcesvn"] == 13
    assert evidence.details["cpusvn"] != evidence.details["pck_cpusvn"]
    assert evidence.details["tcb_date"] == "2024-03-13T00:00:00Z"
    assert evidence.details["sgx_type"] == "Standard"
    assert evidence.details["pck_ca"] == "Intel SGX PCK Processor CA"
    assert evidence.details["qe_svn"] == 10


def test_tdx_claims(vector_dir: Path, read_vector: Callable[[str], bytes]) -> None:
    evidence = verify_intel_quote(
        read_vector("tdx-dcap-qvl/tdx_quote.bin"),
        load_collateral(vector_dir / "tdx-dcap-qvl/tdx_quote_collateral.json"),
        at=_time("2025-07-01T00:00:00Z"),
        anchors=TrustAnchors(),
    )
    assert set(evidence.claims) == {
        "mrtd",
        "rtmr0",
        "rtmr1",
        "rtmr2",
        "rtmr3",
        "mrconfigid",
        "mrowner",
        "mrownerconfig",
        "report_data",
        "debug",
    }
    assert evidence.details["sgx_type"] == "Scalable"
    assert evidence.details["pck_ca"] == "Intel SGX PCK Platform CA"
    assert evidence.details["trailing_bytes"] == 70
