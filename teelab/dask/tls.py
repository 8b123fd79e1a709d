"""The cluster's TLS: a per-cluster CA that lives only in the controller's memory, and TLS contexts built
without writing a private key to any file a host can read.

The CA (ECDSA P-256) signs only keys an attested node generated itself (bound into its evidence, see
:func:`teelab.protocols.session.session_report_data`) and the controller's own client key. Every certificate
names its holder's role and name as the SAN URI ``teelab-dask://ROLE/NAME``: mutual TLS decides *whether* a
peer belongs to the cluster, the role decides *what* it may be (:mod:`teelab.dask.scheduler`). The CA dies
with the cluster, so no revocation list is needed: a certificate of a closed cluster chains to nothing.

:class:`InMemorySecurity` replaces ``distributed.Security``'s own loading, which writes in-memory PEM keys into a
``tempfile.TemporaryDirectory`` each time it builds a context (research/scale_out.md A.1): the chain is loaded
once, from an anonymous memory file (``memfd_create``), and the contexts are reused.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from distributed.security import Security

from teelab.errors import TeelabError

SCHEME = "teelab-dask"
ROLES = ("scheduler", "worker", "client")
CERTIFICATE_LIFETIME = timedelta(days=7)  # a cluster outliving this needs new nodes; its CA dies with it
_CLOCK_SKEW = timedelta(minutes=5)


class ClusterTlsError(TeelabError):
    """A key or certificate of the cluster's TLS is not what it must be."""


def role_uri(role: str, name: str) -> str:
    return f"{SCHEME}://{role}/{name}"


def parse_role_uri(uri: str) -> tuple[str, str] | None:
    """``(role, name)`` of a ``teelab-dask://ROLE/NAME`` URI; None for anything else."""
    prefix = f"{SCHEME}://"
    if not uri.startswith(prefix):
        return None
    role, _, name = uri[len(prefix) :].partition("/")
    return (role, name) if role in ROLES and name else None


def peer_role(peercert: object) -> tuple[str, str] | None:
    """The role and name a verified peer certificate (``ssl.SSLSocket.getpeercert()``) names, if exactly one."""
    if not isinstance(peercert, dict):
        return None
    names = peercert.get("subjectAltName") or ()
    roles = [parse_role_uri(value) for kind, value in names if kind == "URI"]
    found = [role for role in roles if role is not None]
    return found[0] if len(found) == 1 else None


def spki(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_node_key(der: bytes) -> ec.EllipticCurvePublicKey:
    """A node's TLS public key from its hello: a P-256 SubjectPublicKeyInfo and nothing else."""
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, TypeError):
        raise ClusterTlsError("the node's TLS key is not a DER public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ClusterTlsError("the node's TLS key is not an ECDSA P-256 key")
    return key


def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")


class ClusterCA:
    """The per-cluster certificate authority. Its key exists only in this object (the controller's memory)."""

    def __init__(self, cluster_id: str, *, now: datetime | None = None) -> None:
        self.cluster_id = cluster_id
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = now or datetime.now(UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"teelab-dask CA {cluster_id}")])
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + CERTIFICATE_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.certificate_pem = _pem(self.certificate)

    def issue(
        self, public_key: ec.EllipticCurvePublicKey, role: str, name: str, *, now: datetime | None = None
    ) -> str:
        """A certificate (PEM) for ``public_key`` as ``role``/``name``. No extended key usage: every role both
        listens and connects."""
        if role not in ROLES:
            raise ClusterTlsError(f"unknown cluster role {role!r}")
        now = now or datetime.now(UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"teelab-dask {role} {name}")]))
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + CERTIFICATE_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(role_uri(role, name))]),
                critical=False,
            )
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        return _pem(certificate)


def check_node_certificate(
    certificate_pem: str, ca_pem: str, key: ec.EllipticCurvePublicKey
) -> tuple[str, str]:
    """In the node: the certificate the bundle carries is the CA's, for this node's own key; its role and name.

    The bundle is already authenticated by the controller; this catches a controller bug, not an attacker.
    """
    try:
        certificate = x509.load_pem_x509_certificate(certificate_pem.encode("ascii"))
        ca = x509.load_pem_x509_certificate(ca_pem.encode("ascii"))
        certificate.verify_directly_issued_by(ca)
        uris = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, UnicodeEncodeError, x509.ExtensionNotFound) as error:
        raise ClusterTlsError(f"the node certificate does not check out: {error}") from None
    except InvalidSignature:
        raise ClusterTlsError("the node certificate is not signed by the cluster CA") from None
    if spki(certificate.public_key()) != spki(key):  # type: ignore[arg-type]
        raise ClusterTlsError("the node certificate certifies another key than this node's")
    roles = [parse_role_uri(uri) for uri in uris.get_values_for_type(x509.UniformResourceIdentifier)]
    found = [role for role in roles if role is not None]
    if len(found) != 1:
        raise ClusterTlsError("the node certificate names no single cluster role")
    return found[0]


@dataclass(frozen=True)
class TlsIdentity:
    """One party's TLS identity: the CA to trust, its certificate chain and private key (all in memory)."""

    ca_pem: str
    certificate_pem: str
    key: ec.EllipticCurvePrivateKey

    def contexts(self) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        """``(connect, listen)`` contexts: mutual TLS ≥ 1.2, the cluster CA only, no hostname (IP peers)."""
        chain = self.certificate_pem.encode("ascii") + self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        made = []
        for purpose in (ssl.Purpose.SERVER_AUTH, ssl.Purpose.CLIENT_AUTH):
            context = ssl.create_default_context(purpose=purpose, cadata=self.ca_pem)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.check_hostname = False  # a dedicated CA per cluster; peers are IP addresses
            context.verify_mode = ssl.CERT_REQUIRED  # mutual: a listener demands a client certificate too
            _load_chain(context, chain)
            made.append(context)
        return made[0], made[1]


def _load_chain(context: ssl.SSLContext, chain: bytes) -> None:
    """``load_cert_chain`` from memory: OpenSSL reads only paths, so hand it an anonymous memory file
    (``memfd_create``, never on a disk); where there is none, a 0600 file in ``$TMPDIR`` — inside a TEE that
    is the TEE's own scratch space (a tmpfs in the enclave or guest) — removed at once."""
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None:
        with contextlib.suppress(OSError):
            fd = memfd_create("teelab-dask-tls", getattr(os, "MFD_CLOEXEC", 0))
            try:
                os.write(fd, chain)
                context.load_cert_chain(f"/proc/self/fd/{fd}")
                return
            finally:
                os.close(fd)
    with tempfile.TemporaryDirectory(prefix="teelab-dask-tls-") as folder:
        path = os.path.join(folder, "chain.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(chain)
        context.load_cert_chain(path)


class InMemorySecurity(Security):  # type: ignore[misc]
    """A ``distributed.Security`` whose contexts were built once from an in-memory identity (every role uses
    this party's one certificate: a node has exactly one role)."""

    __slots__ = ("_connect", "_listen")

    def __init__(self, identity: TlsIdentity) -> None:
        super().__init__(require_encryption=True)  # type: ignore[no-untyped-call]
        self._connect, self._listen = identity.contexts()

    def get_connection_args(self, role: str) -> dict[str, Any]:
        return {"ssl_context": self._connect, "require_encryption": True, "extra_conn_args": {}}

    def get_listen_args(self, role: str) -> dict[str, Any]:
        return {"ssl_context": self._listen, "require_encryption": True}

    def get_tls_config_for_role(self, role: str) -> dict[str, Any]:
        # Nothing of the identity is exposed as paths or PEM: code asking for them gets nothing to copy.
        return {"ca_file": None, "key": None, "cert": None, "ciphers": None}

    def __repr__(self) -> str:
        return "InMemorySecurity(require_encryption=True, tls=<in memory>)"
