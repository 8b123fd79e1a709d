"""Loading AMD certificates: files, folders, PEM/DER in any order, the GHCB certificate table, the built-in
CA certificates, the no-``cryptography``-loader fallback for serial-0 leaves (pitfall 11), and fuzzing that
only VerificationError escapes."""

from __future__ import annotations

import json
import random
import struct
import uuid
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.utils import CryptographyDeprecationWarning
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teelab.errors import VerificationError
from teelab.gateway import anchors as anchor_pins
from teelab.gateway.anchors import TrustAnchors
from teelab.gateway.snp import certs as certs_module
from teelab.gateway.snp import chain as chain_module
from teelab.gateway.snp.amd_ca import AMD_CA_PEM
from teelab.gateway.snp.cert_table import (
    ARK_GUID,
    ASK_GUID,
    CRL_GUID,
    ENTRY_SIZE,
    VCEK_GUID,
    VLEK_GUID,
    build_cert_table,
    parse_cert_table,
)
from teelab.gateway.snp.certs import AmdCertificate, SnpCertificates, parse_certificate, split_certificates
from teelab.gateway.snp.chain import issued_by, verify_snp_chain
from teelab.gateway.snp.verify import verify_snp_report

VECTORS = Path(__file__).resolve().parents[2].parent / "shared" / "vectors"
MANIFEST: dict[str, Any] = json.loads((VECTORS / "manifest.json").read_text())
SNP_POSITIVES = [entry for entry in MANIFEST["positives"] if entry["tee"] == "SEV-SNP"]
GSG = VECTORS / "snp-go-sev-guest"
VIRTEE = VECTORS / "snp-virtee"
# certs.py reaches the loader through the cryptography.x509 module, which the tests patch; keep the real one.
REAL_LOAD = x509.load_der_x509_certificate
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def pem_to_ders(path: Path) -> list[bytes]:
    return [
        cert.public_bytes(serialization.Encoding.DER)
        for cert in x509.load_pem_x509_certificates(path.read_bytes())
    ]


def as_pem(der: bytes) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)


def milan_parts() -> tuple[bytes, bytes, bytes]:
    """(VCEK, ASK, ARK) DER of the go-sev-guest set."""
    ask, ark = pem_to_ders(GSG / "ask_ark_milan.pem")
    return (GSG / "vcek.der").read_bytes(), ask, ark


def roles(certs: SnpCertificates) -> list[str]:
    return sorted(cert.role for cert in certs.certificates)


def same(a: AmdCertificate, b: AmdCertificate) -> None:
    """Everything the verifier reads from a certificate is identical."""
    for name in (
        "der",
        "role",
        "subject_cn",
        "issuer_cn",
        "not_before",
        "not_after",
        "product",
        "vek",
        "fingerprint",
        "tbs",
        "signature",
        "subject_name",
        "issuer_name",
    ):
        assert getattr(a, name) == getattr(b, name), name
    point = serialization.PublicFormat.SubjectPublicKeyInfo
    assert a.public_key.public_bytes(serialization.Encoding.DER, point) == b.public_key.public_bytes(
        serialization.Encoding.DER, point
    )


@pytest.fixture
def fresh() -> None:
    """Forget parsed certificates and verified chains, so a test sees the loader and verifier work."""
    certs_module.clear_caches()
    chain_module.clear_cache()


# --- recognising certificates ----------------------------------------------------------------------


@pytest.mark.parametrize("entry", SNP_POSITIVES, ids=lambda entry: entry["id"])
def test_vcek_extensions_match_the_manifest(entry: dict[str, Any]) -> None:
    certs = SnpCertificates.load(VECTORS / entry["vcek_or_vlek"])
    leaf, expected = certs.leaf, entry["cert_extensions"]
    kind = ("vcek", "vlek")[entry["fields"]["signing_key"]]
    assert certs.kind == leaf.role == kind and certs.intermediates == () and certs.arks == ()
    assert leaf.vek is not None
    assert leaf.vek.product_name == expected["productName"]
    assert (
        leaf.product == expected["productName"].split("-")[0] == TrustAnchors().amd_arks[entry["ark_sha256"]]
    )
    assert leaf.vek.struct_version == expected["structVersion"]
    assert dict(leaf.vek.spls) == {
        "bootloader": expected["blSPL"],
        "tee": expected["teeSPL"],
        "snp": expected["snpSPL"],
        "microcode": expected["ucodeSPL"],
    }
    # A VCEK names its chip, a VLEK the provider it was leased to (pitfall 15).
    assert (leaf.vek.hw_id.hex() if leaf.vek.hw_id else None) == expected.get("hwID")
    assert leaf.vek.csp_id == expected.get("cspId")
    assert (leaf.not_before.isoformat(), leaf.not_after.isoformat()) == tuple(entry["vcek_validity_utc"])
    assert leaf.parsed_with == "cryptography"


def test_turin_vcek_has_fmc_and_an_eight_byte_hwid() -> None:
    leaf = SnpCertificates.load(VIRTEE / "vcek_turin.der").leaf
    assert leaf.vek is not None
    assert leaf.product == "Turin" and leaf.vek.struct_version == 1
    assert dict(leaf.vek.spls) == {"bootloader": 0, "tee": 0, "snp": 0, "microcode": 9, "fmc": 0}
    assert leaf.vek.hw_id == bytes.fromhex("1e550a8ee5cf9f4d")


def test_chain_roles_are_recognised_by_content() -> None:
    certs = SnpCertificates.from_bytes(
        (GSG / "ask_ark_milan.pem").read_bytes(), (GSG / "vcek.der").read_bytes()
    )
    assert roles(certs) == ["ark", "ask", "vcek"]
    (ask,) = certs.intermediates
    (ark,) = certs.arks
    assert (ask.subject_cn, ask.product, ark.subject_cn, ark.product) == (
        "SEV-Milan",
        "Milan",
        "ARK-Milan",
        "Milan",
    )
    assert ark.fingerprint == anchor_pins.AMD_ARK_MILAN


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 0, 2), (2, 0, 1)])
@pytest.mark.parametrize("encoding", ["der", "pem"])
def test_any_order_any_encoding_one_blob(order: tuple[int, int, int], encoding: str) -> None:
    parts = milan_parts()
    pieces = [parts[i] if encoding == "der" else as_pem(parts[i]) for i in order]
    certs = SnpCertificates.from_bytes(b"".join(pieces))
    assert roles(certs) == ["ark", "ask", "vcek"]
    assert certs.leaf.der == parts[0]


def test_trailing_zero_padding_is_tolerated() -> None:
    vcek, ask, ark = milan_parts()
    assert roles(SnpCertificates.from_bytes(vcek + ask + ark + bytes(300))) == ["ark", "ask", "vcek"]
    assert roles(SnpCertificates.from_bytes(as_pem(vcek) + bytes(17))) == ["vcek"]


def test_duplicates_collapse() -> None:
    vcek, ask, ark = milan_parts()
    certs = SnpCertificates.from_bytes(vcek, ask + ark, as_pem(ark) + as_pem(vcek))
    assert roles(certs) == ["ark", "ask", "vcek"]


def test_folder_with_files_named_anything(tmp_path: Path) -> None:
    vcek, ask, ark = milan_parts()
    (tmp_path / "1.bin").write_bytes(ark)
    (tmp_path / "chain").write_bytes(as_pem(ask))
    (tmp_path / "zzz.pem").write_bytes(as_pem(vcek))
    (tmp_path / ".hidden").write_bytes(b"ignored")
    (tmp_path / "sub").mkdir()
    certs = SnpCertificates.load(tmp_path)
    assert roles(certs) == ["ark", "ask", "vcek"]
    assert roles(SnpCertificates.load(str(tmp_path))) == ["ark", "ask", "vcek"]


def test_folder_with_a_stray_file_names_it(tmp_path: Path) -> None:
    (tmp_path / "vcek.der").write_bytes(milan_parts()[0])
    (tmp_path / "report.bin").write_bytes((GSG / "attestation.bin").read_bytes())
    with pytest.raises(VerificationError, match=r"report\.bin"):
        SnpCertificates.load(tmp_path)


def test_empty_folder_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(VerificationError, match="no certificate files"):
        SnpCertificates.load(tmp_path)
    with pytest.raises(VerificationError, match="cannot read"):
        SnpCertificates.load(tmp_path / "absent.pem")


def test_endless_files_are_not_read_to_the_end() -> None:
    with pytest.raises(VerificationError, match="over 1048576 bytes"):
        SnpCertificates.load("/dev/zero")


def test_no_leaf_and_two_leaves() -> None:
    vcek, ask, ark = milan_parts()
    with pytest.raises(VerificationError) as caught:
        SnpCertificates.from_bytes(ask, ark)
    assert caught.value.check == "snp_certificates" and "no VCEK or VLEK" in caught.value.detail
    assert caught.value.hint is not None and "KDS" in caught.value.hint
    with pytest.raises(VerificationError, match="2 VCEK/VLEK certificates"):
        SnpCertificates.from_bytes(vcek, (VIRTEE / "vcek_milan.der").read_bytes())


def test_a_broken_pem_block_is_not_skipped() -> None:
    # Pitfall 8: load_pem_x509_certificates would quietly return the readable blocks only.
    chain = (GSG / "ask_ark_milan.pem").read_bytes()
    broken = chain.replace(b"MIIG", b"MI!G", 1)
    with pytest.raises(VerificationError, match="not valid base64"):
        SnpCertificates.from_bytes(broken, milan_parts()[0])
    with pytest.raises(VerificationError, match="not closed"):
        SnpCertificates.from_bytes(chain.replace(b"-----END CERTIFICATE-----", b"", 1))
    with pytest.raises(VerificationError, match="not a certificate"):
        SnpCertificates.from_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")


def test_unparsable_blobs() -> None:
    for blob in (b"", b"hello", b"\x30\x03\x02\x01", bytes(100)):
        with pytest.raises(VerificationError) as caught:
            SnpCertificates.from_bytes(blob)
        assert caught.value.check == "snp_certificates"
    with pytest.raises(VerificationError, match="bytes, got str"):
        SnpCertificates.from_bytes("vcek")  # type: ignore[arg-type]
    with pytest.raises(VerificationError, match="path or bytes"):
        SnpCertificates.load(42)  # type: ignore[arg-type]


def test_parsing_is_cached(fresh: None) -> None:
    vcek = milan_parts()[0]
    assert parse_certificate(vcek) is parse_certificate(bytes(vcek))


# --- the GHCB certificate table --------------------------------------------------------------------


def test_guids_are_amds() -> None:
    assert str(VCEK_GUID) == "63da758d-e664-4564-adc5-f4b93be8accd"
    assert str(VLEK_GUID) == "a8074bc2-a25a-483e-aae6-39c045a0b8a1"
    assert str(ASK_GUID) == "4ab7b379-bbac-4fe4-a02f-05aef327c782"
    assert str(ARK_GUID) == "c0b406a4-a803-4952-9743-3fb6014cd0ae"


def test_table_round_trip_in_rfc4122_byte_order() -> None:
    vcek, ask, ark = milan_parts()
    table = build_cert_table([(ARK_GUID, ark), (VCEK_GUID, vcek), (ASK_GUID, ask)])
    assert table[:16] == bytes.fromhex("c0b406a4a8034952 97433fb6014cd0ae".replace(" ", ""))
    entries = parse_cert_table(table)
    assert [(entry.role, entry.data) for entry in entries] == [("ark", ark), ("vcek", vcek), ("ask", ask)]
    for loaded in (SnpCertificates.from_cert_table(table), SnpCertificates.from_bytes(table)):
        assert roles(loaded) == ["ark", "ask", "vcek"]


def test_table_skips_entries_that_are_not_certificates() -> None:
    vcek = milan_parts()[0]
    other = uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")
    table = build_cert_table([(other, b"not a certificate"), (VCEK_GUID, vcek), (other, b"")])
    assert [entry.role for entry in parse_cert_table(table)] == [None, "vcek", None]
    assert roles(SnpCertificates.from_cert_table(table)) == ["vcek"]
    # The CRL entry is read as AMD's CRL (tests/gateway/test_snp_crl.py); garbage there is refused.
    with pytest.raises(VerificationError, match="amd_crl: not a DER certificate revocation list"):
        SnpCertificates.from_cert_table(build_cert_table([(CRL_GUID, b"not a crl"), (VCEK_GUID, vcek)]))


def test_table_entry_must_hold_what_its_guid_says() -> None:
    vcek, _, ark = milan_parts()
    with pytest.raises(VerificationError, match="VCEK entry holds the ARK ARK-Milan"):
        SnpCertificates.from_cert_table(build_cert_table([(VCEK_GUID, ark)]))
    with pytest.raises(VerificationError, match="VLEK entry holds the VCEK"):
        SnpCertificates.from_cert_table(build_cert_table([(VLEK_GUID, vcek)]))
    # The same holds when the table arrives as a blob to be recognised.
    with pytest.raises(VerificationError, match="VCEK entry holds the ARK"):
        SnpCertificates.from_bytes(build_cert_table([(VCEK_GUID, ark)]))


def _entry(guid: uuid.UUID, offset: int, length: int) -> bytes:
    return guid.bytes + struct.pack("<II", offset, length)


@pytest.mark.parametrize(
    ("table", "words"),
    [
        (b"", "no all-zero terminating entry"),
        (_entry(VCEK_GUID, 48, 10) + bytes(10), "no all-zero terminating entry"),
        (bytes(ENTRY_SIZE), "empty"),
        (_entry(VCEK_GUID, 10, 4) + bytes(ENTRY_SIZE) + bytes(4), "inside the table's 48-byte header"),
        (_entry(VCEK_GUID, 48, 99) + bytes(ENTRY_SIZE) + bytes(4), "past the 52-byte blob"),
        (_entry(VCEK_GUID, 72, 0) + _entry(ARK_GUID, 72, 0) + bytes(ENTRY_SIZE), "VCEK entry is empty"),
        (_entry(ARK_GUID, 72, 1) + _entry(ARK_GUID, 72, 1) + bytes(ENTRY_SIZE) + b"x", "a second ARK"),
        (b"".join(_entry(CRL_GUID, 9999, 0) for _ in range(65)) + bytes(ENTRY_SIZE), "more than 64"),
    ],
)
def test_malformed_tables(table: bytes, words: str) -> None:
    with pytest.raises(VerificationError) as caught:
        parse_cert_table(table)
    assert caught.value.check == "snp_cert_table" and words in caught.value.detail


# --- the built-in AMD CA certificates --------------------------------------------------------------


def test_builtin_ca_certificates_chain_to_the_pinned_arks() -> None:
    pins = TrustAnchors().amd_arks
    assert pins[anchor_pins.AMD_ARK_GENOA] == "Genoa"
    parsed = {key: parse_certificate(split_certificates(pem.encode())[0]) for key, pem in AMD_CA_PEM.items()}
    assert {key for key in parsed} == {
        (p, r) for p in ("Milan", "Genoa", "Turin") for r in ("ark", "ask", "asvk")
    }
    for (product, role), cert in parsed.items():
        assert (cert.role, cert.product) == (role, product)
        ark = parsed[(product, "ark")]
        assert pins[ark.fingerprint] == product
        assert issued_by(cert, ark) is None, cert.label
    assert parsed[("Genoa", "ark")].fingerprint == anchor_pins.AMD_ARK_GENOA
    # A chain from one product does not verify under another's root.
    assert issued_by(parsed[("Genoa", "ask")], parsed[("Milan", "ark")]) is not None


def test_with_builtin_chain_completes_a_lone_vcek() -> None:
    lone = SnpCertificates.load(VIRTEE / "vcek_turin.der")
    full = lone.with_builtin_chain()
    assert roles(full) == ["ark", "ask", "vcek"]
    assert {cert.subject_cn for cert in full.certificates} == {"SEV-VCEK", "SEV-Turin", "ARK-Turin"}
    chain = verify_snp_chain(full, at=datetime(2025, 1, 1, tzinfo=UTC), anchors=TrustAnchors())
    assert chain.product == "Turin"
    # Nothing is added when the chain is already there.
    assert full.with_builtin_chain() is full


# --- pitfall 11: serial number 0 --------------------------------------------------------------------


def test_the_deprecation_warning_does_not_leak(fresh: None) -> None:
    vcek, ask, ark = milan_parts()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        # The warning (or, in a later cryptography, an error) is real: teelab is what keeps it in.
        try:
            x509.load_der_x509_certificate(vcek)
        except ValueError:
            pass
        else:
            assert any(issubclass(w.category, CryptographyDeprecationWarning) for w in seen)
        seen.clear()
        certs = SnpCertificates.from_bytes(vcek, ask, ark)
        report = (GSG / "attestation.bin").read_bytes()
        evidence = verify_snp_report(
            report, certs, at=datetime(2022, 9, 24, 1, tzinfo=UTC), anchors=TrustAnchors()
        )
        assert evidence.claims["debug"] is True
        repr(certs)
    assert [str(w.message) for w in seen if issubclass(w.category, CryptographyDeprecationWarning)] == []


def _refuse_serial_zero(data: bytes) -> x509.Certificate:
    """cryptography as it has announced it will be: serial-0 certificates refused."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", CryptographyDeprecationWarning)
        try:
            return REAL_LOAD(data)
        except CryptographyDeprecationWarning as exc:
            raise ValueError(f"refused: {exc}") from None


def _refuse(data: bytes) -> x509.Certificate:
    raise ValueError("refused")


@pytest.fixture
def refusing_loader(monkeypatch: pytest.MonkeyPatch, fresh: None) -> None:
    monkeypatch.setattr(certs_module.x509, "load_der_x509_certificate", _refuse_serial_zero)


@pytest.mark.parametrize(
    "leaf", [GSG / "vcek.der", VIRTEE / "vcek_milan.der", VIRTEE / "vcek_turin.der"], ids=lambda p: p.name
)
def test_fallback_reads_the_same_certificate(leaf: Path, refusing_loader: None) -> None:
    fallback = parse_certificate(leaf.read_bytes())
    assert fallback.parsed_with == "der-fallback" and fallback.x509_certificate is None
    certs_module.clear_caches()
    with pytest.MonkeyPatch.context() as undo:
        undo.setattr(certs_module.x509, "load_der_x509_certificate", REAL_LOAD)
        normal = parse_certificate(leaf.read_bytes())
    assert normal.parsed_with == "cryptography"
    same(fallback, normal)


@pytest.mark.parametrize("entry", SNP_POSITIVES, ids=lambda entry: entry["id"])
def test_fallback_verifies_the_real_reports(entry: dict[str, Any], refusing_loader: None) -> None:
    certs = SnpCertificates.from_bytes(
        (VECTORS / entry["vcek_or_vlek"]).read_bytes(), (VECTORS / entry["ask_ark_chain"]).read_bytes()
    )
    assert certs.leaf.parsed_with == "der-fallback"
    assert all(cert.parsed_with == "cryptography" for cert in (*certs.intermediates, *certs.arks))
    raw = (VECTORS / entry["report"]).read_bytes()
    report = bytes.fromhex(raw.decode().strip()) if entry["report_format"].startswith("hex") else raw
    at = datetime.fromisoformat(entry["verify_time_utc"].replace("Z", "+00:00"))
    evidence = verify_snp_report(report, certs, at=at, anchors=TrustAnchors())
    assert evidence.claims["measurement"] == entry["fields"]["measurement"]
    assert "read with der-fallback" in next(
        c.detail for c in evidence.checks if c.name == "amd_leaf_signature"
    )


def test_fallback_verifies_the_turin_chain(refusing_loader: None) -> None:
    certs = SnpCertificates.from_bytes(
        (VIRTEE / "vcek_turin.der").read_bytes(), (VIRTEE / "cert_chain_turin.pem").read_bytes()
    )
    assert certs.leaf.parsed_with == "der-fallback"
    assert (
        verify_snp_chain(certs, at=datetime(2025, 1, 1, tzinfo=UTC), anchors=TrustAnchors()).product
        == "Turin"
    )


@pytest.mark.parametrize("use_fallback", [False, True])
def test_both_paths_reject_the_tampered_vcek_at_the_same_check(use_fallback: bool, fresh: None) -> None:
    with pytest.MonkeyPatch.context() as patch:
        if use_fallback:
            patch.setattr(certs_module.x509, "load_der_x509_certificate", _refuse_serial_zero)
        certs = SnpCertificates.from_bytes(
            (VIRTEE / "negative" / "vcek_milan.byte40_xorff.der").read_bytes(),
            (VIRTEE / "cert_chain_milan.pem").read_bytes(),
        )
        assert certs.leaf.parsed_with == ("der-fallback" if use_fallback else "cryptography")
        with pytest.raises(VerificationError) as caught:
            verify_snp_chain(certs, at=datetime(2024, 1, 1, tzinfo=UTC), anchors=TrustAnchors())
    assert caught.value.check == "amd_leaf_signature"


def test_fallback_rejects_a_forged_leaf_signature(fresh: None) -> None:
    vcek, ask, ark = milan_parts()
    forged = vcek[:-5] + bytes(5)  # the signature's last bytes
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(certs_module.x509, "load_der_x509_certificate", _refuse_serial_zero)
        certs = SnpCertificates.from_bytes(forged, ask, ark)
        with pytest.raises(VerificationError, match="signature does not verify") as caught:
            verify_snp_chain(certs, at=datetime(2024, 1, 1, tzinfo=UTC), anchors=TrustAnchors())
    assert caught.value.check == "amd_leaf_signature"


def test_fallback_is_only_for_leaves(fresh: None) -> None:
    _, ask, _ = milan_parts()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(certs_module.x509, "load_der_x509_certificate", _refuse)
        with pytest.raises(VerificationError, match="only a VCEK/VLEK"):
            parse_certificate(ask)


# --- fuzzing ----------------------------------------------------------------------------------------


def _load_or_refuse(*blobs: bytes) -> SnpCertificates | None:
    try:
        return SnpCertificates.from_bytes(*blobs)
    except VerificationError as exc:
        assert exc.check in ("snp_certificates", "snp_cert_table", "amd_crl")
        return None


@FUZZ
@given(st.binary(max_size=3000))
def test_fuzz_loader_arbitrary_bytes(data: bytes) -> None:
    _load_or_refuse(data)


def _mutate(blob: bytes, data: st.DataObject) -> bytes:
    raw = bytearray(blob)
    for _ in range(data.draw(st.integers(0, 3), label="flips")):
        raw[data.draw(st.integers(0, len(raw) - 1), label="at")] ^= 1 << data.draw(
            st.integers(0, 7), label="bit"
        )
    return bytes(raw[: data.draw(st.integers(0, len(raw)), label="keep")])


LEAVES = [GSG / "vcek.der", VIRTEE / "vcek_milan.der", VIRTEE / "vcek_turin.der"]


@FUZZ
@given(st.sampled_from(LEAVES), st.booleans(), st.data())
def test_fuzz_loader_mutated_certificates(leaf: Path, pem: bool, data: st.DataObject) -> None:
    blob = leaf.read_bytes()
    _load_or_refuse(_mutate(as_pem(blob) if pem else blob, data))


@FUZZ
@given(st.data())
def test_fuzz_loader_fallback_on_mutated_leaves(data: st.DataObject) -> None:
    blob = _mutate(data.draw(st.sampled_from(LEAVES)).read_bytes(), data)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(certs_module.x509, "load_der_x509_certificate", _refuse)
        try:
            certs_module.parse_certificate_fallback(blob)
        except VerificationError as exc:
            assert exc.check == "snp_certificates"


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_cert_table_arbitrary_bytes(data: bytes) -> None:
    try:
        SnpCertificates.from_cert_table(data)
    except VerificationError as exc:
        assert exc.check in ("snp_certificates", "snp_cert_table", "amd_crl")


GUIDS = [VCEK_GUID, VLEK_GUID, ASK_GUID, ARK_GUID, CRL_GUID, uuid.UUID(int=1)]


@FUZZ
@given(
    st.lists(
        st.tuples(st.sampled_from(GUIDS), st.integers(0, 7000), st.integers(0, 3000)),
        max_size=5,
    ),
    st.integers(0, 2**32 - 1),
)
def test_fuzz_cert_table_structured(headers: list[tuple[uuid.UUID, int, int]], seed: int) -> None:
    body = bytearray(b"".join(milan_parts()))
    if seed % 3 == 0:  # sometimes the certificates are there, sometimes only their bytes
        random.Random(seed).shuffle(body)
    table = b"".join(_entry(g, o, n) for g, o, n in headers) + bytes(ENTRY_SIZE) + bytes(body)
    try:
        SnpCertificates.from_cert_table(table)
    except VerificationError as exc:
        assert exc.check in ("snp_certificates", "snp_cert_table", "amd_crl")
