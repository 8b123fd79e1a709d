"""The badge each kind of record gets: a simulated TEE is never shown as attested; failures name the check."""

from __future__ import annotations

from datetime import UTC, datetime

from teelab.extension.records import badge, measurement, record_json, summary_json
from teelab.gateway.checks import Check
from teelab.gateway.result import AttestationResult, Verdict
from teelab.kernel.registry import SessionRecord

MRENCLAVE = "ab" * 32
NOW = datetime(2025, 7, 1, tzinfo=UTC)


def result(
    verdict: Verdict = "affirming",
    *,
    simulated: bool = False,
    tcb_status: str | None = "UpToDate",
    tee: str = "sgx",
    claims: dict[str, str | int | bool] | None = None,
    checks: tuple[Check, ...] = (Check("quote.signature", True, "ECDSA-P256 verified"),),
) -> AttestationResult:
    return AttestationResult(
        verdict=verdict,
        tee=tee,  # type: ignore[arg-type]
        simulated=simulated,
        tcb_status=tcb_status,
        advisory_ids=(),
        claims={"mrenclave": MRENCLAVE, "debug": False} if claims is None else claims,
        checks=checks,
        verified_at=NOW,
        policy_id="teelab-sim",
    )


def record(res: AttestationResult | None, failure: tuple[str, str] | None = None) -> SessionRecord:
    return SessionRecord("k1", "teelab-sim", "sim", NOW, res, failure)


def test_an_affirming_sgx_result_is_green_with_tee_and_tcb() -> None:
    shown = badge(record(result()))
    assert (shown.level, shown.text) == ("attested", "Attested · SGX · UpToDate")


def test_a_simulated_tee_is_amber_even_when_affirmed() -> None:
    # The verifier marks simulation as a warning; even a (mistaken) affirming verdict must not turn it green.
    for verdict in ("affirming", "warning"):
        shown = badge(record(result(verdict, simulated=True)))  # type: ignore[arg-type]
        assert (shown.level, shown.text) == ("simulated", "Simulated TEE — not confidential")
        assert "without hardware isolation" in shown.detail and "policy teelab-sim" in shown.detail


def test_accepted_with_warnings_is_amber_and_says_why() -> None:
    shown = badge(record(result("warning", tcb_status="OutOfDate")))
    assert (shown.level, shown.text) == ("warning", "Attested · SGX · OutOfDate")
    assert "TCB status OutOfDate" in shown.detail


def test_a_debug_tee_says_so_in_the_badge() -> None:
    shown = badge(record(result("warning", claims={"mrenclave": MRENCLAVE, "debug": True})))
    assert shown.text == "Attested · SGX · UpToDate · debug"


def test_a_refused_kernel_is_red_and_names_the_check() -> None:
    failed = result(
        "contraindicated",
        simulated=True,
        checks=(Check("policy.simulation", False, "simulated evidence; the policy does not allow it"),),
    )
    shown = badge(record(failed, failure=("policy.simulation", "simulated evidence; not allowed")))
    assert (shown.level, shown.text) == ("failed", "Attestation failed: policy.simulation")
    shown = badge(record(None, failure=("timeout", "no answer from the kernel within 120 s")))
    assert (shown.level, shown.text, shown.detail) == (
        "failed",
        "Attestation failed: timeout",
        "no answer from the kernel within 120 s",
    )


def test_a_rejected_result_without_a_recorded_failure_is_still_red() -> None:
    rejected = result("contraindicated", checks=(Check("tcb.status", False, "Revoked"),))
    assert badge(record(rejected)).text == "Attestation failed: tcb.status"
    assert badge(record(None)).level == "failed"


def test_the_measurement_is_the_tee_specific_claim() -> None:
    assert measurement(result()) == {"name": "MRENCLAVE", "claim": "mrenclave", "value": MRENCLAVE}
    tdx = result(tee="tdx", claims={"mrtd": "cd" * 48})
    assert measurement(tdx) == {"name": "MRTD", "claim": "mrtd", "value": "cd" * 48}
    snp = result(tee="sev-snp", tcb_status=None, claims={"measurement": "ef" * 48})
    assert measurement(snp) == {"name": "SNP launch measurement", "claim": "measurement", "value": "ef" * 48}
    assert measurement(None) is None


def test_record_and_summary_json_carry_the_badge() -> None:
    rec = record(result("warning", simulated=True))
    full = record_json(rec, running=True)
    assert full["kernel_id"] == "k1" and full["simulated"] is True and full["running"] is True
    assert full["badge"] == badge(rec).to_json()
    assert full["measurement"] == {"name": "MRENCLAVE", "claim": "mrenclave", "value": MRENCLAVE}
    assert (
        isinstance(full["attestation"], dict)
        and full["attestation"]["checks"][0]["name"] == "quote.signature"
    )
    summary = summary_json(rec, running=True)
    assert summary["badge"] == full["badge"] and "attestation" not in summary
