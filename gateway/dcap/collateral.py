"""Intel DCAP collateral: TCB infos, QE identities, CRLs and their issuer chains, parsed once.

Two sources, both recognised by content:

* a folder of Intel PCS-style files (TCB info and QE identity response bodies, CRLs in DER or PEM, PEM issuer
  chains, root and PCK certificates) — file names do not matter, unrecognised files are listed in ``skipped``;
* a JSON bundle in dcap-qvl's ``QuoteCollateralV3`` shape, which is also teelab's bundle format
  (:meth:`IntelCollateral.to_bundle_json`).

A collateral may hold TCB infos for several platforms (FMSPCs) and both QE identities (SGX ``QE`` and TDX
``TD_QE``); verification picks what a quote needs. Signatures are checked at verification time, over the exact
signed bytes kept here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Generic, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from teelab.errors import VerificationError
from teelab.gateway.dcap import jsondoc as j
from teelab.gateway.dcap.guard import verification_errors_only
from teelab.gateway.dcap.jsondoc import DocError
from teelab.gateway.dcap.pem import PARSE_ERRORS, load_certificates, load_crl, to_pem
from teelab.gateway.dcap.qeidentity import EnclaveIdentity, parse_enclave_identity
from teelab.gateway.dcap.tcbinfo import TcbInfo, parse_tcb_info

CHECK = "collateral"
T = TypeVar("T")

# Keys of dcap-qvl's QuoteCollateralV3, in its serialisation order.
BUNDLE_KEYS = (
    "pck_crl_issuer_chain",
    "root_ca_crl",
    "pck_crl",
    "tcb_info_issuer_chain",
    "tcb_info",
    "tcb_info_signature",
    "qe_identity_issuer_chain",
    "qe_identity",
    "qe_identity_signature",
)
QE_IDENTITY_FOR_TEE = {"sgx": "QE", "tdx": "TD_QE"}
TCB_INFO_FOR_TEE = {"sgx": "SGX", "tdx": "TDX"}


def _error(source: str, detail: str) -> VerificationError:
    return VerificationError(
        CHECK, f"{source}: {detail}", hint="fetch the collateral again from Intel PCS or your PCCS"
    )


def is_self_issued(cert: x509.Certificate) -> bool:
    return cert.subject == cert.issuer


def is_ca(cert: x509.Certificate, check: str = CHECK) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False
    except PARSE_ERRORS as exc:
        raise VerificationError(
            check, f"the extensions of {common_name(cert.subject)} cannot be read: {exc}"
        ) from None


def common_name(name: x509.Name) -> str:
    try:
        attrs = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    except ValueError:  # pragma: no cover - defensive against odd encodings
        return name.rfc4514_string()
    value = attrs[0].value if attrs else name.rfc4514_string()
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


@dataclass(frozen=True, eq=False)
class CertChain:
    """An issuer chain as delivered (leaf first)."""

    certs: tuple[x509.Certificate, ...]
    source: str

    @cached_property
    def ders(self) -> tuple[bytes, ...]:
        return tuple(cert.public_bytes(Encoding.DER) for cert in self.certs)

    def pem(self) -> str:
        return to_pem(self.certs)


@dataclass(frozen=True, eq=False)
class SignedDoc(Generic[T]):
    """A signed Intel JSON document: its parsed body, the exact signed bytes, the raw r||s signature."""

    body: T
    text: bytes
    signature: bytes
    issuer_chain: CertChain
    source: str


@dataclass(frozen=True, eq=False)
class Crl:
    der: bytes
    crl: x509.CertificateRevocationList
    revoked: frozenset[int]
    source: str
    issuer_chain: CertChain | None = None

    @cached_property
    def issuer_der(self) -> bytes:
        return self.crl.issuer.public_bytes()

    @cached_property
    def issuer_name(self) -> str:
        return common_name(self.crl.issuer)

    @property
    def this_update(self) -> datetime:
        return self.crl.last_update_utc

    @property
    def next_update(self) -> datetime | None:
        return self.crl.next_update_utc


def make_crl(data: bytes, source: str, issuer_chain: CertChain | None = None) -> Crl:
    crl, revoked = load_crl(data, check=CHECK, what=source)
    if crl.next_update_utc is None:
        raise _error(source, "the CRL has no nextUpdate, so its freshness cannot be judged")
    return Crl(
        der=crl.public_bytes(Encoding.DER),
        crl=crl,
        revoked=revoked,
        source=source,
        issuer_chain=issuer_chain,
    )


def _signature(value: Any, source: str, key: str) -> bytes:
    raw = _bytes_field(value, source, key)
    if len(raw) != 64:
        raise _error(source, f"{key} is {len(raw)} bytes; an ECDSA P-256 signature (r||s) is 64")
    return raw


def _bytes_field(value: Any, source: str, key: str) -> bytes:
    """Bytes as hex text (dcap-qvl's files) or as a list of integers (serde_bytes' JSON form)."""
    if isinstance(value, str):
        try:
            return bytes.fromhex(value)
        except ValueError:
            raise _error(source, f"{key} is not hex") from None
    if isinstance(value, list) and all(isinstance(b, int) and not isinstance(b, bool) for b in value):
        try:
            return bytes(value)
        except ValueError:
            raise _error(source, f"{key} has list items outside 0..255") from None
    raise _error(source, f"{key} must be hex text or a list of byte values")


def _doc(
    parse: Callable[[Any], T], value: Any, text: bytes, signature: bytes, chain: CertChain, source: str
) -> SignedDoc[T]:
    try:
        body = parse(value)
    except DocError as exc:
        raise _error(source, str(exc)) from None
    return SignedDoc(body, text, signature, chain, source)


def _chain(pem: bytes, source: str) -> CertChain:
    return CertChain(load_certificates(pem, check=CHECK, what=source), source)


@dataclass(frozen=True, eq=False)
class IntelCollateral:
    tcb_infos: tuple[SignedDoc[TcbInfo], ...]
    qe_identities: tuple[SignedDoc[EnclaveIdentity], ...]
    root_ca_crl: Crl
    pck_crls: tuple[Crl, ...]
    # PCK certificates and CAs for quotes that do not embed their chain (certification data types 1-4).
    pck_certificates: tuple[x509.Certificate, ...] = ()
    source: str = "collateral"
    skipped: tuple[str, ...] = field(default=())

    # -- selection -------------------------------------------------------------------------------------

    def tcb_info_for(self, tee: str, fmspc: bytes) -> SignedDoc[TcbInfo] | None:
        wanted = TCB_INFO_FOR_TEE[tee]
        for doc in self.tcb_infos:
            if doc.body.id == wanted and doc.body.fmspc == fmspc:
                return doc
        return None

    def qe_identity_for(self, tee: str) -> SignedDoc[EnclaveIdentity] | None:
        wanted = QE_IDENTITY_FOR_TEE[tee]
        for doc in self.qe_identities:
            if doc.body.id == wanted:
                return doc
        return None

    def pck_crl_for(self, issuer_der: bytes) -> Crl | None:
        """The PCK CRL whose issuer name has this DER encoding (that of the PCK CA's subject)."""
        for crl in self.pck_crls:
            if crl.issuer_der == issuer_der:
                return crl
        return None

    @cached_property
    def certificate_pool(self) -> tuple[x509.Certificate, ...]:
        """Every certificate the collateral carries, for completing chains that quotes do not embed."""
        certs: list[x509.Certificate] = list(self.pck_certificates)
        for crl in (self.root_ca_crl, *self.pck_crls):
            if crl.issuer_chain is not None:
                certs.extend(crl.issuer_chain.certs)
        for info in self.tcb_infos:
            certs.extend(info.issuer_chain.certs)
        for identity in self.qe_identities:
            certs.extend(identity.issuer_chain.certs)
        return tuple(certs)

    # -- the JSON bundle -------------------------------------------------------------------------------

    @classmethod
    @verification_errors_only("reading a collateral bundle")
    def from_bundle_json(cls, data: bytes | str, *, source: str = "collateral bundle") -> IntelCollateral:
        """Load a dcap-qvl ``QuoteCollateralV3`` JSON object."""
        try:
            top = j.obj(j.loads(j.decode_text(data)), "the bundle")
        except DocError as exc:
            raise _error(source, str(exc)) from None
        missing = [key for key in BUNDLE_KEYS if key not in top]
        if missing:
            raise _error(source, f"not a dcap-qvl collateral bundle: missing {', '.join(missing)}")
        text: dict[str, str] = {}
        for key in BUNDLE_KEYS:
            if key in ("root_ca_crl", "pck_crl", "tcb_info_signature", "qe_identity_signature"):
                continue
            if not isinstance(top[key], str):
                raise _error(source, f"{key} must be a string")
            text[key] = top[key]

        def pem(key: str) -> CertChain:
            return _chain(text[key].encode("utf-8"), f"{source} {key}")

        def signed(key: str) -> tuple[Any, bytes]:
            try:
                return j.loads(text[key]), text[key].encode("utf-8")
            except DocError as exc:
                raise _error(source, f"{key}: {exc}") from None

        tcb_value, tcb_text = signed("tcb_info")
        qe_value, qe_text = signed("qe_identity")
        tcb_info = _doc(
            parse_tcb_info,
            tcb_value,
            tcb_text,
            _signature(top["tcb_info_signature"], source, "tcb_info_signature"),
            pem("tcb_info_issuer_chain"),
            f"{source} tcb_info",
        )
        qe_identity = _doc(
            parse_enclave_identity,
            qe_value,
            qe_text,
            _signature(top["qe_identity_signature"], source, "qe_identity_signature"),
            pem("qe_identity_issuer_chain"),
            f"{source} qe_identity",
        )
        pck_chain: tuple[x509.Certificate, ...] = ()
        if top.get("pck_certificate_chain") is not None:
            value = top["pck_certificate_chain"]
            if not isinstance(value, str):
                raise _error(source, "pck_certificate_chain must be a string")
            pck_chain = load_certificates(
                value.encode("utf-8"), check=CHECK, what=f"{source} pck_certificate_chain"
            )
        return cls(
            tcb_infos=(tcb_info,),
            qe_identities=(qe_identity,),
            root_ca_crl=make_crl(
                _bytes_field(top["root_ca_crl"], source, "root_ca_crl"), f"{source} root_ca_crl"
            ),
            pck_crls=(
                make_crl(
                    _bytes_field(top["pck_crl"], source, "pck_crl"),
                    f"{source} pck_crl",
                    pem("pck_crl_issuer_chain"),
                ),
            ),
            pck_certificates=pck_chain,
            source=source,
        )

    @verification_errors_only("writing a collateral bundle")
    def to_bundle_json(
        self, *, tee: str | None = None, fmspc: str | None = None, pck_ca: str | None = None
    ) -> str:
        """This collateral as a dcap-qvl ``QuoteCollateralV3`` JSON object.

        A bundle holds one of each document; when this collateral holds more, ``tee`` ("sgx"/"tdx"),
        ``fmspc`` (hex) and ``pck_ca`` (a word of the PCK CA's name, e.g. "Platform") choose.
        """
        infos = [
            d
            for d in self.tcb_infos
            if (tee is None or d.body.id == TCB_INFO_FOR_TEE.get(tee))
            and (fmspc is None or d.body.fmspc.hex() == fmspc.lower())
        ]
        if len(infos) != 1:
            raise _error(
                self.source,
                f"{len(infos)} TCB infos fit (of {len(self.tcb_infos)}); a bundle holds one — "
                "choose with tee= and fmspc=",
            )
        info = infos[0]
        identity = next(
            (d for d in self.qe_identities if d.body.id == ("TD_QE" if info.body.id == "TDX" else "QE")), None
        )
        if identity is None:
            raise _error(self.source, f"no QE identity for the {info.body.id} TCB info")
        crls = [c for c in self.pck_crls if pck_ca is None or pck_ca.lower() in c.issuer_name.lower()]
        if len(crls) != 1:
            raise _error(self.source, f"{len(crls)} PCK CRLs fit; a bundle holds one — choose with pck_ca=")
        crl = crls[0]
        if crl.issuer_chain is None:
            raise _error(self.source, f"the PCK CRL of {crl.issuer_name} has no issuer chain")
        bundle: dict[str, str] = {
            "pck_crl_issuer_chain": crl.issuer_chain.pem(),
            "root_ca_crl": self.root_ca_crl.der.hex(),
            "pck_crl": crl.der.hex(),
            "tcb_info_issuer_chain": info.issuer_chain.pem(),
            "tcb_info": info.text.decode("utf-8"),
            "tcb_info_signature": info.signature.hex(),
            "qe_identity_issuer_chain": identity.issuer_chain.pem(),
            "qe_identity": identity.text.decode("utf-8"),
            "qe_identity_signature": identity.signature.hex(),
        }
        if self.pck_certificates:
            bundle["pck_certificate_chain"] = to_pem(self.pck_certificates)
        return json.dumps(bundle, indent=2) + "\n"

    # -- a folder of PCS files ---------------------------------------------------------------------------

    @classmethod
    @verification_errors_only("reading a collateral folder")
    def from_folder(cls, path: str | Path) -> IntelCollateral:
        # Deferred: the folder reader builds IntelCollateral objects, so it imports this module.
        from teelab.gateway.dcap.folder import load_folder

        return load_folder(Path(path))


__all__ = ["BUNDLE_KEYS", "CertChain", "Crl", "IntelCollateral", "SignedDoc"]
