"""Evidence verification throughput (issue 3): verifications per second on one core.

- SGX: a real quote (shared/vectors/sgx-dcap-qvl) with its collateral already parsed, at its validity time;
- SNP: a real Milan report (shared/vectors/snp-virtee) with its certificates already parsed;
- cold: one SGX verification including loading and parsing the collateral bundle from disk.
Goal: at least 2,000 SGX verifications per second per core.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from common import median, one_core, write_result

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors"


def _rate(fn: object, seconds: float = 2.0) -> float:
    call = fn  # type: ignore[assignment]
    call()  # warm (caches of pure, repeated work are part of the steady state being measured)
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        call()
        count += 1
    return count / elapsed


def run(repeats: int = 5) -> dict[str, object]:
    with one_core():
        return _measure(repeats)


def _measure(repeats: int) -> dict[str, object]:
    from teelab.gateway.anchors import TrustAnchors
    from teelab.gateway.dcap import clear_collateral_cache, load_collateral, verify_intel_quote
    from teelab.gateway.snp import SnpCertificates, verify_snp_report

    anchors = TrustAnchors()
    quote = (VECTORS / "sgx-dcap-qvl" / "sgx_quote.bin").read_bytes()
    bundle = VECTORS / "sgx-dcap-qvl" / "sgx_quote_collateral.json"
    sgx_at = datetime(2025, 7, 1, tzinfo=UTC)
    collateral = load_collateral(bundle)
    report = bytes.fromhex((VECTORS / "snp-virtee" / "report_milan.hex").read_text())
    certs = SnpCertificates.from_bytes(
        (VECTORS / "snp-virtee" / "vcek_milan.der").read_bytes(),
        (VECTORS / "snp-virtee" / "cert_chain_milan.pem").read_bytes(),
    )
    snp_at = datetime(2024, 1, 1, tzinfo=UTC)

    def sgx() -> None:
        verify_intel_quote(quote, collateral, at=sgx_at, anchors=anchors)

    def snp() -> None:
        verify_snp_report(report, certs, at=snp_at, anchors=anchors)

    cold_times = []
    for _ in range(repeats * 4):
        clear_collateral_cache()
        start = time.perf_counter()
        verify_intel_quote(quote, load_collateral(bundle), at=sgx_at, anchors=anchors)
        cold_times.append(time.perf_counter() - start)

    sgx_rates = [_rate(sgx) for _ in range(repeats)]
    snp_rates = [_rate(snp) for _ in range(repeats)]
    result = {
        "unit": "verifications per second on one core (median of repeated 2 s runs)",
        "repeats": repeats,
        "sgx_per_second": round(median(sgx_rates)),
        "snp_per_second": round(median(snp_rates)),
        "cold_sgx_ms": round(median(cold_times) * 1000, 2),
        "goal": {"sgx_per_second": 2000},
        "meets_goal": median(sgx_rates) >= 2000,
    }
    write_result("verify", result)
    return result


if __name__ == "__main__":
    print(run())
