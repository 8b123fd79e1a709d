"""Intel collateral for SGX and TDX quotes, from a PCCS (or Intel's PCS) with an on-disk cache.

A quote is verified against the TCB info for its platform's FMSPC, the QE identity, the PCK CRL of the CA that
issued its PCK certificate, and the root CA CRL (ARCHITECTURE §5). This module reads the FMSPC and CA from the
quote's own PCK certificate, fetches those documents with the PCS v4 API, and keeps them in a folder that
``teelab.gateway`` loads as collateral ("a folder of PCS files"). A cached set is reused while every document in
it is still valid at the time asked about; the documents are signed, so the cache needs no protection.

Where the PCCS is: ``TEELAB_PCCS_URL``, else ``pccs_url`` in ``/etc/sgx_default_qcnl.conf`` (the same setting
Intel's quote provider uses), else Intel's PCS.
"""

from __future__ import annotations

import json
import os
import re
import struct
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from teelab.enclave_runtime.cvm.http import Fetcher, get, urllib_fetcher
from teelab.errors import EvidenceError, PlatformError
from teelab.files import replace_atomically
from teelab.paths import cache_dir

IntelTee = Literal["sgx", "tdx"]
PckCa = Literal["processor", "platform"]
INTEL_PCS = "https://api.trustedservices.intel.com"
INTEL_ROOT_CA_CRL = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"
QCNL_CONFIG = "/etc/sgx_default_qcnl.conf"
SGX_EXTENSION_OID = x509.ObjectIdentifier("1.2.840.113741.1.13.1")
# DER of OID 1.2.840.113741.1.13.1.4 (FMSPC) followed by the OCTET STRING header of its 6-byte value.
_FMSPC_MARKER = bytes.fromhex("060a2a864886f84d010d0104" + "0406")
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----")
_TEE_TYPES: dict[int, IntelTee] = {0x00: "sgx", 0x81: "tdx"}
FILES = (
    "tcb_info.json",
    "tcb_info_issuer_chain.pem",
    "qe_identity.json",
    "qe_identity_issuer_chain.pem",
    "pck_crl.der",
    "pck_crl_issuer_chain.pem",
    "root_ca_crl.der",
)


@dataclass(frozen=True)
class QuotePlatform:
    """What a quote says about where its collateral comes from."""

    tee: IntelTee
    fmspc: bytes
    ca: PckCa

    @property
    def key(self) -> str:
        return f"{self.tee}-{self.fmspc.hex()}-{self.ca}"


def quote_platform(quote: bytes) -> QuotePlatform:
    """The TEE, FMSPC and PCK CA of a quote, from its header and embedded PCK certificate (type 5 data)."""
    if len(quote) < 48:
        raise EvidenceError(f"a {len(quote)}-byte quote is too short to hold a header")
    version, key_type, tee_type = struct.unpack_from("<HHI", quote)
    tee = _TEE_TYPES.get(tee_type if version >= 4 else 0)
    if not 3 <= version <= 5 or key_type != 2 or tee is None:
        raise EvidenceError(
            f"not an Intel ECDSA quote (version {version}, key type {key_type}, TEE {tee_type:#x})"
        )
    pems = _PEM_CERT.findall(quote)
    if not pems:
        raise EvidenceError(
            "the quote embeds no PCK certificate chain (certification data type 5), so its FMSPC is unknown"
        )
    try:
        leaf = x509.load_pem_x509_certificate(pems[0])
        raw = leaf.extensions.get_extension_for_oid(SGX_EXTENSION_OID).value
        issuer = " ".join(str(a.value) for a in leaf.issuer.get_attributes_for_oid(NameOID.COMMON_NAME))
    except x509.ExtensionNotFound:
        raise EvidenceError("the quote's PCK certificate has no SGX extension") from None
    except Exception as error:
        # Hostile bytes: cryptography raises several types for a malformed certificate, some of them only
        # when a field is first read. This code runs before any verification, so all of them are evidence
        # errors here; the verifier itself judges the certificate afterwards.
        raise EvidenceError(f"the quote's PCK certificate cannot be read: {type(error).__name__}") from None
    data = raw.value if isinstance(raw, x509.UnrecognizedExtension) else b""
    at = data.find(_FMSPC_MARKER)
    if at < 0 or len(data) < at + len(_FMSPC_MARKER) + 6:
        raise EvidenceError("the quote's PCK certificate has no FMSPC in its SGX extension")
    fmspc = data[at + len(_FMSPC_MARKER) : at + len(_FMSPC_MARKER) + 6]
    ca: PckCa = "platform" if "Platform" in issuer else "processor"
    return QuotePlatform(tee, fmspc, ca)


def configured_pccs(root: Path = Path("/"), env: dict[str, str] | None = None) -> tuple[str, bool]:
    """(base URL, verify TLS) of the PCCS this host's quote provider uses."""
    env = dict(os.environ) if env is None else env
    if env.get("TEELAB_PCCS_URL"):
        return _base(env["TEELAB_PCCS_URL"]), env.get("TEELAB_PCCS_VERIFY_TLS", "1") != "0"
    try:
        text = (root / QCNL_CONFIG.lstrip("/")).read_text()
    except OSError:
        return INTEL_PCS, True
    try:
        document = json.loads(text)  # DCAP ≥ 1.15 writes JSON
        url = document.get("pccs_url") if isinstance(document, dict) else None
        secure = document.get("use_secure_cert", True) if isinstance(document, dict) else True
    except ValueError:  # older key=value format
        values = dict(
            line.split("=", 1)
            for line in text.splitlines()
            if "=" in line and not line.lstrip().startswith("#")
        )
        url = values.get("PCCS_URL", "").strip() or None
        secure = values.get("USE_SECURE_CERT", "TRUE").strip().upper() != "FALSE"
    return (_base(str(url)) if url else INTEL_PCS), bool(secure)


def _base(url: str) -> str:
    """``https://host:8081/sgx/certification/v4/`` → ``https://host:8081``."""
    parsed = urllib.parse.urlsplit(url.strip())
    if parsed.scheme not in ("https", "http") or not parsed.netloc:
        raise PlatformError(f"the PCCS URL {url!r} is not an http(s) URL")
    return f"{parsed.scheme}://{parsed.netloc}"


def _chain(response_header: str | None, what: str) -> bytes:
    if not response_header:
        raise PlatformError(f"{what}: the PCCS sent no issuer chain header")
    return urllib.parse.unquote(response_header).encode()


def _next_updates(folder: Path) -> list[datetime]:
    found = []
    for name, key in (("tcb_info.json", "tcbInfo"), ("qe_identity.json", "enclaveIdentity")):
        document = json.loads((folder / name).read_text())
        found.append(datetime.fromisoformat(str(document[key]["nextUpdate"]).replace("Z", "+00:00")))
    for name in ("pck_crl.der", "root_ca_crl.der"):
        crl = x509.load_der_x509_crl((folder / name).read_bytes())
        if crl.next_update_utc is not None:
            found.append(crl.next_update_utc)
    return found


def _crl_der(body: bytes) -> bytes:
    # PCCS versions answer with DER, PEM or the hex of DER; the verifier's folder reader wants one of the first two.
    text = body.strip()
    if re.fullmatch(rb"[0-9a-fA-F]+", text or b"-"):
        return bytes.fromhex(text.decode())
    if text.startswith(b"-----BEGIN"):
        return x509.load_pem_x509_crl(text).public_bytes(Encoding.DER)
    return body


class PccsClient:
    """Fetches and caches Intel collateral; one folder per (TEE, FMSPC, PCK CA)."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        cache: Path | None = None,
        fetcher: Fetcher | None = None,
        verify_tls: bool = True,
    ) -> None:
        if base_url is None:
            base_url, verify_tls = configured_pccs()
        self.base_url = _base(base_url)
        self.cache = cache or cache_dir() / "intel-collateral"
        self.fetch = fetcher or urllib_fetcher(verify_tls=verify_tls)

    def folder(self, platform: QuotePlatform) -> Path:
        return self.cache / platform.key

    def is_fresh(self, platform: QuotePlatform, at: datetime) -> bool:
        folder = self.folder(platform)
        try:
            return all(at < moment for moment in _next_updates(folder))
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def collateral(self, platform: QuotePlatform, at: datetime) -> Path:
        """The folder of collateral for ``platform``, fetched unless a copy valid at ``at`` is cached."""
        at = at if at.tzinfo else at.replace(tzinfo=UTC)
        if self.is_fresh(platform, at):
            return self.folder(platform)
        documents = self._download(platform)
        folder = self.folder(platform)
        folder.mkdir(parents=True, exist_ok=True, mode=0o755)
        for name, data in documents.items():
            replace_atomically(folder / name, data, mode=0o644)
        return folder

    def collateral_for_quote(self, quote: bytes, at: datetime) -> Path:
        return self.collateral(quote_platform(quote), at)

    def _download(self, platform: QuotePlatform) -> dict[str, bytes]:
        tee, fmspc = platform.tee, platform.fmspc.hex().upper()
        base = self.base_url
        tcb = get(self.fetch, f"{base}/{tee}/certification/v4/tcb?fmspc={fmspc}", "TCB info")
        qe = get(self.fetch, f"{base}/{tee}/certification/v4/qe/identity", "QE identity")
        crl = get(self.fetch, f"{base}/sgx/certification/v4/pckcrl?ca={platform.ca}&encoding=der", "PCK CRL")
        # Intel's PCS serves the root CA CRL from its certificate site; a PCCS serves it itself.
        root_url = INTEL_ROOT_CA_CRL if base == INTEL_PCS else f"{base}/sgx/certification/v4/rootcacrl"
        root = get(self.fetch, root_url, "root CA CRL")
        return {
            "tcb_info.json": tcb.body,
            "tcb_info_issuer_chain.pem": _chain(
                tcb.header("TCB-Info-Issuer-Chain") or tcb.header("SGX-TCB-Info-Issuer-Chain"), "TCB info"
            ),
            "qe_identity.json": qe.body,
            "qe_identity_issuer_chain.pem": _chain(
                qe.header("SGX-Enclave-Identity-Issuer-Chain"), "QE identity"
            ),
            "pck_crl.der": _crl_der(crl.body),
            "pck_crl_issuer_chain.pem": _chain(crl.header("SGX-PCK-CRL-Issuer-Chain"), "PCK CRL"),
            "root_ca_crl.der": _crl_der(root.body),
        }
