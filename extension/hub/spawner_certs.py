"""Under ``internal_ssl``: the notebooks CA certifies the server's own TLS key, made inside its TEE.

Stock JupyterHub makes the server's key in the hub (``Spawner.create_certs``) and ships it to the server
(a file, a Kubernetes Secret). TeeSpawner makes no key: the server's boot generates ``T`` inside the TEE and
binds ``SHA-256(T.spki)`` into its evidence; once that evidence passed, the hub signs ``T.spki`` with the
notebooks CA (as ``create_certs`` would have: same CA, same names), and the certificate travels in the sealed
bundle. The proxy and the hub then reach the server over TLS with the attested key.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import secrets
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from teelab.errors import ConfigError
from teelab.timeutil import utcnow

NOTEBOOKS_CA = "notebooks-ca"
DEFAULT_NAMES = ("DNS:localhost", "IP:127.0.0.1")
VALID_DAYS = 365


def _general_name(name: str) -> x509.GeneralName:
    kind, _, value = name.partition(":")
    if kind == "DNS" and value:
        return x509.DNSName(value)
    if kind == "IP" and value:
        return x509.IPAddress(ipaddress.ip_address(value))
    raise ConfigError(f"not a certificate name: {name!r} (use DNS:name or IP:address)")


def notebooks_ca(
    certs_location: str | Path,
) -> tuple[x509.Certificate, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey]:
    """The hub's notebooks CA (certipy's store in ``internal_certs_location``)."""
    store = Path(certs_location)
    try:
        files = json.loads((store / "certipy.json").read_text())[NOTEBOOKS_CA]["files"]
        certificate = x509.load_pem_x509_certificate(Path(files["cert"]).read_bytes())
        key = serialization.load_pem_private_key(Path(files["key"]).read_bytes(), password=None)
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise ConfigError(f"cannot read the hub's notebooks CA in {store}: {error}") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ConfigError("the notebooks CA's key is neither RSA nor EC")
    return certificate, key


def certify_server_key(
    tls_spki: bytes, *, certs_location: str | Path, common_name: str, alt_names: Sequence[str]
) -> str:
    """A PEM certificate from the notebooks CA for the public key ``tls_spki`` (DER SubjectPublicKeyInfo)."""
    ca_certificate, ca_key = notebooks_ca(certs_location)
    try:
        public = serialization.load_der_public_key(tls_spki)
    except ValueError:
        raise ConfigError("the server's TLS key is not a DER public key") from None
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise ConfigError("the server's TLS key is not an EC key")
    now = utcnow()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_certificate.subject)
        .public_key(public)
        .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in alt_names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
