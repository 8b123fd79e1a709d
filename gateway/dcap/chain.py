"""Certificate chains of DCAP: the PCK chain (leaf ← PCK CA ← root) and the collateral signing chain.

Everything here is a pure function of certificate bytes — signatures, structure, the SGX extension — so
results are cached: quotes from one platform carry the same chain. What depends on the verification time
(validity windows) or on the trust anchors (pinning) is returned as data and judged by the caller every time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from teelab.errors import VerificationError
from teelab.gateway.dcap.collateral import CertChain, Crl, SignedDoc, common_name, is_ca, is_self_issued
from teelab.gateway.dcap.crypto import cert_p256_key, crl_signed_by, fingerprint, issued_by, verify_raw
from teelab.gateway.dcap.pck import PckExtension, extension_bytes, pck_extension
from teelab.gateway.dcap.pem import load_certificates

PCK_CHECK = "pck_chain"
SIGNING_CHECK = "collateral_chain"


@dataclass(frozen=True, slots=True)
class Window:
    """A span in which one certificate, CRL or document is valid."""

    what: str
    start: datetime
    end: datetime


@dataclass(frozen=True, eq=False)
class PckChain:
    leaf: x509.Certificate
    ca: x509.Certificate
    root: x509.Certificate
    leaf_key: ec.EllipticCurvePublicKey
    extension: PckExtension
    root_fingerprint: str
    windows: tuple[Window, ...]
    # Names are decoded once: x509.Name objects are rebuilt on every access and are slow to compare.
    ca_name: str
    root_name: str
    ca_subject_der: bytes


@dataclass(frozen=True, eq=False)
class SigningChain:
    signer: x509.Certificate
    root: x509.Certificate
    key: ec.EllipticCurvePublicKey
    root_fingerprint: str
    windows: tuple[Window, ...]
    signer_name: str


def cert_window(cert: x509.Certificate, what: str) -> Window:
    return Window(what, cert.not_valid_before_utc, cert.not_valid_after_utc)


def _link(check: str, cert: x509.Certificate, issuer: x509.Certificate, what: str) -> None:
    reason = issued_by(cert, issuer)
    if reason is not None:
        raise VerificationError(
            check,
            f"{what} ({common_name(cert.subject)}) is not validly issued by "
            f"{common_name(issuer.subject)}: {reason}",
            hint="a certificate in the chain is damaged or was substituted",
        )


@lru_cache(maxsize=1024)
def verify_pck_chain(certs: tuple[x509.Certificate, ...]) -> PckChain:
    """Structure and signatures of a PCK chain, leaf first; raises VerificationError("pck_chain")."""
    if len(certs) != 3:
        raise VerificationError(
            PCK_CHECK,
            f"the PCK certificate chain has {len(certs)} certificates; expected exactly 3 "
            "(PCK certificate, PCK Processor/Platform CA, root CA)",
        )
    leaf, ca, root = certs
    _link(PCK_CHECK, leaf, ca, "the PCK certificate")
    _link(PCK_CHECK, ca, root, "the PCK CA certificate")
    _link(PCK_CHECK, root, root, "the root CA certificate")
    if not is_ca(ca, PCK_CHECK) or not is_ca(root, PCK_CHECK):
        raise VerificationError(PCK_CHECK, "the PCK CA or root certificate is not marked as a CA")
    if is_ca(leaf, PCK_CHECK):
        raise VerificationError(
            PCK_CHECK, "the PCK certificate is marked as a CA; a PCK certificate is a leaf"
        )
    key = cert_p256_key(leaf)
    if key is None:
        raise VerificationError(PCK_CHECK, "the PCK certificate's key is not an ECDSA P-256 key")
    return PckChain(
        leaf=leaf,
        ca=ca,
        root=root,
        leaf_key=key,
        extension=pck_extension(leaf),
        root_fingerprint=fingerprint(root),
        ca_name=common_name(ca.subject),
        root_name=common_name(root.subject),
        ca_subject_der=ca.subject.public_bytes(),
        windows=(
            cert_window(leaf, "the PCK certificate"),
            cert_window(ca, f"the PCK CA certificate ({common_name(ca.subject)})"),
            cert_window(root, f"the root CA certificate ({common_name(root.subject)})"),
        ),
    )


@lru_cache(maxsize=1024)
def pck_chain_from_pem(pem: bytes) -> PckChain:
    """The PCK chain a quote embeds (certification data type 5)."""
    return verify_pck_chain(load_certificates(pem, check=PCK_CHECK, what="the quote's PCK certificate chain"))


def assemble_pck_chain(
    own: tuple[x509.Certificate, ...], pool: tuple[x509.Certificate, ...], ppid: bytes | None
) -> PckChain:
    """A PCK chain for a quote that does not embed one: the leaf from ``own`` (certificates the caller
    supplied) or else ``pool`` (the collateral's), completed with CA and root from both."""
    if len(own) == 3 and extension_bytes(own[0]) is not None:
        return verify_pck_chain(own)
    leaves = [c for c in (own or pool) if extension_bytes(c) is not None]
    if len(leaves) > 1 and ppid is not None:
        leaves = [c for c in leaves if pck_extension(c).ppid == ppid]
    if len(leaves) != 1:
        raise VerificationError(
            PCK_CHECK,
            f"the quote carries no PCK certificate chain and {len(leaves)} PCK certificates fit it",
            hint="pass the platform's PCK certificate chain (PEM) as extra_pck_chain",
        )
    leaf = leaves[0]
    everything = own + pool
    ca = next((c for c in everything if c.subject == leaf.issuer and c != leaf), None)
    root = (
        None
        if ca is None
        else next((c for c in everything if c.subject == ca.issuer and is_self_issued(c)), None)
    )
    if ca is None or root is None:
        raise VerificationError(
            PCK_CHECK,
            f"the PCK certificate's issuer chain ({common_name(leaf.issuer)} and its root) is not in the "
            "extra certificates or the collateral",
            hint="pass the PCK CA and root certificates with extra_pck_chain",
        )
    return verify_pck_chain((leaf, ca, root))


@lru_cache(maxsize=256)
def verify_signing_chain(chain: CertChain) -> SigningChain:
    """The TCB signing chain of a collateral document: signer ← root, exactly."""
    if len(chain.certs) != 2:
        raise VerificationError(
            SIGNING_CHECK,
            f"{chain.source}: the issuer chain has {len(chain.certs)} certificates; expected the TCB signing "
            "certificate and the root CA",
        )
    signer, root = chain.certs
    _link(SIGNING_CHECK, signer, root, "the TCB signing certificate")
    _link(SIGNING_CHECK, root, root, "the root CA certificate")
    key = cert_p256_key(signer)
    if key is None:
        raise VerificationError(SIGNING_CHECK, f"{chain.source}: the TCB signing key is not ECDSA P-256")
    return SigningChain(
        signer=signer,
        root=root,
        key=key,
        root_fingerprint=fingerprint(root),
        signer_name=common_name(signer.subject),
        windows=(cert_window(signer, f"the TCB signing certificate ({common_name(signer.subject)})"),),
    )


@lru_cache(maxsize=256)
def document_signature_ok(doc: SignedDoc[Any]) -> bool:
    """Whether the document's signature verifies over its exact signed bytes with its signing key."""
    return verify_raw(verify_signing_chain(doc.issuer_chain).key, doc.signature, doc.text)


@lru_cache(maxsize=1024)
def crl_issued_by(crl: Crl, issuer: x509.Certificate) -> bool:
    return crl_signed_by(crl.crl, issuer)


@lru_cache(maxsize=4096)
def qe_report_signed(chain: PckChain, qe_report: bytes, signature: bytes) -> bool:
    """The QE report is per platform (it binds the attestation key), so this repeats across quotes."""
    return verify_raw(chain.leaf_key, signature, qe_report)
