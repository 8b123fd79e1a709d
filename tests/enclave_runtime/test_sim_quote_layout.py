"""Simulated quotes have the byte layout of real SGX DCAP quotes v3.

Each field is read at the offset it has in Intel's format and compared between a real quote
(shared/vectors/sgx-dcap-qvl) and a simulated one; the signatures and the QE binding are checked with
``cryptography`` directly, independently of teelab's verifier.
"""

from __future__ import annotations

import hashlib
import struct
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from teelab.enclave_runtime.sim.platform import SimPlatform
from teelab.enclave_runtime.sim.sgx_extension import SGX_EXTENSION_OID, encode_sgx_extension
from teelab.enclave_runtime.sim.sgx_structs import (
    ATTRIBUTE_DEBUG,
    ATTRIBUTE_INIT,
    ATTRIBUTE_MODE64BIT,
    ReportBody,
)

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def parse(quote: bytes) -> dict[str, object]:
    """Read a v3 quote by Intel's absolute offsets (shared/vectors/NOTES.md §3)."""
    fields: dict[str, object] = {
        "version": struct.unpack_from("<H", quote, 0)[0],
        "att_key_type": struct.unpack_from("<H", quote, 2)[0],
        "tee_type": struct.unpack_from("<I", quote, 4)[0],
        "qe_vendor_id": quote[12:28],
        "cpusvn": quote[48:64],
        "attributes": quote[96:112],
        "mrenclave": quote[112:144],
        "mrsigner": quote[176:208],
        "isv_prod_id": struct.unpack_from("<H", quote, 304)[0],
        "isv_svn": struct.unpack_from("<H", quote, 306)[0],
        "report_data": quote[368:432],
        "sig_len": struct.unpack_from("<I", quote, 432)[0],
    }
    sig = 436
    fields["quote_signature"] = quote[sig : sig + 64]
    fields["attestation_key"] = quote[sig + 64 : sig + 128]
    fields["qe_report"] = quote[sig + 128 : sig + 512]
    fields["qe_report_signature"] = quote[sig + 512 : sig + 576]
    auth_len = struct.unpack_from("<H", quote, sig + 576)[0]
    fields["qe_auth_data"] = quote[sig + 578 : sig + 578 + auth_len]
    cert_at = sig + 578 + auth_len
    cert_type, cert_size = struct.unpack_from("<HI", quote, cert_at)
    fields["cert_type"] = cert_type
    fields["cert_data"] = quote[cert_at + 6 : cert_at + 6 + cert_size]
    fields["end"] = cert_at + 6 + cert_size
    return fields


def p256(raw_xy: bytes) -> ec.EllipticCurvePublicKey:
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw_xy)


def verify_raw(key: ec.EllipticCurvePublicKey, signature: bytes, message: bytes) -> None:
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    key.verify(der, message, ec.ECDSA(hashes.SHA256()))


@pytest.fixture
def platform(tmp_path: Path) -> SimPlatform:
    return SimPlatform.create(tmp_path / "platform", now=NOW)


def sim_quote(platform: SimPlatform, *, debug: bool = False) -> tuple[bytes, ReportBody]:
    body = ReportBody(
        cpusvn=platform.tcb.cpusvn,
        mrenclave=hashlib.sha256(b"enclave").digest(),
        mrsigner=hashlib.sha256(b"signer").digest(),
        isv_prod_id=7,
        isv_svn=3,
        report_data=bytes(range(64)),
        attributes_flags=ATTRIBUTE_INIT | ATTRIBUTE_MODE64BIT | (ATTRIBUTE_DEBUG if debug else 0),
    )
    return platform.quote(body), body


def test_real_quote_reads_correctly_with_the_same_offsets(vectors: Path) -> None:
    # Anchors the offset table on a real quote, so the simulated checks below compare like with like.
    real = parse((vectors / "sgx-dcap-qvl" / "sgx_quote.bin").read_bytes())
    assert real["version"] == 3 and real["att_key_type"] == 2 and real["cert_type"] == 5
    assert real["mrenclave"].hex() == "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"  # type: ignore[union-attr]
    assert real["report_data"][:13] == b"Hello, world!"  # type: ignore[index]
    assert real["end"] == 4600


def test_simulated_quote_fields_sit_at_real_offsets(platform: SimPlatform, vectors: Path) -> None:
    real = parse((vectors / "sgx-dcap-qvl" / "sgx_quote.bin").read_bytes())
    quote, body = sim_quote(platform)
    sim = parse(quote)
    for name in ("version", "att_key_type", "tee_type", "qe_vendor_id", "cert_type"):
        assert sim[name] == real[name], name
    assert sim["mrenclave"] == body.mrenclave
    assert sim["mrsigner"] == body.mrsigner
    assert (sim["isv_prod_id"], sim["isv_svn"]) == (7, 3)
    assert sim["report_data"] == body.report_data
    assert sim["cpusvn"] == platform.tcb.cpusvn
    assert sim["attributes"] == bytes.fromhex("0500000000000000e700000000000000") == real["attributes"]
    assert sim["sig_len"] == len(quote) - 436
    assert sim["end"] == len(quote)
    assert len(sim["qe_auth_data"]) == len(real["qe_auth_data"]) == 32  # type: ignore[arg-type]


def test_debug_enclave_sets_the_debug_attribute_bit(platform: SimPlatform) -> None:
    quote, _ = sim_quote(platform, debug=True)
    assert quote[96] & 0x02


def test_simulated_quote_signatures_and_qe_binding_verify(platform: SimPlatform) -> None:
    quote, _ = sim_quote(platform)
    sim = parse(quote)
    attestation_key = p256(sim["attestation_key"])  # type: ignore[arg-type]
    verify_raw(attestation_key, sim["quote_signature"], quote[:432])  # type: ignore[arg-type]
    chain = x509.load_pem_x509_certificates(sim["cert_data"].rstrip(b"\x00"))  # type: ignore[union-attr]
    assert len(chain) == 3
    leaf, ca, root = chain
    leaf.verify_directly_issued_by(ca)
    ca.verify_directly_issued_by(root)
    root.verify_directly_issued_by(root)
    pck_key = leaf.public_key()
    assert isinstance(pck_key, ec.EllipticCurvePublicKey)
    verify_raw(pck_key, sim["qe_report_signature"], sim["qe_report"])  # type: ignore[arg-type]
    qe_report_data = sim["qe_report"][320:384]  # type: ignore[index]
    expected = hashlib.sha256(sim["attestation_key"] + sim["qe_auth_data"]).digest() + bytes(32)  # type: ignore[operator]
    assert qe_report_data == expected
    assert "PCK Processor CA" in ca.subject.rfc4514_string()


def test_pck_certificate_carries_the_sgx_extension_in_intels_layout(platform: SimPlatform) -> None:
    extension = platform.pck.certificate.extensions.get_extension_for_oid(
        x509.ObjectIdentifier(SGX_EXTENSION_OID)
    )
    assert extension.value.value == encode_sgx_extension(platform.tcb)  # type: ignore[attr-defined]


def test_sgx_extension_encoder_reproduces_a_real_pck_certificate_byte_for_byte(vectors: Path) -> None:
    from teelab.enclave_runtime.sim.sgx_extension import PlatformTcb

    quote = (vectors / "sgx-dcap-qvl" / "sgx_quote.bin").read_bytes()
    leaf = x509.load_pem_x509_certificates(parse(quote)["cert_data"].rstrip(b"\x00"))[0]  # type: ignore[union-attr]
    real = leaf.extensions.get_extension_for_oid(x509.ObjectIdentifier(SGX_EXTENSION_OID)).value.value  # type: ignore[attr-defined]
    # Values from shared/vectors/sgx-dcap-qvl/README.md.
    tcb = PlatformTcb(
        ppid=bytes.fromhex("d04ec06d4e6d92dc90d0ad3cf5ee2ddf"),
        comp_svns=(11, 11, 2, 2, 255, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
        pcesvn=13,
        cpusvn=bytes.fromhex("0b0b0202ff0100000000000000000000"),
        pceid=bytes(2),
        fmspc=bytes.fromhex("00a067110000"),
    )
    assert encode_sgx_extension(tcb) == real
