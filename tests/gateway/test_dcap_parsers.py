"""Parsers on their own: PCK extension DER, strict PEM/CRL reading, signed-JSON slicing, quote layouts."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509

from teelab.errors import VerificationError
from teelab.gateway import asn1
from teelab.gateway.dcap import jsondoc, parse_pck_extension, parse_quote
from teelab.gateway.dcap.chain import pck_chain_from_pem
from teelab.gateway.dcap.pck import extension_bytes
from teelab.gateway.dcap.pem import load_certificates, load_crl

from .test_dcap_synthetic import _oid, _tlv

SGX_EXT = "1.2.840.113741.1.13.1"


def _pck_of(quote: bytes) -> x509.Certificate:
    return pck_chain_from_pem(parse_quote(quote).signature.certification.data).leaf


# -- PCK extension ---------------------------------------------------------------------------------


def test_pck_extension_of_the_go_tdx_guest_quote(read_vector: Callable[[str], bytes]) -> None:
    # Values asserted by go-tdx-guest's TestPckCertificateExtensions.
    leaf = _pck_of(read_vector("tdx-go-tdx-guest/tdx_prod_quote_SPR_E4.dat"))
    raw = extension_bytes(leaf)
    assert raw is not None
    ext = parse_pck_extension(raw)
    assert ext.ppid.hex() == "089ddfdb9c0359c82a3bc7719239574e"
    assert ext.fmspc.hex() == "50806f000000"
    assert ext.pceid.hex() == "0000"
    assert ext.pcesvn == 11
    assert ext.cpusvn.hex() == "03030202020100020000000000000000"
    assert ext.tcb_comp_svns == (3, 3, 2, 2, 2, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0)
    assert ext.sgx_type_name == "Scalable"
    assert ext.platform_instance_id is not None and len(ext.platform_instance_id) == 16
    assert dict(ext.configuration) == {"dynamic_platform": True, "cached_keys": False, "smt_enabled": True}


def test_pck_extension_of_the_intel_sample(vector_dir: Path) -> None:
    leaf = x509.load_pem_x509_certificate(
        (vector_dir / "sgx-intel-qvl-sample-nonprod/pckCert.pem").read_bytes()
    )
    raw = extension_bytes(leaf)
    assert raw is not None
    ext = parse_pck_extension(raw)
    assert ext.tcb_comp_svns == (0, 3, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    assert ext.pcesvn == 3
    assert ext.fmspc.hex() == "00707f000000"
    assert ext.sgx_type_name == "Standard"
    assert ext.platform_instance_id is None and ext.configuration == ()


def _int(value: int) -> bytes:
    return _tlv(asn1.INTEGER, value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big", signed=True))


def _pair(oid: str, value: bytes) -> bytes:
    return _tlv(asn1.SEQUENCE, _oid(oid) + value)


def extension(*, drop: str | None = None, extra: bytes = b"", svn: bytes | None = None) -> bytes:
    tcb = b"".join(
        _pair(f"{SGX_EXT}.2.{i}", svn if svn is not None and i == 1 else _int(i)) for i in range(1, 17)
    )
    tcb += _pair(f"{SGX_EXT}.2.17", _int(300)) + _pair(f"{SGX_EXT}.2.18", _tlv(asn1.OCTET_STRING, bytes(16)))
    fields = {
        "1": _pair(f"{SGX_EXT}.1", _tlv(asn1.OCTET_STRING, bytes(range(16)))),
        "2": _pair(f"{SGX_EXT}.2", _tlv(asn1.SEQUENCE, tcb)),
        "3": _pair(f"{SGX_EXT}.3", _tlv(asn1.OCTET_STRING, b"\x00\x00")),
        "4": _pair(f"{SGX_EXT}.4", _tlv(asn1.OCTET_STRING, bytes.fromhex("00a067110000"))),
        "5": _pair(f"{SGX_EXT}.5", _tlv(asn1.ENUMERATED, b"\x00")),
    }
    return _tlv(asn1.SEQUENCE, b"".join(v for k, v in fields.items() if k != drop) + extra)


def test_hand_built_extension_parses() -> None:
    ext = parse_pck_extension(extension())
    assert ext.tcb_comp_svns == tuple(range(1, 17))
    assert ext.pcesvn == 300
    assert ext.ppid == bytes(range(16))


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (extension(drop="4"), "FMSPC"),
        (extension(drop="2"), "TCB"),
        (extension(extra=_pair(f"{SGX_EXT}.4", _tlv(asn1.OCTET_STRING, bytes(6)))), "twice"),
        (extension(svn=_int(256)), "outside 0..255"),
        (extension(svn=_int(-1)), "outside 0..255"),
        (extension(svn=b"\x02\x02\x00\x05"), "not minimally encoded"),
        (extension(svn=_tlv(asn1.OCTET_STRING, b"\x05")), "expected tag"),
        (extension() + b"\x00", "after the element"),
        (extension()[:-1], "claims"),
        (b"\x30\x80" + extension()[2:], "indefinite"),
        (b"\x30\x81\x05" + bytes(5), "long-form length for a short value"),
        (b"\x30\x82\x00\x05" + bytes(5), "leading zero"),
        (b"\x1f\x01\x00", "multi-byte tag"),
        (b"", "truncated"),
    ],
)
def test_malformed_extension_is_refused(data: bytes, words: str) -> None:
    with pytest.raises(VerificationError) as caught:
        parse_pck_extension(data)
    assert caught.value.check == "pck_extension"
    assert words in caught.value.detail


def test_der_oid_decoding() -> None:
    assert asn1.decode_oid(_oid(SGX_EXT)[2:]) == SGX_EXT
    assert asn1.decode_oid(b"\x88\x37\x03") == "2.999.3"
    for bad in (b"", b"\x2a\x86", b"\x2a\x80\x01"):
        with pytest.raises(asn1.DerError):
            asn1.decode_oid(bad)


# -- PEM and CRLs ----------------------------------------------------------------------------------


def _chain_pem(read_vector: Callable[[str], bytes]) -> bytes:
    return parse_quote(read_vector("sgx-dcap-qvl/sgx_quote.bin")).signature.certification.data


def test_pem_chain_with_trailing_nuls(read_vector: Callable[[str], bytes]) -> None:
    pem = _chain_pem(read_vector)
    assert pem.endswith(b"\0")
    assert len(load_certificates(pem, check="t", what="chain")) == 3


def test_damaged_pem_block_is_not_skipped(vector_dir: Path) -> None:
    quote = (
        vector_dir / "tdx-go-tdx-guest/negative/tdx_prod_quote_SPR_E4.cert_chain_byte_changed.dat"
    ).read_bytes()
    pem = parse_quote(quote).signature.certification.data
    # The pitfall: cryptography's loader silently drops the damaged block.
    assert len(x509.load_pem_x509_certificates(pem.rstrip(b"\0"))) == 2
    with pytest.raises(VerificationError) as caught:
        load_certificates(pem, check="pck_chain", what="chain")
    assert "3 PEM BEGIN markers but only 2 complete blocks" in caught.value.detail


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda p: b"junk\n" + p, "stray bytes before"),
        (lambda p: p.rstrip(b"\0") + b"junk", "stray bytes after"),
        (lambda p: p.replace(b"CERTIFICATE", b"PRIVATE KEY", 2), "PRIVATE KEY"),
        # One strict splitter for Intel and AMD: a foreign character is named as what it is.
        (lambda p: p.replace(b"MII", b"M!I", 1), "a PEM certificate block is not valid base64"),
        (lambda p: p.replace(b"-----END CERTIFICATE-----", b"", 1), "BEGIN markers"),
        (lambda p: p.replace(b"MII", b"MI=", 1), "base64"),
        (lambda p: p.replace(b"MII", b"AII", 1), "not a valid X.509 certificate"),
    ],
)
def test_pem_problems(
    read_vector: Callable[[str], bytes], mutate: Callable[[bytes], bytes], words: str
) -> None:
    with pytest.raises(VerificationError) as caught:
        load_certificates(mutate(_chain_pem(read_vector)), check="pck_chain", what="chain")
    assert words in caught.value.detail


def test_crl_in_der_and_pem_is_the_same(vector_dir: Path) -> None:
    folder = vector_dir / "sgx-intel-qvl-sample-nonprod"
    a = load_crl((folder / "intermediateCaCrl.der").read_bytes(), check="t", what="der")
    b = load_crl((folder / "intermediateCaCrl.pem").read_bytes(), check="t", what="pem")
    assert a == b
    with pytest.raises(VerificationError):
        load_crl((folder / "intermediateCaCrl.der").read_bytes()[:-3], check="t", what="cut")
    with pytest.raises(VerificationError):
        load_crl((folder / "pckCert.pem").read_bytes(), check="t", what="a certificate")


# -- signed JSON -----------------------------------------------------------------------------------


def test_signed_span_is_the_exact_text(vector_dir: Path) -> None:
    # The assembled bundle took its tcb_info from this PCS body: slicing must give the same bytes.
    body = (vector_dir / "tdx-go-tdx-guest/sample_tcbinfo_response_v5.json").read_text()
    value, start, end = jsondoc.members_with_spans(body)["tcbInfo"]
    bundle = json.loads(
        (vector_dir / "tdx-go-tdx-guest/quote_v5_sample_collateral.ASSEMBLED.json").read_text()
    )
    assert body[start:end] == bundle["tcb_info"]
    assert value == json.loads(bundle["tcb_info"])


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1, "a": 2}',
        '{"a": {"b": 1, "b": 1}}',
        '{"a": NaN}',
        '{"a": Infinity}',
        '{"a": 1} x',
        '{"a" 1}',
        '{"a": 1,}',
        "[1]",
        "",
        "{" * 100000,
    ],
)
def test_json_that_is_refused(text: str) -> None:
    with pytest.raises(jsondoc.DocError):
        jsondoc.members_with_spans(text)
    with pytest.raises(jsondoc.DocError):
        jsondoc.obj(jsondoc.loads(text), "doc")


@pytest.mark.parametrize("value", ["2025-07-01", "2025-07-01T00:00:00", "yesterday", "2025-13-01T00:00:00Z"])
def test_dates_must_be_full_utc_times(value: str) -> None:
    with pytest.raises(jsondoc.DocError):
        jsondoc.parse_date(value, "issueDate")


def test_date_forms_accepted() -> None:
    assert jsondoc.parse_date("2025-07-01T00:00:00Z", "d") == jsondoc.parse_date(
        "2025-07-01T02:00:00+02:00", "d"
    )


# -- quotes ----------------------------------------------------------------------------------------


def test_every_prefix_of_a_quote_is_refused(read_vector: Callable[[str], bytes]) -> None:
    quote = read_vector("sgx-dcap-qvl/sgx_quote.bin")
    for size in range(0, len(quote), 7):
        with pytest.raises(VerificationError) as caught:
            parse_quote(quote[:size])
        assert caught.value.check == "quote_parse"
    assert parse_quote(quote).trailing == 0


def test_trailing_bytes_are_counted(read_vector: Callable[[str], bytes]) -> None:
    quote = read_vector("tdx-go-tdx-guest/tdx_prod_quote_SPR_E4.dat")
    parsed = parse_quote(quote)
    assert parsed.trailing == 39
    assert quote[-39:] == b"\nextra bytes(only for testing purpose)\n"
    assert parse_quote(quote + bytes(1000)).trailing == 1039


@pytest.mark.parametrize(
    ("offset", "value", "words"),
    [
        (0, b"\x02\x00", "version 2"),
        (2, b"\x03\x00", "attestation key type 3"),
        (4, b"\x42\x00\x00\x00", "TEE type 0x42"),
    ],
)
def test_header_fields_that_are_refused(
    read_vector: Callable[[str], bytes], offset: int, value: bytes, words: str
) -> None:
    quote = bytearray(read_vector("tdx-dcap-qvl/tdx_quote.bin"))
    quote[offset : offset + len(value)] = value
    with pytest.raises(VerificationError) as caught:
        parse_quote(bytes(quote))
    assert words in caught.value.detail


def test_v5_body_descriptor_is_checked(read_vector: Callable[[str], bytes]) -> None:
    quote = read_vector("tdx-go-tdx-guest/quote_v5_sample.dat")
    parsed = parse_quote(quote)
    assert parsed.body_type == 3 and len(parsed.signed) == 54 + 648
    for patch, words in (
        ((48, b"\x04\x00"), "body type 4"),
        ((48, b"\x02\x00"), "must be 584 bytes"),
        ((48, b"\x01\x00"), "must be 384 bytes"),
        ((50, (584).to_bytes(4, "little")), "must be 648 bytes"),
    ):
        mutated = bytearray(quote)
        mutated[patch[0] : patch[0] + len(patch[1])] = patch[1]
        with pytest.raises(VerificationError) as caught:
            parse_quote(bytes(mutated))
        assert words in caught.value.detail


def test_quote_must_be_bytes() -> None:
    with pytest.raises(VerificationError):
        parse_quote("not bytes")  # type: ignore[arg-type]
    assert parse_quote.__doc__
