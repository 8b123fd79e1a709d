"""Intel collateral from a PCCS, with its cache — against a stand-in fetcher, never the network.

The stand-in answers the PCS v4 API the way a PCCS does (JSON bodies, URL-encoded issuer chains in headers,
DER or hex CRLs), built from the REAL collateral of ``shared/vectors``; the cached folder is then handed to the
gateway's verifier with the REAL quote, at the vector's time.
"""

from __future__ import annotations

import json
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path

import pytest

from teelab.enclave_runtime.cvm.http import HttpResponse
from teelab.enclave_runtime.cvm.pccs import PccsClient, QuotePlatform, configured_pccs, quote_platform
from teelab.errors import EvidenceError, PlatformError
from teelab.gateway.policy import parse_policy
from teelab.gateway.verifier import verify_evidence

VECTORS = Path(__file__).resolve().parents[2].parent / "shared" / "vectors"
AT = datetime(2025, 7, 1, tzinfo=UTC)
BASE = "https://pccs.test:8081"


class StandInPccs:
    def __init__(self, bundle: Path, tee: str, ca: str) -> None:
        self.doc = json.loads(bundle.read_text())
        self.tee = tee
        self.ca = ca
        self.urls: list[str] = []

    def __call__(self, url: str) -> HttpResponse:
        self.urls.append(url)
        d = self.doc
        chain = lambda key: {"x": urllib.parse.quote(d[key])}["x"]  # noqa: E731
        if url.startswith(f"{BASE}/{self.tee}/certification/v4/tcb?fmspc="):
            body = '{"tcbInfo":' + d["tcb_info"] + ',"signature":"' + d["tcb_info_signature"] + '"}'
            return HttpResponse(200, body.encode(), {"tcb-info-issuer-chain": chain("tcb_info_issuer_chain")})
        if url == f"{BASE}/{self.tee}/certification/v4/qe/identity":
            body = (
                '{"enclaveIdentity":'
                + d["qe_identity"]
                + ',"signature":"'
                + d["qe_identity_signature"]
                + '"}'
            )
            headers = {"sgx-enclave-identity-issuer-chain": chain("qe_identity_issuer_chain")}
            return HttpResponse(200, body.encode(), headers)
        if url == f"{BASE}/sgx/certification/v4/pckcrl?ca={self.ca}&encoding=der":
            headers = {"sgx-pck-crl-issuer-chain": chain("pck_crl_issuer_chain")}
            return HttpResponse(200, bytes.fromhex(d["pck_crl"]), headers)
        if url == f"{BASE}/sgx/certification/v4/rootcacrl":
            return HttpResponse(200, d["root_ca_crl"].encode())  # some PCCS versions answer with hex text
        return HttpResponse(404, b"no such resource")


def accepting(section: str) -> object:
    return parse_policy(
        f'accepted_tcb_statuses = ["UpToDate", "ConfigurationAndSWHardeningNeeded"]\naccepted_advisory_ids = ["*"]\n{section}'
    )


def test_os_boundary_sgx_collateral_is_fetched_cached_and_verifies_the_real_quote(tmp_path: Path) -> None:
    quote = (VECTORS / "sgx-dcap-qvl" / "sgx_quote.bin").read_bytes()
    assert quote_platform(quote) == QuotePlatform("sgx", bytes.fromhex("00a067110000"), "processor")
    pccs = StandInPccs(VECTORS / "sgx-dcap-qvl" / "sgx_quote_collateral.json", "sgx", "processor")
    client = PccsClient(BASE, cache=tmp_path / "cache", fetcher=pccs)
    folder = client.collateral_for_quote(quote, AT)
    assert folder == tmp_path / "cache" / "sgx-00a067110000-processor"
    assert f"{BASE}/sgx/certification/v4/tcb?fmspc=00A067110000" in pccs.urls
    result = verify_evidence(
        quote,
        collateral=folder,
        at=AT,
        policy=accepting(
            '[sgx]\nmrenclave = ["'
            + "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
            + '"]\n'
        ),
    )  # type: ignore[arg-type]
    assert result.ok, result.error
    fetched = len(pccs.urls)
    client.collateral_for_quote(quote, AT)
    assert len(pccs.urls) == fetched  # still valid at AT: served from the cache
    client.collateral_for_quote(quote, datetime(2025, 8, 1, tzinfo=UTC))
    assert len(pccs.urls) == 2 * fetched  # past nextUpdate: fetched again


def test_os_boundary_tdx_collateral_comes_from_the_tdx_api_and_the_platform_ca(tmp_path: Path) -> None:
    quote = (VECTORS / "tdx-dcap-qvl" / "tdx_quote.bin").read_bytes()
    platform = quote_platform(quote)
    assert (platform.tee, platform.fmspc.hex(), platform.ca) == ("tdx", "b0c06f000000", "platform")
    pccs = StandInPccs(VECTORS / "tdx-dcap-qvl" / "tdx_quote_collateral.json", "tdx", "platform")
    folder = PccsClient(BASE, cache=tmp_path, fetcher=pccs).collateral_for_quote(quote, AT)
    result = verify_evidence(
        quote,
        collateral=folder,
        at=AT,
        policy=accepting(
            '[tdx]\nmrtd = ["91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"]\n'
        ),  # type: ignore[arg-type]
    )
    assert result.ok, result.error


def test_os_boundary_pccs_errors_and_unusable_quotes_are_clear(tmp_path: Path) -> None:
    quote = (VECTORS / "sgx-dcap-qvl" / "sgx_quote.bin").read_bytes()
    client = PccsClient(BASE, cache=tmp_path, fetcher=lambda url: HttpResponse(404, b"FMSPC unknown"))
    with pytest.raises(PlatformError, match=r"TCB info: .* answered HTTP 404: FMSPC unknown"):
        client.collateral_for_quote(quote, AT)
    with pytest.raises(EvidenceError, match="not an Intel ECDSA quote"):
        quote_platform(bytes(100))
    with pytest.raises(EvidenceError, match="embeds no PCK certificate"):
        quote_platform(quote[:1000])


def test_os_boundary_the_pccs_is_found_where_intels_quote_provider_looks(tmp_path: Path) -> None:
    assert configured_pccs(tmp_path, {"TEELAB_PCCS_URL": "https://p.example:8081/sgx/certification/v4/"}) == (
        "https://p.example:8081",
        True,
    )
    (tmp_path / "etc").mkdir()
    conf = tmp_path / "etc" / "sgx_default_qcnl.conf"
    conf.write_text(
        json.dumps({"pccs_url": "https://local:8081/sgx/certification/v4/", "use_secure_cert": False})
    )
    assert configured_pccs(tmp_path, {}) == ("https://local:8081", False)
    conf.write_text("# old format\nPCCS_URL=https://old:8081/sgx/certification/v3/\nUSE_SECURE_CERT=FALSE\n")
    assert configured_pccs(tmp_path, {}) == ("https://old:8081", False)
    conf.unlink()
    assert configured_pccs(tmp_path, {}) == ("https://api.trustedservices.intel.com", True)
    with pytest.raises(PlatformError, match="not an http"):
        configured_pccs(tmp_path, {"TEELAB_PCCS_URL": "file:///etc/passwd"})
