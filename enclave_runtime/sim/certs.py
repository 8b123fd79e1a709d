"""The simulated platform's certificate hierarchy, shaped like Intel's PCS hierarchy.

Root CA -> PCK Processor CA -> PCK certificate (with the SGX extension), and Root CA -> TCB Signing.
ECDSA P-256 everywhere, as Intel uses. Every name says "Simulated" and "not confidential" so a simulated
chain can never be mistaken for Intel's in a log or a UI.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from teelab.enclave_runtime.sim.sgx_extension import SGX_EXTENSION_OID, PlatformTcb, encode_sgx_extension

ORGANIZATION = "teelab simulated TEE (not confidential)"
ROOT_CN = "teelab Simulated SGX Root CA"
PCK_CA_CN = "teelab Simulated SGX PCK Processor CA"
PCK_CN = "teelab Simulated SGX PCK Certificate"
TCB_SIGNING_CN = "teelab Simulated SGX TCB Signing"

# Intel's validity periods, roughly: long-lived CAs, a 7-year PCK certificate.
CA_LIFETIME = timedelta(days=365 * 30)
LEAF_LIFETIME = timedelta(days=365 * 7)
# Certificates start a day early so a platform created "now" verifies at "now" on a machine whose clock
# is slightly behind the one that created it.
BACKDATE = timedelta(days=1)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


@dataclass(frozen=True)
class Issued:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _builder(
    subject: str, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, now: datetime, lifetime: timedelta
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + lifetime)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _signing_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=True,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _authority_key_id(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def issue_root(now: datetime) -> Issued:
    key = new_key()
    cert = (
        _builder(ROOT_CN, _name(ROOT_CN), key.public_key(), now, CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def issue_pck_ca(root: Issued, now: datetime) -> Issued:
    key = new_key()
    cert = (
        _builder(PCK_CA_CN, root.certificate.subject, key.public_key(), now, CA_LIFETIME)
        .add_extension(_authority_key_id(root.certificate), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .sign(root.key, hashes.SHA256())
    )
    return Issued(cert, key)


def issue_pck(pck_ca: Issued, tcb: PlatformTcb, now: datetime) -> Issued:
    key = new_key()
    cert = (
        _builder(PCK_CN, pck_ca.certificate.subject, key.public_key(), now, LEAF_LIFETIME)
        .add_extension(_authority_key_id(pck_ca.certificate), critical=False)
        .add_extension(_signing_usage(), critical=True)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX_EXTENSION_OID), encode_sgx_extension(tcb)),
            critical=False,
        )
        .sign(pck_ca.key, hashes.SHA256())
    )
    return Issued(cert, key)


def issue_tcb_signing(root: Issued, now: datetime) -> Issued:
    key = new_key()
    cert = (
        _builder(TCB_SIGNING_CN, root.certificate.subject, key.public_key(), now, LEAF_LIFETIME)
        .add_extension(_authority_key_id(root.certificate), critical=False)
        .add_extension(_signing_usage(), critical=True)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(root.key, hashes.SHA256())
    )
    return Issued(cert, key)


def issue_crl(
    issuer: Issued, this_update: datetime, next_update: datetime, revoked_serials: tuple[int, ...] = ()
) -> x509.CertificateRevocationList:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.certificate.subject)
        .last_update(this_update)
        .next_update(next_update)
        .add_extension(x509.CRLNumber(int(this_update.timestamp())), critical=False)
        .add_extension(_authority_key_id(issuer.certificate), critical=False)
    )
    for serial in revoked_serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(this_update).build()
        )
    return builder.sign(issuer.key, hashes.SHA256())
