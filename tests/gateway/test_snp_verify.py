"""verify_snp_report / verify_snp_chain: the real public vectors and their negatives, the NOTES.md §5
combinations, pinning, caching, and — through a synthetic AMD-shaped PKI, since no public Turin report or
hand-made VLEK exists — the VLEK path, the Turin layout, hwID encodings and every mismatch check."""

from __future__ import annotations

import functools
import hashlib
import json
import struct
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teelab.errors import VerificationError
from teelab.gateway import asn1
from teelab.gateway.anchors import AMD_ARK_MILAN, AMD_ARK_TURIN, TrustAnchors
from teelab.gateway.checks import CheckLog
from teelab.gateway.snp import certs as certs_module
from teelab.gateway.snp import chain as chain_module
from teelab.gateway.snp.amd_ca import AMD_CA_PEM
from teelab.gateway.snp.certs import SnpCertificates
from teelab.gateway.snp.chain import verify_snp_chain
from teelab.gateway.snp.verify import verify_snp_report

VECTORS = Path(__file__).resolve().parents[2].parent / "shared" / "vectors"
MANIFEST: dict[str, Any] = json.loads((VECTORS / "manifest.json").read_text())
SNP_POSITIVES = [entry for entry in MANIFEST["positives"] if entry["tee"] == "SEV-SNP"]
GSG = VECTORS / "snp-go-sev-guest"
VIRTEE = VECTORS / "snp-virtee"
PINS = TrustAnchors()
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CHAIN_CHECKS = [
    "amd_intermediate_kind",
    "amd_ark_pinned",
    "amd_ark_signature",
    "amd_intermediate_signature",
    "amd_leaf_signature",
    "amd_product",
    "amd_cert_validity",
    "amd_crl",
]
V2_CHECKS = [
    "snp_report_format",
    "snp_report_signer",
    "snp_signing_key",
    *CHAIN_CHECKS,
    "snp_report_signature",
    "snp_reported_tcb",
    "snp_chip_id",
]


def expected_checks(version: int) -> list[str]:
    """The checks a valid report of ``version`` passes, in order (v3+ adds the CPUID cross-check)."""
    cpuid = ["snp_cpuid_product"] if version >= 3 else []
    return [*V2_CHECKS[:-2], *cpuid, *V2_CHECKS[-2:]]


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def read_report(entry: dict[str, Any]) -> bytes:
    data = (VECTORS / entry["report"]).read_bytes()
    return bytes.fromhex(data.decode().strip()) if entry["report_format"].startswith("hex") else data


def vector_certs(entry: dict[str, Any]) -> SnpCertificates:
    return SnpCertificates.from_bytes(
        (VECTORS / entry["vcek_or_vlek"]).read_bytes(), (VECTORS / entry["ask_ark_chain"]).read_bytes()
    )


def gsg() -> tuple[bytes, SnpCertificates, datetime]:
    return (
        (GSG / "attestation.bin").read_bytes(),
        SnpCertificates.from_bytes((GSG / "vcek.der").read_bytes(), (GSG / "ask_ark_milan.pem").read_bytes()),
        datetime(2022, 9, 24, 1, tzinfo=UTC),
    )


def failure(
    report: bytes, certs: SnpCertificates, at: datetime, anchors: TrustAnchors = PINS
) -> VerificationError:
    with pytest.raises(VerificationError) as caught:
        verify_snp_report(report, certs, at=at, anchors=anchors)
    return caught.value


@pytest.fixture
def fresh() -> None:
    certs_module.clear_caches()
    chain_module.clear_cache()


# --- the real vectors -------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", SNP_POSITIVES, ids=lambda entry: entry["id"])
def test_positive_vectors(entry: dict[str, Any], fresh: None) -> None:
    certs = vector_certs(entry)
    evidence = verify_snp_report(read_report(entry), certs, at=utc(entry["verify_time_utc"]), anchors=PINS)
    fields = entry["fields"]
    assert (evidence.tee, evidence.simulated, evidence.tcb_status, evidence.advisory_ids) == (
        "sev-snp",
        False,
        None,
        [],
    )
    assert [check.name for check in evidence.checks] == expected_checks(fields["version"])
    assert all(check.passed for check in evidence.checks)
    assert evidence.claims == {
        **{
            name: fields[name]
            for name in (
                "measurement",
                "host_data",
                "report_data",
                "chip_id",
                "id_key_digest",
                "author_key_digest",
                "family_id",
                "image_id",
                "guest_svn",
                "vmpl",
                "version",
            )
        },
        "policy": int(fields["policy"], 16),
        "debug": entry["expected"]["debug"],
    }
    for name in ("reported", "current", "committed", "launch"):
        tcb = fields[f"{name}_tcb"]
        assert evidence.details[f"{name}_tcb"] == {
            k: tcb[k] for k in ("bootloader", "tee", "snp", "microcode")
        }
    assert evidence.details["platform_info"] == int(fields["platform_info"], 16)
    assert evidence.details["signing_key"] == ("vcek", "vlek")[fields["signing_key"]]
    assert evidence.details["product"] == PINS.amd_arks[entry["ark_sha256"]]
    assert evidence.details["vek_product_name"] == entry["cert_extensions"]["productName"]
    assert (evidence.valid_from, evidence.valid_until) == tuple(utc(t) for t in entry["vcek_validity_utc"])
    assert evidence.details["chain_cached"] is False


def test_go_sev_guest_report_verifies_but_is_a_debug_guest() -> None:
    report, certs, at = gsg()
    evidence = verify_snp_report(report, certs, at=at, anchors=PINS)
    assert evidence.claims["debug"] is True and evidence.claims["policy"] == 0xB0000


def test_negative_report_byte_flip_fails_the_signature() -> None:
    entry = next(e for e in SNP_POSITIVES if e["id"] == "snp-virtee/report_milan")
    report = (VIRTEE / "negative" / "report_milan.byte21_xor80.bin").read_bytes()
    error = failure(report, vector_certs(entry), utc(entry["verify_time_utc"]))
    assert error.check == "snp_report_signature" and error.hint is not None


def test_negative_vcek_byte_flip_fails_the_chain() -> None:
    certs = SnpCertificates.from_bytes(
        (VIRTEE / "negative" / "vcek_milan.byte40_xorff.der").read_bytes(),
        (VIRTEE / "cert_chain_milan.pem").read_bytes(),
    )
    report = bytes.fromhex((VIRTEE / "report_milan.hex").read_text().strip())
    error = failure(report, certs, datetime(2024, 1, 1, tzinfo=UTC))
    assert error.check == "amd_leaf_signature"


def test_vcek_of_another_chip() -> None:
    report, _, _ = gsg()
    certs = SnpCertificates.from_bytes(
        (VIRTEE / "vcek_milan.der").read_bytes(), (VIRTEE / "cert_chain_milan.pem").read_bytes()
    )
    assert failure(report, certs, datetime(2024, 1, 1, tzinfo=UTC)).check == "snp_report_signature"


def test_vcek_with_the_vlek_intermediate() -> None:
    report, certs, at = gsg()
    wrong = SnpCertificates.from_bytes(
        certs.leaf.der, AMD_CA_PEM[("Milan", "asvk")].encode(), certs.arks[0].der
    )
    error = failure(report, wrong, at)
    assert error.check == "amd_intermediate_kind"
    assert "ASVK SEV-VLEK-Milan" in error.detail


@pytest.mark.parametrize("entry", SNP_POSITIVES, ids=lambda entry: entry["id"])
def test_window_plus_one_year_is_expired(entry: dict[str, Any]) -> None:
    _, until = (utc(t) for t in entry["vcek_validity_utc"])
    error = failure(read_report(entry), vector_certs(entry), until + timedelta(days=365))
    assert error.check == "amd_cert_validity" and "has expired" in error.detail
    assert error.detail.startswith(("VCEK SEV-VCEK", "VLEK SEV-VLEK"))


def test_before_the_vcek_was_issued() -> None:
    report, certs, _ = gsg()
    error = failure(report, certs, datetime(2022, 9, 24, 0, 55, tzinfo=UTC))
    assert error.check == "amd_cert_validity" and "not yet valid" in error.detail


def test_turin_vcek_chain_verifies_to_the_turin_ark() -> None:
    certs = SnpCertificates.from_bytes(
        (VIRTEE / "cert_chain_turin.pem").read_bytes(), (VIRTEE / "vcek_turin.der").read_bytes()
    )
    log = CheckLog()
    chain = verify_snp_chain(certs, at=datetime(2025, 1, 1, tzinfo=UTC), anchors=PINS, log=log)
    assert (chain.product, chain.ark.fingerprint, chain.intermediate.subject_cn) == (
        "Turin",
        AMD_ARK_TURIN,
        "SEV-Turin",
    )
    assert [check.name for check in log.checks] == CHAIN_CHECKS
    assert chain.valid_until == datetime(2031, 11, 6, 21, 14, tzinfo=UTC)
    only_milan = TrustAnchors(amd_arks={AMD_ARK_MILAN: "Milan"})
    with pytest.raises(VerificationError) as caught:
        verify_snp_chain(certs, at=datetime(2025, 1, 1, tzinfo=UTC), anchors=only_milan)
    assert caught.value.check == "amd_ark_pinned"


def test_an_ark_that_is_not_pinned() -> None:
    report, certs, at = gsg()
    for anchors in (TrustAnchors(amd_arks={}), TrustAnchors(amd_arks={AMD_ARK_TURIN: "Turin"})):
        error = failure(report, certs, at, anchors)
        assert error.check == "amd_ark_pinned" and "not a pinned AMD root" in error.detail


def test_a_damaged_ark_is_refused_even_though_the_ask_still_verifies() -> None:
    report, certs, at = gsg()
    ark = bytearray(certs.arks[0].der)
    ark[-1] ^= 1  # the ARK's own signature: the ASK below it is still signed by the same key
    damaged = SnpCertificates.from_bytes(certs.leaf.der, certs.intermediates[0].der, bytes(ark))
    assert failure(report, damaged, at).check == "amd_ark_pinned"


def test_missing_ark_or_ask() -> None:
    report, certs, at = gsg()
    no_ark = SnpCertificates.from_bytes(certs.leaf.der, certs.intermediates[0].der)
    assert "no ARK" in failure(report, no_ark, at).detail
    no_ask = SnpCertificates.from_bytes(certs.leaf.der, certs.arks[0].der)
    error = failure(report, no_ask, at)
    assert error.check == "amd_intermediate_kind" and "no ASK" in error.detail


def test_builtin_chain_completes_a_lone_vcek() -> None:
    report, certs, at = gsg()
    lone = SnpCertificates.from_bytes(certs.leaf.der)
    assert verify_snp_report(report, lone.with_builtin_chain(), at=at, anchors=PINS).claims["debug"] is True


def test_the_chain_cache_replays_checks_and_honours_the_pins(fresh: None) -> None:
    report, certs, at = gsg()
    first = verify_snp_report(report, certs, at=at, anchors=PINS)
    second = verify_snp_report(report, certs, at=at, anchors=PINS)
    assert [c.name for c in first.checks] == [c.name for c in second.checks] == V2_CHECKS
    assert (first.details["chain_cached"], second.details["chain_cached"]) == (False, True)
    cached = {c.name for c in second.checks if c.detail.endswith("(cached)")}
    assert cached == set(CHAIN_CHECKS) - {"amd_cert_validity", "amd_crl"}  # judged at every call
    # Neither the pins nor the time are part of what the cache vouches for.
    assert failure(report, certs, at, TrustAnchors(amd_arks={})).check == "amd_ark_pinned"
    assert failure(report, certs, at + timedelta(days=3650)).check == "amd_cert_validity"


def test_naive_time_is_utc_and_bad_arguments_are_verification_errors() -> None:
    report, certs, at = gsg()
    verify_snp_report(report, certs, at=at.replace(tzinfo=None), anchors=PINS)
    with pytest.raises(VerificationError) as caught:
        verify_snp_report(report, certs, at="2022-09-24", anchors=PINS)  # type: ignore[arg-type]
    assert caught.value.check == "snp_input"
    with pytest.raises(VerificationError):
        verify_snp_report(report, b"vcek", at=at, anchors=PINS)  # type: ignore[arg-type]
    with pytest.raises(VerificationError):
        verify_snp_report(report, certs, at=at, anchors={})  # type: ignore[arg-type]


def test_chain_verification_refuses_bad_arguments() -> None:
    _, certs, at = gsg()
    for arguments in ((certs, "now", PINS), (b"vcek", at, PINS), (certs, at, None)):
        with pytest.raises(VerificationError) as caught:
            verify_snp_chain(arguments[0], at=arguments[1], anchors=arguments[2])  # type: ignore[arg-type]
        assert caught.value.check == "snp_input"


@pytest.mark.parametrize("fill", [0x00, 0xFF])
def test_degenerate_signature_values(fill: int) -> None:
    report, certs, at = gsg()
    forged = report[:0x2A0] + bytes([fill]) * 144 + report[0x330:]
    assert failure(forged, certs, at).check == "snp_report_signature"


def test_the_log_keeps_the_checks_up_to_the_failure() -> None:
    report, certs, at = gsg()
    log = CheckLog()
    with pytest.raises(VerificationError):
        verify_snp_report(report, certs, at=at + timedelta(days=3650), anchors=PINS, log=log)
    assert [c.name for c in log.checks] == V2_CHECKS[: V2_CHECKS.index("amd_cert_validity") + 1]
    assert [c.passed for c in log.checks].count(False) == 1 and not log.checks[-1].passed


# --- a synthetic AMD-shaped PKI -------------------------------------------------------------------

PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
AMD = "1.3.6.1.4.1.3704.1."
SPL_OID = {"bootloader": "3.1", "tee": "3.2", "snp": "3.3", "microcode": "3.8", "fmc": "3.9"}
T0 = datetime(2024, 6, 1, tzinfo=UTC)


def tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    length = (
        bytes([n])
        if n < 0x80
        else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes((n.bit_length() + 7) // 8, "big")
    )
    return bytes([tag]) + length + content


def der_uint(value: int, width: int = 0) -> bytes:
    return tlv(0x02, value.to_bytes(max(width, (value.bit_length() + 8) // 8), "big"))


def amd_name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Advanced Micro Devices"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def ca_cert(cn: str, issuer_cn: str, key: rsa.RSAPrivateKey, signer: rsa.RSAPrivateKey) -> bytes:
    cert = (
        x509.CertificateBuilder()
        .subject_name(amd_name(cn))
        .issuer_name(amd_name(issuer_cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime(2020, 1, 1))
        .not_valid_after(datetime(2045, 1, 1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(signer, hashes.SHA384(), rsa_padding=PSS)
    )
    return cert.public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True)
class Pki:
    product: str
    ark_key: rsa.RSAPrivateKey
    ask_key: rsa.RSAPrivateKey
    asvk_key: rsa.RSAPrivateKey
    ark: bytes
    ask: bytes
    asvk: bytes

    @property
    def anchors(self) -> TrustAnchors:
        return TrustAnchors(amd_arks={hashlib.sha256(self.ark).hexdigest(): self.product})


@functools.cache
def pki(product: str) -> Pki:
    ark_key, ask_key, asvk_key = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3)
    )
    return Pki(
        product,
        ark_key,
        ask_key,
        asvk_key,
        ark=ca_cert(f"ARK-{product}", f"ARK-{product}", ark_key, ark_key),
        ask=ca_cert(f"SEV-{product}", f"ARK-{product}", ask_key, ark_key),
        asvk=ca_cert(f"SEV-VLEK-{product}", f"ARK-{product}", asvk_key, ark_key),
    )


def with_serial_zero(cert_der: bytes, signer: rsa.RSAPrivateKey) -> bytes:
    """AMD's leaves have serial 0, which CertificateBuilder refuses to write: patch the TBS and re-sign it."""
    outer = asn1.read(cert_der)
    tbs, alg, _ = outer.children()
    serial = tbs.children()[1]
    new_tbs = tlv(0x30, tbs.buf[tbs.content : serial.start] + b"\x02\x01\x00" + tbs.buf[serial.end : tbs.end])
    signature = signer.sign(new_tbs, PSS, hashes.SHA384())
    return tlv(0x30, new_tbs + alg.encoded + tlv(0x03, b"\x00" + signature))


HW_ID = bytes(range(1, 65))


def make_leaf(
    pki: Pki,
    *,
    kind: str = "vcek",
    signed_by: str | None = None,
    product_name: str | None = None,
    spls: dict[str, bytes | int] | None = None,
    hw_id: bytes | None = HW_ID,
    csp_id: str | None = "CN=example-cloud",
    not_before: datetime = datetime(2024, 1, 1, tzinfo=UTC),
) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP384R1())
    signer_role = signed_by or ("asvk" if kind == "vlek" else "ask")
    signer = pki.asvk_key if signer_role == "asvk" else pki.ask_key
    issuer_cn = f"SEV-VLEK-{pki.product}" if signer_role == "asvk" else f"SEV-{pki.product}"
    values: dict[str, bytes] = {
        AMD + "1": der_uint(0),
        AMD + "2": tlv(
            0x16, (product_name or (pki.product if kind == "vlek" else f"{pki.product}-B0")).encode()
        ),
    }
    for name, spl in (
        spls if spls is not None else {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
    ).items():
        values[AMD + SPL_OID[name]] = spl if isinstance(spl, bytes) else der_uint(spl)
    if kind == "vcek" and hw_id is not None:
        values[AMD + "4"] = hw_id
    if kind == "vlek" and csp_id is not None:
        values[AMD + "5"] = tlv(0x16, csp_id.encode())
    builder = (
        x509.CertificateBuilder()
        .subject_name(amd_name("SEV-VLEK" if kind == "vlek" else "SEV-VCEK"))
        .issuer_name(amd_name(issuer_cn))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(not_before)
        .not_valid_after(not_before + timedelta(days=365))
    )
    for oid, value in values.items():
        builder = builder.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value), False)
    cert = builder.sign(signer, hashes.SHA384(), rsa_padding=PSS).public_bytes(serialization.Encoding.DER)
    return with_serial_zero(cert, signer), key


MILAN_TCB = bytes([3, 0, 0, 0, 0, 0, 8, 115])


def make_report(
    key: ec.EllipticCurvePrivateKey,
    *,
    version: int = 2,
    signing_key: int = 0,
    reported_tcb: bytes = MILAN_TCB,
    current_tcb: bytes | None = None,
    chip_id: bytes = HW_ID,
    cpuid: tuple[int, int, int] | None = None,
    sig_algo: int = 1,
    flags: int = 0,
    mit_vectors: tuple[int, int] = (0, 0),
) -> bytes:
    buf = bytearray(0x4A0)
    struct.pack_into("<IIQ", buf, 0, version, 7, 0x30000)
    struct.pack_into("<II", buf, 0x30, 0, sig_algo)
    buf[0x38:0x40] = current_tcb or reported_tcb
    struct.pack_into("<QI", buf, 0x40, 1, (signing_key << 2) | flags)
    buf[0x50:0x90] = b"\x11" * 64
    buf[0x90:0xC0] = b"\x22" * 48
    buf[0x180:0x188] = reported_tcb
    if cpuid:
        buf[0x188:0x18B] = bytes(cpuid)
    buf[0x1A0:0x1E0] = chip_id
    buf[0x1E0:0x1E8] = reported_tcb
    buf[0x1F0:0x1F8] = reported_tcb
    if version >= 5:
        struct.pack_into("<QQ", buf, 0x1F8, *mit_vectors)
    r, s = decode_dss_signature(key.sign(bytes(buf[:0x2A0]), ec.ECDSA(hashes.SHA384())))
    buf[0x2A0:0x2E8] = r.to_bytes(72, "little")
    buf[0x2E8:0x330] = s.to_bytes(72, "little")
    return bytes(buf)


def synthetic(
    product: str = "Milan", *, intermediate: str | None = None, **leaf_options: Any
) -> tuple[SnpCertificates, ec.EllipticCurvePrivateKey, Pki]:
    p = pki(product)
    leaf, key = make_leaf(p, **leaf_options)
    kind = leaf_options.get("kind", "vcek")
    middle = {"ask": p.ask, "asvk": p.asvk}[intermediate or ("asvk" if kind == "vlek" else "ask")]
    return SnpCertificates.from_bytes(leaf, middle, p.ark), key, p


def synthetic_failure(certs: SnpCertificates, report: bytes, p: Pki) -> VerificationError:
    return failure(report, certs, T0, p.anchors)


def test_synthetic_vcek_serial_zero_verifies() -> None:
    certs, key, p = synthetic()
    assert certs.leaf.parsed_with == "cryptography"
    evidence = verify_snp_report(make_report(key), certs, at=T0, anchors=p.anchors)
    assert [c.name for c in evidence.checks] == V2_CHECKS
    assert evidence.claims["guest_svn"] == 7


def test_vlek_v5_report() -> None:
    certs, key, p = synthetic(kind="vlek", spls={"bootloader": 4, "tee": 0, "snp": 29, "microcode": 222})
    tcb = bytes([4, 0, 0, 0, 0, 0, 29, 222])
    report = make_report(
        key,
        version=5,
        signing_key=1,
        reported_tcb=tcb,
        chip_id=bytes(64),
        cpuid=(0x19, 0x01, 1),
        mit_vectors=(15, 7),
    )
    evidence = verify_snp_report(report, certs, at=T0, anchors=p.anchors)
    assert evidence.details["signing_key"] == "vlek" and evidence.details["csp_id"] == "CN=example-cloud"
    assert evidence.details["reported_tcb"] == {"bootloader": 4, "tee": 0, "snp": 29, "microcode": 222}
    assert (evidence.details["launch_mit_vector"], evidence.details["current_mit_vector"]) == (15, 7)
    assert evidence.details["cpuid"] == {"family": 0x19, "model": 0x01, "stepping": 1}
    names = [c.name for c in evidence.checks]
    assert names[-4:] == ["snp_report_signature", "snp_cpuid_product", "snp_reported_tcb", "snp_chip_id"]
    assert "not bound to one chip" in evidence.checks[-1].detail


def test_vlek_signed_by_an_ask_is_refused() -> None:
    certs, key, p = synthetic(kind="vlek", signed_by="ask", intermediate="ask")
    error = synthetic_failure(certs, make_report(key, signing_key=1, chip_id=bytes(64)), p)
    assert error.check == "amd_intermediate_kind" and "VLEK is signed by an ASVK" in error.detail


def test_vcek_presented_with_an_asvk_is_refused() -> None:
    certs, key, p = synthetic(intermediate="asvk")
    assert synthetic_failure(certs, make_report(key), p).check == "amd_intermediate_kind"


def test_vcek_signed_by_the_asvk_fails_the_signature_not_just_the_name() -> None:
    certs, key, p = synthetic(signed_by="asvk", intermediate="ask")
    assert synthetic_failure(certs, make_report(key), p).check == "amd_leaf_signature"


@pytest.mark.parametrize(("said", "kind"), [(1, "vcek"), (0, "vlek")])
def test_report_and_certificate_disagree_on_the_key(said: int, kind: str) -> None:
    certs, key, p = synthetic(kind=kind)
    error = synthetic_failure(certs, make_report(key, signing_key=said, chip_id=bytes(64)), p)
    assert error.check == "snp_signing_key"


@pytest.mark.parametrize(
    ("options", "words"), [({"signing_key": 7}, "did not sign"), ({"sig_algo": 2}, "algorithm 2")]
)
def test_unsigned_or_unknown_algorithm(options: dict[str, Any], words: str) -> None:
    certs, key, p = synthetic()
    error = synthetic_failure(certs, make_report(key, **options), p)
    assert error.check == "snp_report_signer" and words in error.detail


TURIN_SPLS: dict[str, bytes | int] = {"fmc": 1, "bootloader": 2, "tee": 3, "snp": 4, "microcode": 9}
TURIN_TCB = bytes([1, 2, 3, 4, 0, 0, 0, 9])
TURIN_HW_ID = bytes.fromhex("1e550a8ee5cf9f4d")


def test_turin_report_uses_the_turin_layout_and_an_eight_byte_hwid() -> None:
    certs, key, p = synthetic("Turin", product_name="Turin", spls=TURIN_SPLS, hw_id=TURIN_HW_ID)
    report = make_report(
        key, version=3, reported_tcb=TURIN_TCB, chip_id=TURIN_HW_ID + bytes(56), cpuid=(0x1A, 2, 0)
    )
    evidence = verify_snp_report(report, certs, at=T0, anchors=p.anchors)
    assert evidence.details["reported_tcb"] == {"bootloader": 2, "tee": 3, "snp": 4, "microcode": 9, "fmc": 1}
    assert evidence.details["product"] == "Turin"
    assert "8 bytes" in evidence.checks[-1].detail


def test_turin_vcek_without_fmc_spl() -> None:
    spls = {k: v for k, v in TURIN_SPLS.items() if k != "fmc"}
    certs, key, p = synthetic("Turin", product_name="Turin", spls=spls, hw_id=TURIN_HW_ID)
    report = make_report(key, version=3, reported_tcb=TURIN_TCB, chip_id=TURIN_HW_ID + bytes(56))
    error = synthetic_failure(certs, report, p)
    assert error.check == "snp_reported_tcb" and "fmc" in error.detail


def test_turin_chip_id_must_be_zero_after_the_hwid() -> None:
    certs, key, p = synthetic("Turin", product_name="Turin", spls=TURIN_SPLS, hw_id=TURIN_HW_ID)
    report = make_report(key, version=3, reported_tcb=TURIN_TCB, chip_id=TURIN_HW_ID + b"\x01" + bytes(55))
    assert synthetic_failure(certs, report, p).check == "snp_chip_id"


def test_vcek_issued_for_another_tcb() -> None:
    certs, key, p = synthetic(spls={"bootloader": 3, "tee": 0, "snp": 9, "microcode": 115})
    error = synthetic_failure(certs, make_report(key), p)
    assert error.check == "snp_reported_tcb" and "snp 9 != 8" in error.detail


def test_reported_tcb_not_current_tcb_is_compared() -> None:
    # Pitfall 14: after a firmware update CURRENT_TCB runs ahead of REPORTED_TCB; the VCEK matches the latter.
    certs, key, p = synthetic()
    report = make_report(key, current_tcb=bytes([3, 0, 0, 0, 0, 0, 9, 120]))
    evidence = verify_snp_report(report, certs, at=T0, anchors=p.anchors)
    assert evidence.details["current_tcb"] == {"bootloader": 3, "tee": 0, "snp": 9, "microcode": 120}


@pytest.mark.parametrize("encoding", [der_uint(222), b"\x02\x02\x00\xde", b"\x02\x03\x00\x00\xde"])
def test_multi_byte_spl_integers(encoding: bytes) -> None:
    certs, key, p = synthetic(spls={"bootloader": 3, "tee": 0, "snp": 8, "microcode": encoding})
    verify_snp_report(
        make_report(key, reported_tcb=MILAN_TCB[:7] + bytes([222])), certs, at=T0, anchors=p.anchors
    )


def test_a_negative_spl_is_refused_when_loading() -> None:
    with pytest.raises(VerificationError, match="negative INTEGER"):
        synthetic(spls={"bootloader": b"\x02\x01\xff", "tee": 0, "snp": 8, "microcode": 115})


@pytest.mark.parametrize("hw_id", [HW_ID, b"\x04\x40" + HW_ID], ids=["raw", "octet-string"])
def test_hwid_encodings(hw_id: bytes) -> None:
    certs, key, p = synthetic(hw_id=hw_id)
    assert certs.leaf.vek is not None and certs.leaf.vek.hw_id == HW_ID
    verify_snp_report(make_report(key), certs, at=T0, anchors=p.anchors)


def test_hwid_of_another_chip() -> None:
    certs, key, p = synthetic()
    error = synthetic_failure(certs, make_report(key, chip_id=HW_ID[::-1]), p)
    assert error.check == "snp_chip_id"


def test_masked_chip_id() -> None:
    certs, key, p = synthetic()
    evidence = verify_snp_report(
        make_report(key, chip_id=bytes(64), flags=0b10), certs, at=T0, anchors=p.anchors
    )
    assert "MASK_CHIP_KEY" in evidence.checks[-1].detail


@pytest.mark.parametrize("hw_id", [bytes(63), bytes(10)])
def test_odd_hwid_lengths_are_refused(hw_id: bytes) -> None:
    with pytest.raises(VerificationError, match="hwID of"):
        synthetic(hw_id=hw_id)


def test_a_vcek_without_hwid_is_refused() -> None:
    certs, key, p = synthetic(hw_id=None)
    assert synthetic_failure(certs, make_report(key), p).check == "snp_chip_id"


def test_leaf_named_one_thing_with_extensions_of_another() -> None:
    p = pki("Milan")
    leaf, _ = make_leaf(p, kind="vlek")
    swapped = leaf.replace(b"SEV-VLEK\x30", b"SEV-VCEK\x30")  # the subject CN; the issuer CN is longer
    assert swapped != leaf
    with pytest.raises(VerificationError, match="named like a VCEK"):
        SnpCertificates.from_bytes(swapped)


def test_product_of_the_vcek_and_the_ark_differ() -> None:
    certs, key, p = synthetic(product_name="Genoa-B1")
    error = synthetic_failure(certs, make_report(key), p)
    assert error.check == "amd_product" and "VCEK SEV-VCEK" in error.detail


@pytest.mark.parametrize(
    ("cpuid", "ok"), [((0x1A, 0x02, 0), False), ((0x19, 0x11, 1), False), ((0x30, 0, 0), True)]
)
def test_cpuid_against_the_ark_product(cpuid: tuple[int, int, int], ok: bool) -> None:
    certs, key, p = synthetic()
    report = make_report(key, version=3, cpuid=cpuid)
    if ok:
        evidence = verify_snp_report(report, certs, at=T0, anchors=p.anchors)
        assert "not in teelab's product table" in evidence.checks[-3].detail
    else:
        assert synthetic_failure(certs, report, p).check == "snp_cpuid_product"


def test_ask_not_signed_by_the_pinned_ark() -> None:
    p = pki("Milan")
    leaf, key = make_leaf(p)
    real_ark = AMD_CA_PEM[("Milan", "ark")].encode()
    certs = SnpCertificates.from_bytes(leaf, p.ask, real_ark)
    assert failure(make_report(key), certs, T0).check == "amd_intermediate_signature"


def test_ark_not_validly_self_signed() -> None:
    p = pki("Milan")
    impostor = ca_cert("ARK-Milan", "ARK-Milan", p.ark_key, p.ask_key)
    leaf, key = make_leaf(p)
    certs = SnpCertificates.from_bytes(leaf, p.ask, impostor)
    anchors = TrustAnchors(amd_arks={hashlib.sha256(impostor).hexdigest(): "Milan"})
    assert failure(make_report(key), certs, T0, anchors).check == "amd_ark_signature"


def test_synthetic_vlek_through_the_fallback(fresh: None, monkeypatch: pytest.MonkeyPatch) -> None:
    real = x509.load_der_x509_certificate

    def refuse_serial_zero(data: bytes) -> x509.Certificate:
        with warnings.catch_warnings():
            warnings.simplefilter("error", CryptographyDeprecationWarning)
            try:
                return real(data)
            except CryptographyDeprecationWarning as exc:
                raise ValueError(str(exc)) from None

    certs, key, p = synthetic(kind="vlek")
    certs_module.clear_caches()
    monkeypatch.setattr(certs_module.x509, "load_der_x509_certificate", refuse_serial_zero)
    fallback_certs = SnpCertificates.from_bytes(certs.leaf.der, p.asvk, p.ark)
    assert fallback_certs.leaf.parsed_with == "der-fallback"
    assert fallback_certs.intermediates[0].parsed_with == "cryptography"
    report = make_report(key, signing_key=1, chip_id=bytes(64))
    assert (
        verify_snp_report(report, fallback_certs, at=T0, anchors=p.anchors).details["signing_key"] == "vlek"
    )


# --- fuzzing ----------------------------------------------------------------------------------------


@FUZZ
@given(st.sampled_from(SNP_POSITIVES), st.integers(0, 0x4A0 * 8 - 1))
def test_fuzz_every_single_bit_of_a_real_report_matters(entry: dict[str, Any], bit: int) -> None:
    raw = bytearray(read_report(entry))
    raw[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(VerificationError):
        verify_snp_report(bytes(raw), vector_certs(entry), at=utc(entry["verify_time_utc"]), anchors=PINS)


@FUZZ
@given(st.sampled_from(SNP_POSITIVES), st.data())
def test_fuzz_mutated_reports_only_raise_verification_errors(
    entry: dict[str, Any], data: st.DataObject
) -> None:
    raw = bytearray(read_report(entry))
    for _ in range(data.draw(st.integers(0, 6), label="flips")):
        raw[data.draw(st.integers(0, len(raw) - 1), label="at")] = data.draw(
            st.integers(0, 255), label="value"
        )
    raw = raw[: data.draw(st.integers(0, len(raw)), label="keep")] + data.draw(
        st.binary(max_size=40), label="tail"
    )
    try:
        verify_snp_report(bytes(raw), vector_certs(entry), at=utc(entry["verify_time_utc"]), anchors=PINS)
    except VerificationError:
        pass
    else:
        assert bytes(raw) == read_report(entry)


@FUZZ
@given(st.sampled_from(SNP_POSITIVES), st.data())
def test_fuzz_every_single_bit_of_a_real_vcek_matters(entry: dict[str, Any], data: st.DataObject) -> None:
    vcek = bytearray((VECTORS / entry["vcek_or_vlek"]).read_bytes())
    bit = data.draw(st.integers(0, len(vcek) * 8 - 1), label="bit")
    vcek[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(VerificationError):
        certs = SnpCertificates.from_bytes(bytes(vcek), (VECTORS / entry["ask_ark_chain"]).read_bytes())
        verify_snp_report(read_report(entry), certs, at=utc(entry["verify_time_utc"]), anchors=PINS)


@FUZZ
@given(st.binary(min_size=0x4A0, max_size=0x4A0))
def test_fuzz_random_reports(data: bytes) -> None:
    _, certs, at = gsg()
    with pytest.raises(VerificationError):
        verify_snp_report(data, certs, at=at, anchors=PINS)
