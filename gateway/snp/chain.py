"""Verifying the AMD chain ARK -> ASK/ASVK -> VCEK/VLEK against the pinned ARKs.

Everything about a chain except the validity windows is independent of time, and costs three RSA-4096
signature checks, so successful results are cached, keyed by the certificates' bytes and the pins. A cache
hit replays the same checks into the log (marked as cached); validity is judged afresh on every call.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa

from teelab.gateway.anchors import TrustAnchors
from teelab.gateway.asn1 import DerError
from teelab.gateway.checks import CheckLog
from teelab.gateway.snp import fallback
from teelab.gateway.snp.certs import AmdCertificate, SnpCertificates
from teelab.gateway.snp.crl import CRL_CHECK, AmdCrl, certificate_serial
from teelab.timeutil import isoformat

CHECK_INPUT = "snp_input"
CHECK_INTERMEDIATE_KIND = "amd_intermediate_kind"
CHECK_ARK_PINNED = "amd_ark_pinned"
CHECK_ARK_SIGNATURE = "amd_ark_signature"
CHECK_INTERMEDIATE_SIGNATURE = "amd_intermediate_signature"
CHECK_LEAF_SIGNATURE = "amd_leaf_signature"
CHECK_PRODUCT = "amd_product"
CHECK_VALIDITY = "amd_cert_validity"
CHECK_CRL = CRL_CHECK

_CACHE_SIZE = 256

_KDS_HINT = "fetch the chain from AMD KDS: https://kdsintf.amd.com/{vcek|vlek}/v1/<product>/cert_chain"


@dataclass(frozen=True)
class VerifiedChain:
    leaf: AmdCertificate
    intermediate: AmdCertificate
    ark: AmdCertificate
    # The product line of the pinned ARK (the label in TrustAnchors.amd_arks).
    product: str
    valid_from: datetime
    valid_until: datetime
    # True when the time-independent checks were answered from the cache.
    cached: bool
    # True when a current CRL of the pinned ARK was checked (and did not list the ASK/ASVK).
    crl_checked: bool = False


@dataclass(frozen=True)
class _Links:
    intermediate: AmdCertificate
    ark: AmdCertificate
    product: str
    passed: tuple[tuple[str, str], ...]


_cache: OrderedDict[tuple[object, ...], _Links] = OrderedDict()
_cache_lock = threading.Lock()


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


def issued_by(child: AmdCertificate, issuer: AmdCertificate) -> str | None:
    """Why ``issuer`` did not sign ``child`` (None when it did): name chaining and the RSA-PSS signature."""
    if child.x509_certificate is not None and issuer.x509_certificate is not None:
        try:
            child.x509_certificate.verify_directly_issued_by(issuer.x509_certificate)
        except InvalidSignature:
            return "the signature does not verify"
        except Exception as exc:  # any other refusal (mismatched or unsupported algorithms) is a "no" too
            return str(exc) or type(exc).__name__
        return None
    # The leaf was read by the fallback; check what verify_directly_issued_by checks, by hand.
    if child.issuer_name != issuer.subject_name:
        return f"its issuer is {child.issuer_cn!r}, not {issuer.subject_cn!r}"
    if not isinstance(issuer.public_key, rsa.RSAPublicKey):
        return f"{issuer.label} has no RSA key"
    if child.signature_algorithm != child.tbs_signature_algorithm:
        # RFC 5280 §4.1.1.2; a flipped byte in the inner copy is the upstream "chain invalid" vector.
        return "the signature algorithm inside the TBS differs from the one outside it"
    try:
        if child.signature_algorithm is not None:
            fallback.check_pss_sha384(child.signature_algorithm)
        fallback.verify_pss_sha384(issuer.public_key, child.signature, child.tbs)
    except InvalidSignature:
        return "the signature does not verify"
    except (DerError, ValueError, UnsupportedAlgorithm) as exc:
        return str(exc) or type(exc).__name__
    return None


def _links(certs: SnpCertificates, anchors: TrustAnchors, log: CheckLog) -> _Links:
    passed: list[tuple[str, str]] = []

    def ok(name: str, detail: str) -> None:
        log.passed(name, detail)
        passed.append((name, detail))

    leaf = certs.leaf
    wanted = "asvk" if leaf.role == "vlek" else "ask"
    intermediate = certs.intermediate()
    if intermediate is None:
        log.fail(
            CHECK_INTERMEDIATE_KIND, f"no {wanted.upper()} to check the {leaf.label} with", hint=_KDS_HINT
        )
    if intermediate.role != wanted:
        log.fail(
            CHECK_INTERMEDIATE_KIND,
            f"a {leaf.role.upper()} is signed by an {wanted.upper()}; the chain has the {intermediate.label}",
            hint=f"use the {leaf.role} cert_chain of AMD KDS, not the {intermediate.role} one",
        )
    ok(CHECK_INTERMEDIATE_KIND, f"{leaf.label} goes with {intermediate.label}")

    ark = certs.ark(intermediate)
    if ark is None:
        log.fail(CHECK_ARK_PINNED, "no ARK among the certificates", hint=_KDS_HINT)
    product = anchors.amd_arks.get(ark.fingerprint)
    if product is None:
        log.fail(
            CHECK_ARK_PINNED,
            f"{ark.label} (sha256 {ark.fingerprint}) is not a pinned AMD root",
            hint="the chain must end in AMD's ARK; a damaged or substituted root is refused",
        )
    ok(CHECK_ARK_PINNED, f"{ark.label} is the pinned {product} ARK (sha256 {ark.fingerprint[:16]}…)")

    why = issued_by(ark, ark)
    if why is not None:
        log.fail(CHECK_ARK_SIGNATURE, f"{ark.label} is not validly self-signed: {why}")
    ok(CHECK_ARK_SIGNATURE, f"{ark.label} is self-signed")

    why = issued_by(intermediate, ark)
    if why is not None:
        log.fail(CHECK_INTERMEDIATE_SIGNATURE, f"{intermediate.label} was not signed by {ark.label}: {why}")
    ok(CHECK_INTERMEDIATE_SIGNATURE, f"{intermediate.label} is signed by {ark.label}")

    why = issued_by(leaf, intermediate)
    if why is not None:
        log.fail(
            CHECK_LEAF_SIGNATURE,
            f"{leaf.label} was not signed by {intermediate.label}: {why}",
            hint="the VCEK/VLEK is damaged or belongs to another chain",
        )
    ok(CHECK_LEAF_SIGNATURE, f"{leaf.label} is signed by {intermediate.label} (read with {leaf.parsed_with})")

    wrong = [cert.label for cert in (ark, intermediate, leaf) if cert.product != product]
    if wrong:
        log.fail(
            CHECK_PRODUCT, f"the pinned ARK is {product}'s, but {', '.join(wrong)} names another product"
        )
    name = leaf.vek.product_name if leaf.vek else leaf.product
    ok(CHECK_PRODUCT, f"{product}: ARK, {intermediate.role.upper()} and {leaf.role.upper()} ({name}) agree")
    return _Links(intermediate, ark, product, tuple(passed))


def _check_revocation(crls: tuple[AmdCrl, ...], links: _Links, at: datetime, log: CheckLog) -> bool:
    """The ASK/ASVK against every supplied CRL of the pinned ARK (CRLs of other issuers are not this chain's)."""
    ark, intermediate = links.ark, links.intermediate
    mine = [crl for crl in crls if crl.issuer_name == ark.subject_name]
    kind = "vlek" if intermediate.role == "asvk" else "vcek"
    where = f"https://kdsintf.amd.com/{kind}/v1/{links.product}/crl"
    if not mine:
        log.passed(
            CHECK_CRL,
            f"not checked: no CRL of {ark.label} was supplied (AMD publishes it at {where}; give it with "
            "the certificates)",
        )
        return False
    serial = certificate_serial(intermediate.tbs)
    for crl in mine:
        if not crl.signed_by(ark.public_key):
            log.fail(CHECK_CRL, f"the CRL naming {crl.issuer_cn} as its issuer is not signed by {ark.label}")
        if at < crl.this_update or (crl.next_update is not None and at > crl.next_update):
            log.fail(
                CHECK_CRL,
                f"the CRL of {ark.label} is not current at {isoformat(at)}: issued {isoformat(crl.this_update)}"
                + (f", next update due {isoformat(crl.next_update)}" if crl.next_update else ""),
                hint=f"fetch the current CRL from {where}",
            )
        if serial in crl.revoked:
            log.fail(
                CHECK_CRL,
                f"{intermediate.label} (serial {serial:#x}) is revoked by AMD (CRL of {ark.label}, "
                f"issued {isoformat(crl.this_update)})",
            )
    newest = max(mine, key=lambda crl: crl.this_update)
    log.passed(
        CHECK_CRL,
        f"{intermediate.label} is not revoked (CRL of {ark.label}, issued {isoformat(newest.this_update)}, "
        f"{len(newest.revoked)} revoked serials)",
    )
    return True


def check_inputs(certs: object, at: object, anchors: object, log: CheckLog) -> None:
    if not isinstance(at, datetime):
        log.fail(CHECK_INPUT, f"the verification time is a datetime, got {type(at).__name__}")
    if not isinstance(certs, SnpCertificates):
        log.fail(CHECK_INPUT, f"certificates are SnpCertificates, got {type(certs).__name__}")
    if not isinstance(anchors, TrustAnchors):
        log.fail(CHECK_INPUT, f"trust anchors are TrustAnchors, got {type(anchors).__name__}")


def _cache_key(certs: SnpCertificates, anchors: TrustAnchors) -> tuple[object, ...]:
    return (
        tuple(sorted(cert.der for cert in certs.certificates)),
        frozenset(anchors.amd_arks.items()),
    )


def verify_snp_chain(
    certs: SnpCertificates, *, at: datetime, anchors: TrustAnchors, log: CheckLog | None = None
) -> VerifiedChain:
    """Verify the chain of ``certs`` at time ``at`` (naive = UTC). Raises VerificationError; every check
    made is recorded in ``log``."""
    log = log if log is not None else CheckLog()
    check_inputs(certs, at, anchors, log)
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    key = _cache_key(certs, anchors)
    with _cache_lock:
        links = _cache.get(key)
        if links is not None:
            _cache.move_to_end(key)
    cached = links is not None
    if links is not None:
        for name, detail in links.passed:
            log.passed(name, f"{detail} (cached)")
    else:
        links = _links(certs, anchors, log)
        with _cache_lock:
            _cache[key] = links
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)

    chain = (links.ark, links.intermediate, certs.leaf)
    for cert in chain:
        if not cert.not_before <= at <= cert.not_after:
            state = "is not yet valid" if at < cert.not_before else "has expired"
            log.fail(
                CHECK_VALIDITY,
                f"{cert.label} {state}: valid {isoformat(cert.not_before)} to {isoformat(cert.not_after)}, "
                f"checked at {isoformat(at)}",
                hint="fetch a current certificate from AMD KDS" if state == "has expired" else None,
            )
    valid_from = max(cert.not_before for cert in chain)
    valid_until = min(cert.not_after for cert in chain)
    log.passed(
        CHECK_VALIDITY,
        f"all three certificates valid at {isoformat(at)} ({isoformat(valid_until)} at the latest)",
    )
    crl_checked = _check_revocation(certs.crls, links, at, log)
    return VerifiedChain(
        leaf=certs.leaf,
        intermediate=links.intermediate,
        ark=links.ark,
        product=links.product,
        valid_from=valid_from,
        valid_until=valid_until,
        cached=cached,
        crl_checked=crl_checked,
    )
