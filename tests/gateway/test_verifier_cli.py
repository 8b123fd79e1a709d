"""The verification facade and `teelab evidence verify`, on the real public vectors and on hostile bytes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teelab.cli import main
from teelab.errors import UsageError, VerificationError
from teelab.gateway import dcap, ear
from teelab.gateway.anchors import INTEL_SGX_ROOT_CA, TrustAnchors
from teelab.gateway.checks import CheckLog
from teelab.gateway.policy import AppraisalPolicy, parse_policy
from teelab.gateway.result import AttestationResult, render_summary
from teelab.gateway.verifier import default_anchors, recognise, verify_evidence

VECTORS = Path(__file__).resolve().parents[2].parent / "shared" / "vectors"
TEELAB = Path(sys.executable).parent / "teelab"

SGX_QUOTE = VECTORS / "sgx-dcap-qvl" / "sgx_quote.bin"
SGX_COLLATERAL = VECTORS / "sgx-dcap-qvl" / "sgx_quote_collateral.json"
SGX_AT = datetime(2025, 7, 1, tzinfo=UTC)
SGX_MRENCLAVE = "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
TDX_QUOTE = VECTORS / "tdx-dcap-qvl" / "tdx_quote.bin"
TDX_COLLATERAL = VECTORS / "tdx-dcap-qvl" / "tdx_quote_collateral.json"
TDX_MRTD = "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"
SNP_REPORT = VECTORS / "snp-go-sev-guest" / "attestation.bin"
SNP_AT = datetime(2022, 9, 24, 1, tzinfo=UTC)
NONPROD = VECTORS / "sgx-intel-qvl-sample-nonprod"

# The public vectors predate teelab's safe defaults (docs/policy.md): these policies state the choices the
# defaults now require, so each test still checks what it is about. The 2022 SNP report is below the default
# minimum TCB for Milan, and no vector comes with AMD's CRL.
SNP_2022_POLICY = """
id = "snp-2022-vector"
[snp]
min_tcb = { bootloader = 2, tee = 0, snp = 5, microcode = 68 }
require_crl = false
"""
SNP_NO_CRL_POLICY = """
id = "snp-no-crl"
[snp]
require_crl = false
"""
# Intel's non-production QVL sample has TCB evaluation data number 3 (and 0 for its QE identity), and its
# documents, issued in 2019, stay valid for years.
NONPROD_POLICY = """
id = "qvl-sample"
min_tcb_evaluation_data_number = 0
max_collateral_age = "3650d"
"""

ACCEPTING_SGX_POLICY = """
id = "accepts-sgx-dcap-qvl"
accepted_tcb_statuses = ["UpToDate", "ConfigurationAndSWHardeningNeeded"]
accepted_advisory_ids = ["INTEL-SA-00289", "INTEL-SA-00615"]
[sgx]
mrenclave = ["33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"]
"""


@pytest.fixture(autouse=True)
def private_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # No test may read or create the user's real data (gateway key, simulated platform).
    path = tmp_path / "data"
    monkeypatch.setenv("TEELAB_DATA_DIR", str(path))
    return path


@pytest.fixture(scope="module")
def snp_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """VCEK + ASK/ARK of the go-sev-guest vector in one folder, as --certs takes them."""
    folder = tmp_path_factory.mktemp("snp-certs")
    for name in ("vcek.der", "ask_ark_milan.pem"):
        (folder / name).write_bytes((VECTORS / "snp-go-sev-guest" / name).read_bytes())
    return folder


def run(*args: str | Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return code, out, err


def verify_json(*args: str | Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, object]]:
    code, out, _ = run("evidence", "verify", *args, "--json", capsys=capsys)
    return code, json.loads(out)


def failed(document: dict[str, object]) -> dict[str, str]:
    return {c["name"]: c["detail"] for c in document["checks"] if not c["passed"]}  # type: ignore[attr-defined,index]


# --- format recognition ----------------------------------------------------------------------------------


def test_recognises_quotes_reports_and_hex_text() -> None:
    sgx = recognise(SGX_QUOTE.read_bytes())
    assert sgx is not None and (sgx.format, sgx.tee) == ("intel-dcap", "sgx")
    tdx = recognise(TDX_QUOTE.read_bytes())
    assert tdx is not None and (tdx.format, tdx.tee) == ("intel-dcap", "tdx")
    snp = recognise(SNP_REPORT.read_bytes())
    assert snp is not None and (snp.format, snp.tee) == ("sev-snp", "sev-snp")
    near = recognise((VECTORS / "tdx-dcap-qvl" / "near_tdx_quote.hex").read_bytes())
    assert (
        near is not None and near.tee == "tdx" and len(near.data) == 5006 and "hex text" in near.description
    )
    raw = SNP_REPORT.read_bytes()
    wrapped = (
        b"0x" + b"\n".join(raw.hex().upper().encode()[i : i + 64] for i in range(0, 2 * len(raw), 64)) + b"\n"
    )
    found = recognise(wrapped)
    assert found is not None and found.data == raw
    for garbage in (
        b"",
        b"\x03\x00",
        b"\x03\x00\x03\x00" + bytes(100),
        b"\x02\x00\x00\x00" + bytes(100),
        b"abc",
        b"0x",
    ):
        assert recognise(garbage) is None


# --- the facade ------------------------------------------------------------------------------------------


def test_facade_on_real_vectors() -> None:
    rejected = verify_evidence(
        SGX_QUOTE.read_bytes(), collateral=SGX_COLLATERAL, at=SGX_AT, policy=AppraisalPolicy()
    )
    assert (
        not rejected.ok
        and rejected.tee == "sgx"
        and rejected.tcb_status == "ConfigurationAndSWHardeningNeeded"
    )
    assert rejected.checks[0].name == "evidence.format" and rejected.checks[0].passed
    assert rejected.error is not None and rejected.error.startswith("policy.tcb_status: TCB status")
    loaded = dcap.load_collateral(SGX_COLLATERAL)
    accepted = verify_evidence(
        SGX_QUOTE.read_bytes(),
        collateral=loaded,
        at=SGX_AT,
        policy=AppraisalPolicy(
            accepted_tcb_statuses=("UpToDate", "ConfigurationAndSWHardeningNeeded"),
            accepted_advisory_ids=("*",),
        ),
        expected_report_data=b"Hello, world!",
    )
    assert accepted.ok and accepted.verdict == "warning"
    assert accepted.advisory_ids == ("INTEL-SA-00289", "INTEL-SA-00615")
    assert any(c.name == "policy.expected_report_data" and c.passed for c in accepted.checks)


# AMD VCEKs have serial number 0, which cryptography loads with a deprecation warning.
@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
def test_facade_takes_collateral_and_certificates_as_bytes() -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    vcek = x509.load_der_x509_certificate((VECTORS / "snp-go-sev-guest" / "vcek.der").read_bytes())
    pem = vcek.public_bytes(Encoding.PEM) + (VECTORS / "snp-go-sev-guest" / "ask_ark_milan.pem").read_bytes()
    policy = parse_policy(SNP_2022_POLICY).with_overrides(allow_debug=True)
    result = verify_evidence(SNP_REPORT.read_bytes(), certs=pem, at=SNP_AT, policy=policy)
    assert result.ok, result.error
    result = verify_evidence(
        TDX_QUOTE.read_bytes(), collateral=TDX_COLLATERAL.read_bytes(), at=SGX_AT, policy=AppraisalPolicy()
    )
    assert result.verdict == "affirming", result.error
    broken = verify_evidence(
        TDX_QUOTE.read_bytes(), collateral=b"{not json", at=SGX_AT, policy=AppraisalPolicy()
    )
    assert not broken.ok and broken.tee == "tdx"


def test_facade_catches_verification_errors_and_keeps_every_check(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(
        quote: bytes, collateral: object, *, at: datetime, anchors: TrustAnchors, log: CheckLog
    ) -> None:
        log.passed("quote_header", "fine")
        log.fail("pck_chain", "the PCK chain is broken")

    monkeypatch.setattr(dcap, "verify_intel_quote", failing)
    result = verify_evidence(
        SGX_QUOTE.read_bytes(), collateral=object(), at=SGX_AT, policy=AppraisalPolicy(id="p")
    )
    assert [(c.name, c.passed) for c in result.checks] == [
        ("evidence.format", True),
        ("quote_header", True),
        ("pck_chain", False),
    ]
    assert result.verdict == "contraindicated" and result.error == "pck_chain: the PCK chain is broken"
    assert result.tee == "sgx" and result.claims == {} and result.policy_id == "p"
    assert set(result.trust_vector.values()) == {99}

    def raising_without_log(quote: bytes, collateral: object, **kwargs: object) -> None:
        raise VerificationError("quote_format", "truncated")

    monkeypatch.setattr(dcap, "verify_intel_quote", raising_without_log)
    result = verify_evidence(SGX_QUOTE.read_bytes(), collateral=object(), at=SGX_AT, policy=AppraisalPolicy())
    assert result.error == "quote_format: truncated"

    def buggy(quote: bytes, collateral: object, **kwargs: object) -> None:
        raise IndexError("oops")

    monkeypatch.setattr(dcap, "verify_intel_quote", buggy)
    result = verify_evidence(SGX_QUOTE.read_bytes(), collateral=object(), at=SGX_AT, policy=AppraisalPolicy())
    assert not result.ok and result.error is not None
    assert result.error.startswith(
        "verifier.internal_error: the verifier failed on this input (IndexError: oops)"
    )
    assert set(result.trust_vector.values()) == {-1}


def test_facade_missing_inputs() -> None:
    no_collateral = verify_evidence(SGX_QUOTE.read_bytes(), at=SGX_AT, policy=AppraisalPolicy())
    assert no_collateral.error is not None and no_collateral.error.startswith(
        "collateral: an Intel DCAP quote"
    )
    no_certs = verify_evidence(SNP_REPORT.read_bytes(), at=SNP_AT, policy=AppraisalPolicy())
    assert no_certs.error is not None and no_certs.error.startswith("certificates: an SEV-SNP report")
    with pytest.raises(UsageError, match="collateral not found"):
        verify_evidence(
            SGX_QUOTE.read_bytes(), collateral=Path("/nonexistent"), at=SGX_AT, policy=AppraisalPolicy()
        )
    huge = verify_evidence(b"\x03\x00\x02\x00" + bytes(2 << 20), at=SGX_AT, policy=AppraisalPolicy())
    assert huge.error is not None and "far larger than any TEE evidence" in huge.error
    unknown = verify_evidence(b"hello", at=SGX_AT, policy=AppraisalPolicy())
    assert (
        unknown.tee is None
        and unknown.error is not None
        and unknown.error.startswith("evidence.format: not recognised")
    )


def test_default_anchors_ask_the_backends() -> None:
    from teelab.enclave_runtime.backend import RootPin
    from teelab.enclave_runtime.sim.backend import SimBackend

    # Before a simulated platform exists the production roots alone are used, and asking creates none.
    assert default_anchors() == TrustAnchors()
    root = SimBackend().platform.root_fingerprint  # the default platform of this test's data folder
    anchors = default_anchors()
    assert anchors.simulated_roots == {root: anchors.simulated_roots[root]}
    assert INTEL_SGX_ROOT_CA in anchors.intel_roots
    # A backend's own pins (EnclaveBackend.root_pins) are added, marked simulated when they are.
    assert default_anchors([RootPin("AB" * 32, "sim root")]).simulated_roots["ab" * 32] == "sim root"


# --- hostile bytes: nothing but a result ever comes back -------------------------------------------------


def _signed_region_flips(path: Path, signed: int) -> st.SearchStrategy[bytes]:
    data = path.read_bytes()

    def flip(position: int, bit: int) -> bytes:
        mutated = bytearray(data)
        mutated[position] ^= 1 << bit
        return bytes(mutated)

    return st.builds(flip, st.integers(0, signed - 1), st.integers(0, 7))


def _check_result(result: AttestationResult) -> None:
    assert isinstance(result, AttestationResult)
    json.dumps(result.to_json())
    render_summary(result)
    assert result.ok == (result.error is None)


_ACCEPT_SGX = AppraisalPolicy(
    accepted_tcb_statuses=("UpToDate", "ConfigurationAndSWHardeningNeeded"), accepted_advisory_ids=("*",)
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(_signed_region_flips(SGX_QUOTE, 48 + 384))
def test_fuzz_bit_flips_in_signed_sgx_bytes_are_always_rejected(quote: bytes) -> None:
    result = verify_evidence(quote, collateral=SGX_COLLATERAL, at=SGX_AT, policy=_ACCEPT_SGX)
    _check_result(result)
    assert not result.ok


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(_signed_region_flips(TDX_QUOTE, 48 + 584))
def test_fuzz_bit_flips_in_signed_tdx_bytes_are_always_rejected(quote: bytes) -> None:
    result = verify_evidence(quote, collateral=TDX_COLLATERAL, at=SGX_AT, policy=AppraisalPolicy())
    _check_result(result)
    assert not result.ok


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(_signed_region_flips(SNP_REPORT, 0x2A0))
def test_fuzz_bit_flips_in_signed_snp_bytes_are_always_rejected(snp_certs: Path, report: bytes) -> None:
    result = verify_evidence(report, certs=snp_certs, at=SNP_AT, policy=AppraisalPolicy(allow_debug=True))
    _check_result(result)
    assert not result.ok


def _intel_shaped() -> st.SearchStrategy[bytes]:
    header = st.builds(
        lambda version, tee, tail: version.to_bytes(2, "little") + b"\x02\x00" + tee + tail,
        st.integers(3, 5),
        st.sampled_from([b"\x00\x00\x00\x00", b"\x81\x00\x00\x00", b"\x01\x02\x03\x04"]),
        st.binary(max_size=1500),
    )
    prefix_of_real = st.builds(lambda n: SGX_QUOTE.read_bytes()[:n], st.integers(0, 4600))
    return st.one_of(header, prefix_of_real)


def _snp_shaped() -> st.SearchStrategy[bytes]:
    return st.builds(
        lambda version, body: version.to_bytes(4, "little") + body,
        st.integers(2, 5),
        st.binary(min_size=1180, max_size=1400),
    )


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    st.one_of(
        st.binary(max_size=2000),
        _intel_shaped(),
        _snp_shaped(),
        st.builds(lambda b: b.hex().encode(), st.one_of(_intel_shaped(), st.binary(max_size=64))),
    )
)
def test_fuzz_arbitrary_evidence_only_ever_gives_a_result(snp_certs: Path, evidence: bytes) -> None:
    for collateral, certs in ((SGX_COLLATERAL, snp_certs), (None, None)):
        result = verify_evidence(
            evidence, collateral=collateral, certs=certs, at=SGX_AT, policy=AppraisalPolicy()
        )
        _check_result(result)
        assert not result.ok


# --- the command line: help and usage errors -------------------------------------------------------------


def test_help_teaches_with_examples() -> None:
    done = subprocess.run(
        [TEELAB, "evidence", "verify", "--help"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0
    for text in (
        "examples:",
        "--collateral",
        "--certs",
        "--policy",
        "--at",
        "--allow-simulation",
        "--allow-debug",
        "--json",
        "--ear",
        "--trust-root",
        "about 30 days",
        "exit status",
        "docs/policy.md",
    ):
        assert text in done.stdout, text


def test_group_without_subcommand_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run("evidence", capsys=capsys)
    assert code == 2 and "verify" in err and "ear-key" in err and out == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/nonexistent/quote.bin"], "evidence file not found"),
        ([SGX_QUOTE, "--collateral", SGX_COLLATERAL, "--at", "yesterday"], "not an ISO-8601 time"),
        ([SGX_QUOTE, "--collateral", "/nonexistent"], "collateral not found"),
        ([SGX_QUOTE], "needs its collateral"),
        ([SNP_REPORT], "needs its VCEK/VLEK"),
        (
            [SGX_QUOTE, "--collateral", SGX_COLLATERAL, "--policy", "/nonexistent.toml"],
            "policy file not found",
        ),
        ([SGX_QUOTE, "--collateral", SGX_COLLATERAL, "--report-data", "xyz"], "--report-data is not hex"),
        (
            [SGX_QUOTE, "--collateral", SGX_COLLATERAL, "--trust-root", SGX_COLLATERAL],
            "is not a PEM or DER certificate",
        ),
        ([VECTORS], "is a folder"),
    ],
)
def test_usage_errors_exit_2(
    args: list[str | Path], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run("evidence", "verify", *args, capsys=capsys)
    assert code == 2, err
    assert message in err and out == ""


def test_a_bad_policy_file_exits_2_naming_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text("alow_debug = true\n")
    code, _, err = run(
        "evidence", "verify", SGX_QUOTE, "--collateral", SGX_COLLATERAL, "--policy", policy, capsys=capsys
    )
    assert code == 2
    assert f"{policy}: key 'alow_debug': unknown key (did you mean 'allow_debug'?)" in err
    assert "hint: see docs/policy.md" in err


def test_malformed_evidence_is_rejected_with_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 100)
    code, document = verify_json(junk, capsys=capsys)
    assert code == 1
    assert document["ok"] is False and document["tee"] is None and document["verdict"] == "contraindicated"
    assert str(document["error"]).startswith("evidence.format: not recognised as TEE evidence (100 bytes")
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(SGX_QUOTE.read_bytes()[:600])
    code, document = verify_json(
        truncated, "--collateral", SGX_COLLATERAL, "--at", "2025-07-01T00:00:00Z", capsys=capsys
    )
    assert code == 1 and document["tee"] == "sgx" and document["claims"] == {}


# --- the command line on real vectors --------------------------------------------------------------------


def test_sgx_vector_rejected_by_default_policy(capsys: pytest.CaptureFixture[str]) -> None:
    code, document = verify_json(
        SGX_QUOTE, "--collateral", SGX_COLLATERAL, "--at", "2025-07-01T00:00:00Z", capsys=capsys
    )
    assert code == 1
    assert list(document)[:9] == [
        "ok",
        "verdict",
        "tee",
        "simulated",
        "tcb_status",
        "advisory_ids",
        "claims",
        "checks",
        "error",
    ]
    assert document["ok"] is False and document["verdict"] == "contraindicated"
    assert document["tee"] == "sgx" and document["simulated"] is False
    assert document["tcb_status"] == "ConfigurationAndSWHardeningNeeded"
    assert document["advisory_ids"] == ["INTEL-SA-00289", "INTEL-SA-00615"]
    claims = document["claims"]
    assert isinstance(claims, dict)
    assert claims["mrenclave"] == SGX_MRENCLAVE and claims["isv_prod_id"] == 0 and claims["debug"] is False
    assert claims["report_data"] == (b"Hello, world!" + bytes(51)).hex()
    assert set(failed(document)) == {"policy.tcb_status", "policy.advisories"}
    assert str(document["error"]).startswith(
        "policy.tcb_status: TCB status ConfigurationAndSWHardeningNeeded"
    )


def test_sgx_vector_accepted_by_a_policy_accepting_its_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "accept.toml"
    policy.write_text(ACCEPTING_SGX_POLICY)
    args = (SGX_QUOTE, "--collateral", SGX_COLLATERAL, "--at", "2025-07-01T00:00:00Z", "--policy", policy)
    code, document = verify_json(*args, capsys=capsys)
    assert code == 0, failed(document)
    assert document["ok"] is True and document["verdict"] == "warning" and document["error"] is None
    assert document["policy_id"] == "accepts-sgx-dcap-qvl"
    assert any(c["name"] == "policy.mrenclave" and c["passed"] for c in document["checks"])  # type: ignore[attr-defined,index]
    code, out, _ = run("evidence", "verify", *args, capsys=capsys)
    assert code == 0 and out.startswith("ACCEPTED WITH WARNINGS: SGX enclave (policy accepts-sgx-dcap-qvl)")
    assert "warning: TCB status ConfigurationAndSWHardeningNeeded" in out


def test_same_evidence_a_year_later_is_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "accept.toml"
    policy.write_text(ACCEPTING_SGX_POLICY)
    later = (SGX_AT + timedelta(days=365)).strftime("%Y-%m-%dT%H:%M:%SZ")
    code, document = verify_json(
        SGX_QUOTE, "--collateral", SGX_COLLATERAL, "--at", later, "--policy", policy, capsys=capsys
    )
    assert code == 1 and document["ok"] is False and document["claims"] == {}
    code, document = verify_json(
        TDX_QUOTE, "--collateral", TDX_COLLATERAL, "--at", "2026-07-01T00:00:00Z", capsys=capsys
    )
    assert code == 1 and document["ok"] is False and document["tee"] == "tdx"


def test_human_summary_says_what_failed(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        "evidence",
        "verify",
        SGX_QUOTE,
        "--collateral",
        SGX_COLLATERAL,
        "--at",
        "2025-07-01T00:00:00Z",
        capsys=capsys,
    )
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == "REJECTED: SGX enclave (policy teelab-default)"
    assert lines[1].startswith(
        "  failed policy.tcb_status: TCB status ConfigurationAndSWHardeningNeeded is not accepted"
    )
    assert lines[2].startswith("  failed policy.advisories: advisories INTEL-SA-00289, INTEL-SA-00615")
    assert f"  mrenclave   {SGX_MRENCLAVE}" in lines


@pytest.mark.parametrize(
    ("quote", "collateral", "at", "ok", "status"),
    [
        (TDX_QUOTE, TDX_COLLATERAL, "2025-07-01T00:00:00Z", True, "UpToDate"),
        (
            VECTORS / "tdx-dcap-qvl" / "near_tdx_quote.hex",
            VECTORS / "tdx-dcap-qvl" / "near_tdx_quote_collateral.json",
            "2025-09-15T00:00:00Z",
            True,
            "UpToDate",
        ),
        (
            VECTORS / "tdx-dcap-qvl" / "tdx_quote_outdated.bin",
            VECTORS / "tdx-dcap-qvl" / "tdx_quote_outdated_collateral.json",
            "2026-03-01T00:00:00Z",
            False,
            "TcbLevelNotFound",
        ),
    ],
)
def test_tdx_vectors(
    quote: Path, collateral: Path, at: str, ok: bool, status: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, document = verify_json(quote, "--collateral", collateral, "--at", at, capsys=capsys)
    assert code == (0 if ok else 1), failed(document)
    assert document["tee"] == "tdx" and document["tcb_status"] == status and document["ok"] is ok
    assert document["verdict"] == ("affirming" if ok else "contraindicated")
    claims = document["claims"]
    assert isinstance(claims, dict) and {
        "mrtd",
        "rtmr0",
        "rtmr1",
        "rtmr2",
        "rtmr3",
        "mrconfigid",
        "report_data",
    } <= set(claims)


def test_tdx_pinned_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "tdx.toml"
    policy.write_text(f'[tdx]\nmrtd = ["{TDX_MRTD}"]\n')
    args = (TDX_QUOTE, "--collateral", TDX_COLLATERAL, "--at", "2025-07-01T00:00:00Z", "--policy", policy)
    code, document = verify_json(*args, capsys=capsys)
    assert code == 0 and document["verdict"] == "affirming" and document["policy_id"] == "tdx"
    # The SGX vector is not accepted by a TDX-only policy even with its status accepted elsewhere.
    code, document = verify_json(
        SGX_QUOTE,
        "--collateral",
        SGX_COLLATERAL,
        "--at",
        "2025-07-01T00:00:00Z",
        "--policy",
        policy,
        capsys=capsys,
    )
    assert code == 1 and "policy.tee" in failed(document)


def test_snp_debug_report_rejected_by_default_accepted_with_allow_debug(
    snp_certs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "snp-2022-vector.toml"
    policy.write_text(SNP_2022_POLICY)
    args = (SNP_REPORT, "--certs", snp_certs, "--at", "2022-09-24T01:00:00Z")
    code, document = verify_json(*args, capsys=capsys)
    # The default policy refuses it for its debug bit, its 2022 TCB and the missing AMD CRL.
    assert code == 1 and document["tee"] == "sev-snp" and document["tcb_status"] is None
    assert set(failed(document)) == {"policy.debug", "policy.min_tcb", "policy.amd_crl"}
    code, document = verify_json(*args, "--policy", policy, capsys=capsys)
    assert code == 1 and set(failed(document)) == {"policy.debug"}
    claims = document["claims"]
    assert isinstance(claims, dict) and claims["debug"] is True and claims["policy"] == 0xB0000
    code, document = verify_json(*args, "--policy", policy, "--allow-debug", capsys=capsys)
    assert code == 0 and document["verdict"] == "warning"
    assert document["policy_id"] == "snp-2022-vector+allow-debug"


def test_snp_virtee_report_from_hex(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "certs"
    folder.mkdir()
    (folder / "vcek.der").write_bytes((VECTORS / "snp-virtee" / "vcek_milan.der").read_bytes())
    (folder / "chain.pem").write_bytes((VECTORS / "snp-virtee" / "cert_chain_milan.pem").read_bytes())
    policy = tmp_path / "snp-no-crl.toml"
    policy.write_text(SNP_NO_CRL_POLICY)
    code, document = verify_json(
        VECTORS / "snp-virtee" / "report_milan.hex",
        "--certs",
        folder,
        "--at",
        "2024-01-01T00:00:00Z",
        "--policy",
        policy,
        capsys=capsys,
    )
    assert code == 0, failed(document)
    assert document["verdict"] == "affirming" and document["tee"] == "sev-snp"
    code, document = verify_json(
        VECTORS / "snp-virtee" / "negative" / "report_milan.byte21_xor80.bin",
        "--certs",
        folder,
        "--at",
        "2024-01-01T00:00:00Z",
        capsys=capsys,
    )
    assert code == 1 and document["claims"] == {}


def test_trust_root_pins_an_extra_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "qvl-sample.toml"
    policy.write_text(NONPROD_POLICY)
    args = (
        NONPROD / "quote.dat",
        "--collateral",
        NONPROD,
        "--at",
        "2024-01-01T00:00:00Z",
        "--policy",
        policy,
    )
    code, document = verify_json(*args, capsys=capsys)
    assert code == 1 and "is not a pinned root" in str(document["error"])
    code, document = verify_json(*args, "--trust-root", NONPROD / "trustedRootCaCert.pem", capsys=capsys)
    assert code == 0 and document["verdict"] == "affirming"


def test_report_data_option(capsys: pytest.CaptureFixture[str]) -> None:
    base = (SGX_QUOTE, "--collateral", SGX_COLLATERAL, "--at", "2025-07-01T00:00:00Z")
    _, document = verify_json(*base, "--report-data", b"Hello, world!".hex(), capsys=capsys)
    assert "policy.expected_report_data" not in failed(document)
    _, document = verify_json(*base, "--report-data", "00" * 64, capsys=capsys)
    assert "policy.expected_report_data" in failed(document)


def test_ear_output_verifies_against_the_gateway_key(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        "evidence",
        "verify",
        TDX_QUOTE,
        "--collateral",
        TDX_COLLATERAL,
        "--at",
        "2025-07-01T00:00:00Z",
        "--ear",
        capsys=capsys,
    )
    assert code == 0 and err.startswith("ACCEPTED: TDX trust domain")
    token = out.strip()
    code, pem, _ = run("evidence", "ear-key", capsys=capsys)
    assert code == 0 and pem.startswith("-----BEGIN PUBLIC KEY-----")
    claims = ear.verify_ear(token, pem, at=SGX_AT)
    assert claims["submods"]["tdx"]["ear.status"] == "affirming"  # type: ignore[index]
    code, document = verify_json(
        TDX_QUOTE, "--collateral", TDX_COLLATERAL, "--at", "2025-07-01T00:00:00Z", "--ear", capsys=capsys
    )
    assert ear.verify_ear(str(document["ear"]), pem, at=SGX_AT)["eat_profile"] == ear.EAR_PROFILE


def test_simulated_quotes_pass_only_when_allowed(tmp_path: Path, private_data_dir: Path) -> None:
    platform_module = pytest.importorskip("teelab.enclave_runtime.sim.platform")
    structs = pytest.importorskip("teelab.enclave_runtime.sim.sgx_structs")
    at = datetime(2025, 7, 1, tzinfo=UTC)
    platform = platform_module.SimPlatform.open(now=at)
    body = structs.ReportBody(
        cpusvn=bytes(16),
        mrenclave=b"\x11" * 32,
        mrsigner=b"\x22" * 32,
        isv_prod_id=1,
        isv_svn=1,
        report_data=bytes(64),
    )
    quote = tmp_path / "quote.bin"
    quote.write_bytes(platform.quote(body))
    collateral = tmp_path / "collateral.json"
    collateral.write_text(platform.collateral(at).to_json())
    env = {**os.environ, "TEELAB_DATA_DIR": str(private_data_dir)}
    command = [
        str(TEELAB),
        "evidence",
        "verify",
        str(quote),
        "--collateral",
        str(collateral),
        "--at",
        "2025-07-02T00:00:00Z",
    ]
    rejected = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert rejected.returncode == 1
    assert rejected.stdout.startswith("!! simulated TEE — not confidential !!\nREJECTED")
    assert "failed policy.simulation" in rejected.stdout
    accepted = subprocess.run(
        [*command, "--allow-simulation", "--json"], capture_output=True, text=True, env=env, check=False
    )
    assert accepted.returncode == 0, accepted.stdout
    document = json.loads(accepted.stdout)
    assert document["simulated"] is True and document["verdict"] == "warning"
    assert document["warnings"] == ["simulated TEE — not confidential"]


def test_naive_times_are_utc_and_appraisal_faults_are_rejections(monkeypatch: pytest.MonkeyPatch) -> None:
    naive = verify_evidence(
        TDX_QUOTE.read_bytes(), collateral=TDX_COLLATERAL, at=datetime(2025, 7, 1), policy=AppraisalPolicy()
    )
    assert naive.verdict == "affirming" and naive.verified_at == SGX_AT

    def odd(*args: object, **kwargs: object) -> None:
        raise KeyError("claims of an unexpected shape")

    monkeypatch.setattr("teelab.gateway.verifier.appraise", odd)
    result = verify_evidence(
        TDX_QUOTE.read_bytes(), collateral=TDX_COLLATERAL, at=SGX_AT, policy=AppraisalPolicy()
    )
    assert not result.ok and result.error is not None and result.error.startswith("appraisal.internal_error")
    assert result.checks[0].name == "evidence.format"


def test_snp_certificates_from_a_folder_with_a_readme_and_from_several_files(tmp_path: Path) -> None:
    import shutil

    vectors = Path(__file__).resolve().parents[2].parent / "shared" / "vectors"
    certs = tmp_path / "certs"
    certs.mkdir()
    for name in ("README.md", "ask_ark_milan.pem", "vcek.der"):
        shutil.copy(vectors / "snp-go-sev-guest" / name, certs / name)
    report = vectors / "snp-go-sev-guest" / "attestation.bin"
    policy = tmp_path / "snp-2022-vector.toml"
    policy.write_text(SNP_2022_POLICY)
    no_crl = tmp_path / "snp-no-crl.toml"
    no_crl.write_text(SNP_NO_CRL_POLICY)
    folder = main(
        [
            "evidence",
            "verify",
            str(report),
            "--certs",
            str(certs),
            "--at",
            "2022-09-24T01:00:00Z",
            "--allow-debug",
            "--policy",
            str(policy),
        ]
    )
    assert folder == 0  # the README beside the certificates is skipped
    several = main(
        [
            "evidence",
            "verify",
            str(vectors / "snp-virtee" / "report_milan.hex"),
            "--certs",
            str(vectors / "snp-virtee" / "vcek_milan.der"),
            "--certs",
            str(vectors / "snp-virtee" / "cert_chain_milan.pem"),
            "--at",
            "2024-01-01T00:00:00Z",
            "--policy",
            str(no_crl),
        ]
    )
    assert several == 0  # the VCEK from one file, the chain from another
