"""Collateral: PCS folders recognised by content, dcap-qvl bundles both ways, the load cache."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from teelab.errors import VerificationError
from teelab.gateway.anchors import TrustAnchors
from teelab.gateway.dcap import (
    IntelCollateral,
    clear_collateral_cache,
    load_collateral,
    verify_intel_quote,
)
from teelab.gateway.dcap.collateral import BUNDLE_KEYS

SPR_AT = datetime.fromisoformat("2023-07-01T01:00:00+00:00")
SAMPLE_AT = datetime.fromisoformat("2024-01-01T00:00:00+00:00")
SGX_AT = datetime.fromisoformat("2025-07-01T00:00:00+00:00")
INTEL_TEST_ROOT = "842a5bcb64ba3f7d755036ce1bb85778b3481a5dd75f4731c381b8eea658aa0d"
SPR_FILES = (
    "sample_tcbInfo_response.json",
    "tcb_info_issuer_chain.pem",
    "sample_qeIdentity_response.json",
    "qe_identity_issuer_chain.pem",
    "rootcrl.der",
    "pckcrl.der",
    "pck_crl_issuer_chain.pem",
)


def _test_root() -> TrustAnchors:
    return TrustAnchors().with_intel_root(INTEL_TEST_ROOT, "Intel test root")


def _copy(vector_dir: Path, names: tuple[str, ...], target: Path, rename: bool = True) -> Path:
    target.mkdir()
    for i, name in enumerate(names):
        shutil.copy(vector_dir / "tdx-go-tdx-guest" / name, target / (f"file{i:02d}.bin" if rename else name))
    return target


def test_folder_files_are_recognised_by_content_not_name(vector_dir: Path, tmp_path: Path) -> None:
    folder = _copy(vector_dir, SPR_FILES, tmp_path / "pcs")
    collateral = IntelCollateral.from_folder(folder)
    assert [(d.body.id, d.body.fmspc.hex()) for d in collateral.tcb_infos] == [("TDX", "50806f000000")]
    assert [d.body.id for d in collateral.qe_identities] == ["TD_QE"]
    assert collateral.root_ca_crl.issuer_name == "Intel SGX Root CA"
    assert [c.issuer_name for c in collateral.pck_crls] == ["Intel SGX PCK Platform CA"]
    assert collateral.skipped == ()
    quote = (vector_dir / "tdx-go-tdx-guest/tdx_prod_quote_SPR_E4.dat").read_bytes()
    evidence = verify_intel_quote(quote, collateral, at=SPR_AT, anchors=TrustAnchors())
    assert evidence.tcb_status == "TcbLevelNotFound"


def test_folder_skips_what_is_not_collateral(vector_dir: Path) -> None:
    collateral = IntelCollateral.from_folder(vector_dir / "tdx-go-tdx-guest")
    skipped = "\n".join(collateral.skipped)
    assert "README.md" in skipped
    assert "tdx_prod_quote_SPR_E4.dat" in skipped  # a quote embeds PEM but is not a certificate file
    assert "ASSEMBLED.json (a collateral bundle" in skipped
    # Two TCB infos for two platforms live side by side; each quote gets the one for its FMSPC.
    assert sorted(d.body.fmspc.hex() for d in collateral.tcb_infos) == ["50806f000000", "90c06f000000"]


def test_intel_sample_folder_with_pem_and_der_copies_of_each_crl(vector_dir: Path) -> None:
    collateral = IntelCollateral.from_folder(vector_dir / "sgx-intel-qvl-sample-nonprod")
    assert len(collateral.pck_crls) == 1
    assert len(collateral.pck_crls[0].revoked) == 1
    assert any("qveIdentity.json" in s for s in collateral.skipped)
    assert collateral.pck_crls[0].issuer_chain is not None
    # The PCK certificate for the type-1 quote comes from the folder.
    assert any(
        c.subject.rfc4514_string().endswith("CN=Intel SGX PCK Certificate")
        for c in collateral.pck_certificates
    )


def test_folder_missing_documents_names_them(vector_dir: Path, tmp_path: Path) -> None:
    folder = _copy(
        vector_dir,
        ("sample_tcbInfo_response.json", "tcb_info_issuer_chain.pem", "README.md"),
        tmp_path / "x",
        rename=False,
    )
    with pytest.raises(VerificationError) as caught:
        IntelCollateral.from_folder(folder)
    assert caught.value.check == "collateral"
    for words in ("a QE identity", "the root CA CRL", "a PCK CA CRL", "README.md"):
        assert words in caught.value.detail


def test_malformed_tcb_info_file_is_named(vector_dir: Path, tmp_path: Path) -> None:
    folder = _copy(vector_dir, SPR_FILES, tmp_path / "pcs", rename=False)
    target = folder / "sample_tcbInfo_response.json"
    target.write_bytes(target.read_bytes()[:-40])
    with pytest.raises(VerificationError) as caught:
        IntelCollateral.from_folder(folder)
    assert caught.value.check == "collateral"
    assert "sample_tcbInfo_response.json" in caught.value.detail


def test_two_different_tcb_infos_for_one_fmspc_are_refused(vector_dir: Path, tmp_path: Path) -> None:
    folder = _copy(vector_dir, SPR_FILES, tmp_path / "pcs", rename=False)
    text = (folder / "sample_tcbInfo_response.json").read_text()
    (folder / "second.json").write_text(
        text.replace('"tcbEvaluationDataNumber":15', '"tcbEvaluationDataNumber":16')
    )
    with pytest.raises(VerificationError) as caught:
        IntelCollateral.from_folder(folder)
    assert "two different TCB infos" in caught.value.detail
    assert "second.json" in caught.value.detail


def test_an_identical_copy_is_not_a_conflict(vector_dir: Path, tmp_path: Path) -> None:
    folder = _copy(vector_dir, SPR_FILES, tmp_path / "pcs", rename=False)
    shutil.copy(folder / "sample_tcbInfo_response.json", folder / "copy.json")
    assert len(IntelCollateral.from_folder(folder).tcb_infos) == 1


def test_bundle_round_trip_keeps_every_value(vector_dir: Path, read_vector: Callable[[str], bytes]) -> None:
    path = vector_dir / "sgx-dcap-qvl/sgx_quote_collateral.json"
    original = json.loads(path.read_text())
    written = json.loads(load_collateral(path).to_bundle_json())
    assert list(written) == list(BUNDLE_KEYS)
    for key in BUNDLE_KEYS:
        if key.endswith("issuer_chain"):
            assert written[key].split() == original[key].split(), key
        else:
            assert written[key] == original[key], key
    again = IntelCollateral.from_bundle_json(json.dumps(written))
    evidence = verify_intel_quote(
        read_vector("sgx-dcap-qvl/sgx_quote.bin"), again, at=SGX_AT, anchors=TrustAnchors()
    )
    assert evidence.tcb_status == "ConfigurationAndSWHardeningNeeded"


def test_folder_to_bundle_needs_a_choice_when_it_holds_several(vector_dir: Path) -> None:
    collateral = load_collateral(vector_dir / "tdx-go-tdx-guest")
    with pytest.raises(VerificationError) as caught:
        collateral.to_bundle_json()
    assert "choose with" in caught.value.detail
    bundle = IntelCollateral.from_bundle_json(collateral.to_bundle_json(tee="tdx", fmspc="50806F000000"))
    quote = (vector_dir / "tdx-go-tdx-guest/tdx_prod_quote_SPR_E4.dat").read_bytes()
    evidence = verify_intel_quote(quote, bundle, at=SPR_AT, anchors=TrustAnchors())
    assert evidence.tcb_status == "TcbLevelNotFound"
    assert evidence.details["qe_tcb_status"] == "UpToDate"


def test_type_1_quote_from_a_written_bundle(vector_dir: Path, read_vector: Callable[[str], bytes]) -> None:
    folder = load_collateral(vector_dir / "sgx-intel-qvl-sample-nonprod")
    text = folder.to_bundle_json()
    assert "pck_certificate_chain" in json.loads(text)
    evidence = verify_intel_quote(
        read_vector("sgx-intel-qvl-sample-nonprod/quote.dat"),
        IntelCollateral.from_bundle_json(text),
        at=SAMPLE_AT,
        anchors=_test_root(),
    )
    assert evidence.tcb_status == "UpToDate"


def test_type_1_quote_takes_its_pck_chain_from_extra_pck_chain(
    vector_dir: Path, read_vector: Callable[[str], bytes]
) -> None:
    bundle = json.loads(load_collateral(vector_dir / "sgx-intel-qvl-sample-nonprod").to_bundle_json())
    del bundle["pck_certificate_chain"]
    collateral = IntelCollateral.from_bundle_json(json.dumps(bundle))
    quote = read_vector("sgx-intel-qvl-sample-nonprod/quote.dat")
    with pytest.raises(VerificationError) as caught:
        verify_intel_quote(quote, collateral, at=SAMPLE_AT, anchors=_test_root())
    assert caught.value.check == "pck_chain"
    assert caught.value.hint and "extra_pck_chain" in caught.value.hint
    leaf = (vector_dir / "sgx-intel-qvl-sample-nonprod/pckCert.pem").read_bytes()
    evidence = verify_intel_quote(quote, collateral, at=SAMPLE_AT, anchors=_test_root(), extra_pck_chain=leaf)
    assert evidence.tcb_status == "UpToDate"
    full = leaf + (vector_dir / "sgx-intel-qvl-sample-nonprod/pckSignChain.pem").read_bytes()
    evidence = verify_intel_quote(quote, collateral, at=SAMPLE_AT, anchors=_test_root(), extra_pck_chain=full)
    assert evidence.tcb_status == "UpToDate"


def test_bundle_bytes_as_integer_lists(vector_dir: Path, read_vector: Callable[[str], bytes]) -> None:
    # serde_bytes fields serialise as JSON arrays of integers; accept that form as well as hex.
    bundle = json.loads((vector_dir / "sgx-dcap-qvl/sgx_quote_collateral.json").read_text())
    for key in ("root_ca_crl", "pck_crl", "tcb_info_signature", "qe_identity_signature"):
        bundle[key] = list(bytes.fromhex(bundle[key]))
    collateral = IntelCollateral.from_bundle_json(json.dumps(bundle).encode())
    evidence = verify_intel_quote(
        read_vector("sgx-dcap-qvl/sgx_quote.bin"), collateral, at=SGX_AT, anchors=TrustAnchors()
    )
    assert evidence.advisory_ids == ["INTEL-SA-00289", "INTEL-SA-00615"]


def test_bundle_missing_keys_are_listed() -> None:
    with pytest.raises(VerificationError) as caught:
        IntelCollateral.from_bundle_json('{"tcb_info": "{}"}', source="x.json")
    assert caught.value.check == "collateral"
    assert "x.json" in caught.value.detail and "qe_identity_signature" in caught.value.detail


def test_load_collateral_is_memoised_until_a_file_changes(vector_dir: Path, tmp_path: Path) -> None:
    clear_collateral_cache()
    folder = _copy(vector_dir, SPR_FILES, tmp_path / "pcs", rename=False)
    first = load_collateral(folder)
    assert load_collateral(str(folder)) is first
    target = folder / "rootcrl.der"
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    second = load_collateral(folder)
    assert second is not first
    assert load_collateral(folder) is second
    bundle = tmp_path / "bundle.json"
    bundle.write_text(first.to_bundle_json(fmspc="50806f000000"))
    assert load_collateral(bundle) is load_collateral(bundle)
    clear_collateral_cache()
    assert load_collateral(folder) is not second


def test_load_collateral_of_a_missing_path(tmp_path: Path) -> None:
    with pytest.raises(VerificationError) as caught:
        load_collateral(tmp_path / "nowhere")
    assert caught.value.check == "collateral"
    assert "nowhere" in caught.value.detail


def test_bundle_file_that_is_not_json(tmp_path: Path) -> None:
    path = tmp_path / "junk.json"
    path.write_bytes(b"\xff\xfe not json")
    with pytest.raises(VerificationError) as caught:
        load_collateral(path)
    assert str(path) in caught.value.detail
