"""AMD CRLs: an ASK/ASVK revoked by its ARK's CRL is refused; a CRL not signed by the pinned ARK, or not
current, is refused; without a CRL the check says revocation was not checked.

No real AMD CRL is public (shared/vectors/NOTES.md), so the CRLs here are signed by the synthetic ARK of
``test_snp_verify`` (RSA-PSS SHA-384, as AMD signs them); the parser is also fuzzed.
"""

from __future__ import annotations

import base64
import functools
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from teelab.errors import VerificationError
from teelab.gateway.snp.cert_table import CRL_GUID, VCEK_GUID, build_cert_table
from teelab.gateway.snp.certs import SnpCertificates
from teelab.gateway.snp.crl import parse_crl
from teelab.gateway.snp.verify import verify_snp_report

from .test_snp_verify import PSS, T0, Pki, amd_name, make_report, pki, synthetic


def make_crl(
    p: Pki,
    *revoked_certificates: bytes,
    signer: rsa.RSAPrivateKey | None = None,
    issued: datetime = T0 - timedelta(days=1),
    next_update: datetime = T0 + timedelta(days=30),
) -> bytes:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(amd_name(f"ARK-{p.product}"))
        .last_update(issued)
        .next_update(next_update)
    )
    for der in revoked_certificates:
        serial = x509.load_der_x509_certificate(der).serial_number
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(issued).build()
        )
    crl = builder.sign(signer or p.ark_key, hashes.SHA384(), rsa_padding=PSS)
    return crl.public_bytes(serialization.Encoding.DER)


def pem_block(label: str, der: bytes) -> bytes:
    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = b"\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    return b"-----BEGIN " + label.encode() + b"-----\n" + lines + b"\n-----END " + label.encode() + b"-----\n"


@functools.cache
def revoking_crl() -> bytes:
    p = pki("Milan")
    return make_crl(p, p.ask)


def with_crl(certs: SnpCertificates, crl: bytes) -> SnpCertificates:
    return SnpCertificates.from_certificates(certs.certificates, [parse_crl(crl)])


def check(evidence_checks: list[object], name: str = "amd_crl") -> str:
    return next(c.detail for c in evidence_checks if c.name == name)  # type: ignore[attr-defined]


def test_without_a_crl_revocation_is_reported_as_not_checked() -> None:
    certs, key, p = synthetic()
    evidence = verify_snp_report(make_report(key), certs, at=T0, anchors=p.anchors)
    detail = check(evidence.checks)
    assert detail.startswith("not checked: no CRL of ARK ARK-Milan")
    assert "https://kdsintf.amd.com/vcek/v1/Milan/crl" in detail


def test_a_current_crl_that_does_not_list_the_ask_passes() -> None:
    certs, key, p = synthetic()
    other = synthetic("Genoa")[2]  # a revoked serial of another chain changes nothing here
    evidence = verify_snp_report(
        make_report(key), with_crl(certs, make_crl(p, other.ask)), at=T0, anchors=p.anchors
    )
    assert check(evidence.checks).startswith("ASK SEV-Milan is not revoked (CRL of ARK ARK-Milan")


@pytest.mark.parametrize("kind", ["vcek", "vlek"])
def test_a_revoked_intermediate_is_refused(kind: str) -> None:
    certs, key, p = synthetic(kind=kind)
    revoked = p.asvk if kind == "vlek" else p.ask
    report = make_report(key, signing_key=1 if kind == "vlek" else 0)
    with pytest.raises(VerificationError) as refused:
        verify_snp_report(report, with_crl(certs, make_crl(p, revoked)), at=T0, anchors=p.anchors)
    assert refused.value.check == "amd_crl"
    assert "is revoked by AMD" in refused.value.detail
    assert ("ASVK" if kind == "vlek" else "ASK") in refused.value.detail


def test_a_crl_not_signed_by_the_pinned_ark_is_refused() -> None:
    certs, key, p = synthetic()
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(VerificationError, match="is not signed by ARK ARK-Milan") as refused:
        verify_snp_report(
            make_report(key), with_crl(certs, make_crl(p, signer=forger)), at=T0, anchors=p.anchors
        )
    assert refused.value.check == "amd_crl"


@pytest.mark.parametrize(
    ("issued", "next_update"),
    [(T0 - timedelta(days=60), T0 - timedelta(days=1)), (T0 + timedelta(days=1), T0 + timedelta(days=30))],
    ids=["stale", "from-the-future"],
)
def test_a_crl_that_is_not_current_is_refused(issued: datetime, next_update: datetime) -> None:
    certs, key, p = synthetic()
    crl = make_crl(p, issued=issued, next_update=next_update)
    with pytest.raises(VerificationError, match="is not current") as refused:
        verify_snp_report(make_report(key), with_crl(certs, crl), at=T0, anchors=p.anchors)
    assert "fetch the current CRL from https://kdsintf.amd.com/vcek/v1/Milan/crl" in (
        refused.value.hint or ""
    )


def test_crls_arrive_as_pem_beside_the_certificates_as_crl_files_and_in_the_cert_table(
    tmp_path: Path,
) -> None:
    certs, key, p = synthetic()
    crl = make_crl(p, p.ask)
    report = make_report(key)

    def refused(loaded: SnpCertificates) -> str:
        with pytest.raises(VerificationError) as caught:
            verify_snp_report(report, loaded, at=T0, anchors=p.anchors)
        return caught.value.check

    pem = b"".join(pem_block("CERTIFICATE", c.der) for c in certs.certificates)
    crl_pem = x509.load_der_x509_crl(crl).public_bytes(serialization.Encoding.PEM)
    assert refused(SnpCertificates.from_bytes(pem + crl_pem)) == "amd_crl"
    folder = tmp_path / "chain"
    folder.mkdir()
    (folder / "chain.pem").write_bytes(pem)
    (folder / "Milan.crl").write_bytes(crl)  # DER, as AMD KDS serves it
    assert refused(SnpCertificates.load(folder)) == "amd_crl"
    table = build_cert_table([(VCEK_GUID, certs.leaf.der), (CRL_GUID, crl)])
    from_table = SnpCertificates.from_cert_table(table).with_builtin_chain()
    assert len(from_table.crls) == 1 and from_table.crls[0].revoked


def test_bad_crls_are_named() -> None:
    _, _, p = synthetic()
    crl = make_crl(p)
    with pytest.raises(VerificationError, match="bytes follow the CRL"):
        parse_crl(crl + b"\x00")
    with pytest.raises(VerificationError, match="not a DER certificate revocation list"):
        parse_crl(p.ask)  # a certificate is not a CRL
    with pytest.raises(VerificationError, match="a PEM CRL block is not valid base64"):
        SnpCertificates.from_bytes(b"-----BEGIN X509 CRL-----\n!!!\n-----END X509 CRL-----\n")


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600), flips=st.lists(st.integers(0, 10_000), max_size=4))
def test_fuzz_the_crl_parser_only_raises_verification_errors(data: bytes, flips: list[int]) -> None:
    base = bytearray(revoking_crl())
    for position in flips:
        base[position % len(base)] ^= 1 << (position % 8)
    for candidate in (data, bytes(base), bytes(base[: len(data) % len(base)])):
        try:
            parsed = parse_crl(candidate)
        except VerificationError as error:
            assert error.check == "amd_crl"
        else:
            assert isinstance(parsed.revoked, frozenset)


def test_unknown_table_entries_still_pass_beside_a_crl() -> None:
    certs, _, p = synthetic()
    other = uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")
    table = build_cert_table([(other, b"x"), (VCEK_GUID, certs.leaf.der), (CRL_GUID, make_crl(p))])
    assert len(SnpCertificates.from_cert_table(table).crls) == 1
