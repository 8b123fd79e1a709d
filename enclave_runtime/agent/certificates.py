"""Who is calling the host agent, by TLS client certificate: gateways hold certificates from the operator's CA.

gRPC's TLS layer has already verified the chain against ``--client-ca`` and refused a caller without one
(``require_client_auth``); this module only names the gateway a verified certificate belongs to, for the
per-gateway limits and for whose kernels a caller may see. The name is the certificate's first DNS, URI or
e-mail subject alternative name, else its subject's common name, else the whole subject. A certificate whose
extended key usage excludes client authentication (a host's server certificate from the same CA, say) names
nobody. So does a certificate the operator revoked (:mod:`.revocation`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from teelab.enclave_runtime.agent.revocation import RevokedCertificates
from teelab.errors import ConfigError

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


def peer_certificate_identity(
    auth_context: Mapping[str, Iterable[bytes]], revoked: RevokedCertificates | None = None
) -> str | None:
    """The gateway named by the certificate the TLS layer verified for this call, or None."""
    pems = list(auth_context.get(PEM_PROPERTY) or ())
    if not pems or (revoked is not None and revoked.revoked(pems[0])):
        return None
    return certificate_identity(pems[0])
