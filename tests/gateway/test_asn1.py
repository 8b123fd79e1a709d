"""Hostile OBJECT IDENTIFIERs: bounded, linear, and refused only with teelab's own error type.

The adversary is whoever supplies certificates (the host, in the quote's PCK chain or an SNP certificate
table): an OID is decoded before the root pin is checked, so its cost and failure mode are the attacker's.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from teelab.errors import TeelabError
from teelab.gateway.asn1 import MAX_ARC_BYTES, MAX_OID_ARCS, MAX_OID_BYTES, DerError, decode_oid
from teelab.gateway.policy import AppraisalPolicy
from teelab.gateway.verifier import verify_evidence

from .test_dcap_synthetic import NOW, Platform, _cert, _oid, _tlv


def _subidentifier(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def test_ordinary_oids_decode() -> None:
    for dotted in ("1.2.840.113741.1.13.1", "2.5.4.3", "0.9.2342"):
        assert decode_oid(_oid(dotted)[2:]) == dotted
    assert decode_oid(_subidentifier(80 + 999) + b"\x03") == "2.999.3"
    uuid_arc = (1 << 128) - 1  # 2.25.<UUID> is the largest arc in real use
    assert decode_oid(bytes([0x69]) + _subidentifier(uuid_arc)) == f"2.25.{uuid_arc}"


def test_a_256_kb_oid_is_refused_as_der() -> None:
    # Today's decoder spent seconds on this and then failed with a bare ValueError (int -> str limit).
    hostile = b"\x81" * (256 * 1024) + b"\x01"
    with pytest.raises(DerError, match=f"limit {MAX_OID_BYTES}"):
        decode_oid(hostile)


def test_a_256_kb_oid_of_many_small_arcs_is_refused_as_der() -> None:
    with pytest.raises(DerError, match="bytes"):
        decode_oid(b"\x01" * (256 * 1024))


def test_size_limits() -> None:
    arcs = bytes([0x2A]) + b"\x01" * (MAX_OID_ARCS - 2)  # 1.2 + 126 arcs = 128 arcs
    assert decode_oid(arcs).count(".") == MAX_OID_ARCS - 1
    with pytest.raises(DerError, match=f"more than {MAX_OID_ARCS} arcs"):
        decode_oid(arcs + b"\x01")
    longest = b"\x81" * (MAX_ARC_BYTES - 1) + b"\x01"
    assert decode_oid(b"\x2a" + longest).startswith("1.2.")
    with pytest.raises(DerError, match="arc longer"):
        decode_oid(b"\x2a\x81" + longest)


@pytest.mark.parametrize("value", [b"", b"\x2a\x86", b"\x2a\x80\x01", b"\x80\x01"])
def test_malformed_oids(value: bytes) -> None:
    with pytest.raises(DerError):
        decode_oid(value)


def test_der_error_is_a_teelab_error_not_a_value_error() -> None:
    assert issubclass(DerError, TeelabError) and not issubclass(DerError, ValueError)


@given(st.binary(max_size=4 * MAX_OID_BYTES))
def test_fuzz_decode_oid_fails_only_with_der_error(value: bytes) -> None:
    try:
        dotted = decode_oid(value)
    except DerError:
        return
    arcs = dotted.split(".")
    assert 2 <= len(arcs) <= MAX_OID_ARCS and all(arc.isdigit() for arc in arcs)


@given(st.lists(st.integers(0, (1 << 128) - 1), min_size=1, max_size=MAX_OID_ARCS - 2))
def test_fuzz_round_trip(arcs: list[int]) -> None:
    dotted = "1.3." + ".".join(str(arc) for arc in arcs)
    assert decode_oid(b"\x2b" + b"".join(_subidentifier(arc) for arc in arcs)) == dotted


def test_a_quote_whose_pck_certificate_carries_a_256_kb_oid_is_rejected_not_a_malfunction() -> None:
    platform = Platform()
    hostile = _tlv(0x30, _tlv(0x30, _tlv(0x06, b"\x81" * (256 * 1024) + b"\x01") + _tlv(0x04, b"x")))
    platform.pck = _cert(
        "Test SGX PCK Certificate",
        platform.pck_key,
        platform.ca_cn,
        platform.ca_key,
        ca=False,
        serial=0x1234,
        extension=hostile,
    )
    result = verify_evidence(
        platform.quote(),
        collateral=platform.collateral(),
        at=NOW,
        anchors=platform.anchors,
        policy=AppraisalPolicy(allow_simulation=True),
    )
    assert result.verdict == "contraindicated"
    failed = result.failed_checks
    assert failed and failed[-1].name != "verifier.internal_error", failed
    assert failed[-1].name == "pck_extension"
    assert "OBJECT IDENTIFIER of 262145 bytes" in failed[-1].detail
