"""Who is calling the host agent, by TLS client certificate: gateways hold certificates from the operator's CA.

gRPC's TLS layer has already verified the chain against ``--client-ca`` and refused a caller without one
(``require_client_auth``); this module only names the gateway a verified certificate belongs to, for the
per-gateway limits and for whose kernels a caller may see. The name is the certificate's first DNS, URI or
e-mail subject alternative name, else its subject's common name, else the whole subject. A certificate whose
extended key usage excludes client authentication (a host's server certificate from the same CA, say) names
nobody. So does a certificate whose SHA-256 fingerprint the operator lists in the revocation file
(``--revoked``), which is re-read whenever it changes: no restart to shut out a stolen gateway key.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from teelab.errors import ConfigError

_DER = Encoding.DER
PEM_PROPERTY = "x509_pem_cert"  # the gRPC auth-context property holding the verified peer certificate


def load_client_ca(pem: bytes, source: str) -> bytes:
    """``pem`` if it holds at least one CA certificate (a typo'd file must not silently accept nobody)."""
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise ConfigError(f"{source} holds no PEM certificate") from None
    for certificate in certificates:
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            continue
        if constraints.ca:
            return pem
    raise ConfigError(f"{source} holds no CA certificate (basicConstraints CA:TRUE)")


@functools.lru_cache(maxsize=256)
def certificate_identity(pem: bytes) -> str | None:
    """The gateway a verified client certificate names, or None if it may not act as a client."""
    try:
        certificate = x509.load_pem_x509_certificate(pem)
        extensions = certificate.extensions
    except ValueError:
        return None
    try:
        usage = extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.CLIENT_AUTH not in usage:
            return None
    except x509.ExtensionNotFound:
        pass
    try:
        names = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        for kind in (x509.DNSName, x509.UniformResourceIdentifier, x509.RFC822Name):
            values = names.get_values_for_type(kind)
            if values:
                return str(values[0])
    except x509.ExtensionNotFound:
        pass
    common = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if common:
        return str(common[0].value)
    subject = certificate.subject.rfc4514_string()
    return subject or None


def fingerprint(pem: bytes) -> str | None:
    """The SHA-256 fingerprint (lowercase hex of the DER) of a PEM certificate, or None if it is not one."""
    try:
        return hashlib.sha256(x509.load_pem_x509_certificate(pem).public_bytes(_DER)).hexdigest()
    except ValueError:
        return None


class RevokedCertificates:
    """The operator's revocation file: one SHA-256 certificate fingerprint per line, hex with or without
    colons, ``openssl x509 -fingerprint -sha256`` output accepted as it is; ``#`` comments. Re-read when it
    changes; a file that cannot be read or parsed revokes everything (fail closed) until it is fixed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None
        self._revoked: frozenset[str] | None = frozenset()
        self._lock = threading.Lock()
        self.load()  # a broken file at start is the operator's error to see now
        if self._revoked is None:
            raise ConfigError(
                f"the revocation file {path} cannot be read or lists something not a fingerprint"
            )

    def load(self) -> frozenset[str] | None:
        with self._lock:
            try:
                info = self.path.stat()
                seen = (info.st_mtime_ns, info.st_size, info.st_ino)
                if seen != self._seen:
                    self._revoked = _parse_fingerprints(self.path.read_text())
                    self._seen = seen
            except (OSError, UnicodeDecodeError):
                self._revoked, self._seen = None, None
            return self._revoked

    def revoked(self, pem: bytes) -> bool:
        listed = self.load()
        return listed is None or fingerprint(pem) in listed


def _parse_fingerprints(text: str) -> frozenset[str] | None:
    found = set()
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        value = line.rpartition("=")[2].replace(":", "").strip().lower()
        if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            return None
        found.add(value)
    return frozenset(found)


def peer_certificate_identity(
    auth_context: Mapping[str, Iterable[bytes]], revoked: RevokedCertificates | None = None
) -> str | None:
    """The gateway named by the certificate the TLS layer verified for this call, or None."""
    pems = list(auth_context.get(PEM_PROPERTY) or ())
    if not pems or (revoked is not None and revoked.revoked(pems[0])):
        return None
    return certificate_identity(pems[0])
