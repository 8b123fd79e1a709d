"""Reading a folder of Intel PCS-style collateral files, recognised by content rather than by name.

Recognised: TCB info bodies ``{"tcbInfo": …, "signature": …}``, enclave identity bodies
``{"enclaveIdentity": …}``, CRLs (DER or PEM; the root CA CRL is told from PCK CA CRLs by its issuer), PEM or
DER certificates (the TCB signing chain, PCK CA chains, the root, PCK certificates). Everything else — quotes,
READMEs, dcap-qvl bundles — is skipped and listed in ``IntelCollateral.skipped``. Two different documents for
the same purpose (say two TCB infos for one FMSPC) are refused: which one is meant cannot be guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from teelab.errors import VerificationError
from teelab.gateway.dcap import jsondoc as j
from teelab.gateway.dcap.collateral import (
    CHECK,
    CertChain,
    Crl,
    IntelCollateral,
    SignedDoc,
    is_ca,
    is_self_issued,
    make_crl,
)
from teelab.gateway.dcap.jsondoc import DocError
from teelab.gateway.dcap.pck import extension_bytes
from teelab.gateway.dcap.pem import PARSE_ERRORS, load_certificate_der, load_certificates
from teelab.gateway.dcap.qeidentity import EnclaveIdentity, parse_enclave_identity
from teelab.gateway.dcap.tcbinfo import TcbInfo, parse_tcb_info

_MAX_FILE = 16 * 1024 * 1024
_PEM_CERT = b"-----BEGIN CERTIFICATE-----"
_PEM_CRL = b"-----BEGIN X509 CRL-----"


def _error(source: str, detail: str) -> VerificationError:
    return VerificationError(
        CHECK, f"{source}: {detail}", hint="fix or remove that file from the collateral folder"
    )


@dataclass
class _Found:
    tcb_infos: list[tuple[Any, bytes, bytes, str]] = field(default_factory=list)
    qe_identities: list[tuple[Any, bytes, bytes, str]] = field(default_factory=list)
    crls: list[Crl] = field(default_factory=list)
    chains: list[CertChain] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _signed_json(
    members: dict[str, tuple[Any, int, int]], text: str, key: str, source: str
) -> tuple[Any, bytes, bytes]:
    """(decoded value, exact signed bytes, signature) of a PCS response body."""
    value, start, end = members[key]
    if "signature" not in members:
        raise _error(source, f"has {key!r} but no 'signature'")
    signature = members["signature"][0]
    if not isinstance(signature, str):
        raise _error(source, "'signature' must be hex text")
    try:
        raw = bytes.fromhex(signature)
    except ValueError:
        raise _error(source, "'signature' is not hex") from None
    if len(raw) != 64:
        raise _error(source, f"'signature' is {len(raw)} bytes; an ECDSA P-256 r||s signature is 64")
    return value, text[start:end].encode("utf-8"), raw


def _read_json(data: bytes, source: str, found: _Found) -> None:
    try:
        text = j.decode_text(data).removeprefix("\ufeff")
    except DocError:
        found.skipped.append(f"{source} (not UTF-8 text)")
        return
    looks_signed = '"tcbInfo"' in text or '"enclaveIdentity"' in text
    try:
        members = j.members_with_spans(text)
    except DocError as exc:
        if looks_signed:
            raise _error(source, str(exc)) from None
        found.skipped.append(f"{source} (not valid JSON)")
        return
    for key, bucket in (("tcbInfo", found.tcb_infos), ("enclaveIdentity", found.qe_identities)):
        if key in members:
            value, signed, signature = _signed_json(members, text, key, source)
            bucket.append((value, signed, signature, source))
            return
    if "tcb_info" in members:
        found.skipped.append(f"{source} (a collateral bundle; load it on its own)")
        return
    found.skipped.append(f"{source} (JSON, but neither a TCB info nor an enclave identity)")


def _read_file(path: Path, found: _Found) -> None:
    source = str(path)
    try:
        if path.stat().st_size > _MAX_FILE:
            found.skipped.append(f"{source} (larger than {_MAX_FILE} bytes)")
            return
        data = path.read_bytes()
    except OSError as exc:
        raise _error(source, f"cannot be read: {exc.strerror or exc}") from None
    head = data.lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"{"):
        _read_json(data, source, found)
    elif head.startswith(_PEM_CRL):
        found.crls.append(make_crl(data, source))
    elif head.startswith(_PEM_CERT):
        found.chains.append(CertChain(load_certificates(data, check=CHECK, what=source), source))
    elif head.startswith(b"\x30"):
        _read_der(data, source, found)
    else:
        found.skipped.append(f"{source} (not collateral)")


def _read_der(data: bytes, source: str, found: _Found) -> None:
    try:
        x509.load_der_x509_crl(data)
    except PARSE_ERRORS:
        pass
    else:
        found.crls.append(make_crl(data, source))
        return
    try:
        x509.load_der_x509_certificate(data)
    except PARSE_ERRORS:
        found.skipped.append(f"{source} (DER, but neither a certificate nor a CRL)")
        return
    found.chains.append(CertChain((load_certificate_der(data, check=CHECK, what=source),), source))


def _has_sgx_extension(cert: x509.Certificate) -> bool:
    return extension_bytes(cert) is not None


def _unique(items: list[CertChain], what: str) -> CertChain | None:
    distinct: dict[tuple[bytes, ...], CertChain] = {}
    for chain in items:
        distinct.setdefault(chain.ders, chain)
    if len(distinct) > 1:
        names = ", ".join(c.source for c in distinct.values())
        raise VerificationError(CHECK, f"two different {what}s: {names}; keep one of them")
    return next(iter(distinct.values()), None)


def _complete(chain: CertChain, roots: list[x509.Certificate]) -> CertChain:
    """Append the folder's root to a chain delivered without it."""
    last = chain.certs[-1]
    if is_self_issued(last):
        return chain
    for root in roots:
        if root.subject == last.issuer:
            return CertChain((*chain.certs, root), chain.source)
    return chain


def _docs(
    entries: list[tuple[Any, bytes, bytes, str]], parse: Any, chain: CertChain, key: Any, what: str
) -> list[SignedDoc[Any]]:
    docs: dict[object, SignedDoc[Any]] = {}
    for value, text, signature, source in entries:
        try:
            body = parse(value)
        except DocError as exc:
            raise _error(source, str(exc)) from None
        doc = SignedDoc(body, text, signature, chain, source)
        k = key(body)
        if k in docs:
            if docs[k].text == text:
                continue
            raise VerificationError(
                CHECK, f"two different {what}s for {k}: {docs[k].source} and {source}; keep one of them"
            )
        docs[k] = doc
    return list(docs.values())


@dataclass
class _Sorted:
    """The folder's certificate chains by role."""

    roots: list[x509.Certificate]
    signing: list[CertChain]
    ca_chains: list[CertChain]
    pck_certs: list[x509.Certificate]


def _sort_chains(found: _Found) -> _Sorted:
    roots = [c.certs[0] for c in found.chains if len(c.certs) == 1 and is_self_issued(c.certs[0])]
    roots += [c.certs[-1] for c in found.chains if is_self_issued(c.certs[-1])]
    sorted_ = _Sorted(roots, [], [], [])
    for chain in found.chains:
        first = chain.certs[0]
        if _has_sgx_extension(first):
            sorted_.pck_certs.extend(chain.certs)
        elif is_self_issued(first):
            continue  # a root on its own: used to complete chains
        elif is_ca(first):
            sorted_.ca_chains.append(_complete(chain, roots))
        else:
            sorted_.signing.append(_complete(chain, roots))
    return sorted_


def _signed_documents(
    found: _Found, signer: CertChain | None
) -> tuple[list[SignedDoc[TcbInfo]], list[SignedDoc[EnclaveIdentity]]]:
    tcb_infos: list[SignedDoc[TcbInfo]] = []
    qe_identities: list[SignedDoc[EnclaveIdentity]] = []
    if signer is None:
        return tcb_infos, qe_identities
    tcb_infos = _docs(
        found.tcb_infos, parse_tcb_info, signer, lambda b: f"{b.id} FMSPC {b.fmspc.hex()}", "TCB info"
    )
    for doc in _docs(found.qe_identities, parse_enclave_identity, signer, lambda b: b.id, "enclave identity"):
        if doc.body.id == "QVE":
            found.skipped.append(f"{doc.source} (QvE identity; quotes need the QE identity)")
        else:
            qe_identities.append(doc)
    return tcb_infos, qe_identities


def _sorted_crls(found: _Found, chains: _Sorted) -> tuple[dict[bytes, Crl], tuple[Crl, ...]]:
    """The distinct root CA CRLs (by DER), and each PCK CA's CRL linked to that CA's chain."""
    root_subjects = {root.subject for root in chains.roots}
    root_crls: list[Crl] = []
    pck_crls: list[Crl] = []
    for crl in found.crls:
        issuer = crl.crl.issuer
        # The root CRL is the one its root issued; with no root certificate in the folder, Intel's naming is
        # the only hint left (a wrong guess still fails verification, at the CRL's signature).
        is_root = issuer in root_subjects if root_subjects else "Root CA" in crl.issuer_name
        (root_crls if is_root else pck_crls).append(crl)
    distinct_root_crls = {crl.der: crl for crl in root_crls}
    if len(distinct_root_crls) > 1:
        names = ", ".join(c.source for c in distinct_root_crls.values())
        raise VerificationError(CHECK, f"two different root CA CRLs: {names}; keep one of them")
    by_issuer: dict[bytes, Crl] = {}
    for crl in pck_crls:
        key = crl.crl.issuer.public_bytes()
        if key in by_issuer and by_issuer[key].der != crl.der:
            raise VerificationError(
                CHECK, f"two different CRLs of {crl.issuer_name}: {by_issuer[key].source} and {crl.source}"
            )
        by_issuer.setdefault(key, crl)
    issuer_chains = {c.certs[0].subject: c for c in chains.ca_chains}
    linked = tuple(
        Crl(c.der, c.crl, c.revoked, c.source, issuer_chains.get(c.crl.issuer)) for c in by_issuer.values()
    )
    return distinct_root_crls, linked


def _certificate_pool(chains: _Sorted) -> tuple[x509.Certificate, ...]:
    """PCK certificates and the PCK CA chains, each certificate once."""
    seen: set[bytes] = set()
    pool: list[x509.Certificate] = []
    for cert in [*chains.pck_certs, *(cert for chain in chains.ca_chains for cert in chain.certs)]:
        der = cert.public_bytes(Encoding.DER)
        if der not in seen:
            seen.add(der)
            pool.append(cert)
    return tuple(pool)


def _read_folder(folder: Path) -> _Found:
    if not folder.is_dir():
        raise VerificationError(CHECK, f"{folder}: not a folder")
    found = _Found()
    try:
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    except OSError as exc:
        raise _error(str(folder), f"cannot be listed: {exc.strerror or exc}") from None
    for path in files:
        _read_file(path, found)
    return found


def load_folder(folder: Path) -> IntelCollateral:
    found = _read_folder(folder)
    chains = _sort_chains(found)
    signer = _unique(chains.signing, "TCB signing chain")
    missing: list[str] = []
    if signer is None and (found.tcb_infos or found.qe_identities):
        missing.append("the TCB signing certificate chain")
    tcb_infos, qe_identities = _signed_documents(found, signer)
    root_crls, pck_crls = _sorted_crls(found, chains)
    wanted = (
        (tcb_infos, "a TCB info"),
        (qe_identities, "a QE identity"),
        (root_crls, "the root CA CRL"),
        (pck_crls, "a PCK CA CRL"),
    )
    missing += [what for present, what in wanted if not present]
    if missing:
        skipped = f" (skipped: {'; '.join(found.skipped)})" if found.skipped else ""
        raise VerificationError(
            CHECK,
            f"collateral folder {folder} lacks {', '.join(missing)}{skipped}",
            hint="put Intel PCS responses (TCB info, QE identity, CRLs and issuer chains) in that folder",
        )
    return IntelCollateral(
        tcb_infos=tuple(tcb_infos),
        qe_identities=tuple(qe_identities),
        root_ca_crl=next(iter(root_crls.values())),
        pck_crls=pck_crls,
        pck_certificates=_certificate_pool(chains),
        source=str(folder),
        skipped=tuple(found.skipped),
    )
