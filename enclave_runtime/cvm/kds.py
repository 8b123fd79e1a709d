"""AMD's VCEK for an SNP report, from AMD's Key Distribution Service, with an on-disk cache.

When the host puts no certificates in configfs-tsm's ``auxblob``, the guest fetches the VCEK that matches its
report — chip id and REPORTED_TCB (the verifier demands the VCEK's SPLs equal REPORTED_TCB) — and the ASK/ARK
chain of the product, and hands them on as an SNP certificate table, the same format the host would have given.
Certificates are public and signed by AMD, so caching them needs no protection; KDS rate-limits, so the cache
is what keeps repeated sessions fast.

URL: ``https://kdsintf.amd.com/vcek/v1/{product}/{hwid}?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..`` (Turin adds
``fmcSPL`` and uses an 8-byte hwid); chain: ``https://kdsintf.amd.com/vcek/v1/{product}/cert_chain``; the ARK's
CRL: ``https://kdsintf.amd.com/vcek/v1/{product}/crl``, kept until its next update is due. The CRL is best
effort: when KDS cannot be reached the table goes without it, and the verifier says revocation was not
checked (a policy with ``snp.require_crl`` then refuses).
"""

from __future__ import annotations

import re
import struct
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from teelab.enclave_runtime.cvm.http import Fetcher, get, urllib_fetcher
from teelab.errors import EvidenceError, PlatformError
from teelab.files import replace_atomically
from teelab.paths import cache_dir
from teelab.timeutil import utcnow

KDS = "https://kdsintf.amd.com"
PRODUCTS = ("Milan", "Genoa", "Turin")
# GUIDs of the GHCB certificate table (AMD's GHCB spec; the same table configfs-tsm's auxblob holds).
VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
ASK_GUID = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
ARK_GUID = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
CRL_GUID = uuid.UUID("92f81bc3-5811-4d3d-97ff-d19f88dc67ea")
_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----")
SNP_REPORT_SIZE = 0x4A0
# After KDS gave no usable CRL, how long the guest goes without one before asking again.
CRL_RETRY = timedelta(minutes=10)


@dataclass(frozen=True)
class ChipTcb:
    product: str
    hwid: str
    bl: int
    tee: int
    snp: int
    ucode: int
    fmc: int | None = None

    def vcek_url(self, base: str = KDS) -> str:
        query = f"blSPL={self.bl}&teeSPL={self.tee}&snpSPL={self.snp}&ucodeSPL={self.ucode}"
        if self.fmc is not None:
            query = f"fmcSPL={self.fmc}&" + query
        return f"{base}/vcek/v1/{self.product}/{self.hwid}?{query}"

    @property
    def cache_name(self) -> str:
        fmc = "" if self.fmc is None else f"-fmc{self.fmc}"
        return (
            f"{self.product}-{self.hwid[:32]}-bl{self.bl}-tee{self.tee}-snp{self.snp}-uc{self.ucode}{fmc}.der"
        )


def product_of(report: bytes) -> str | None:
    """The processor line from a v3+ report's CPUID fields; None for v2 reports, which do not carry it."""
    (version,) = struct.unpack_from("<I", report)
    if version < 3:
        return None
    family, model = report[0x188], report[0x189]
    if family == 0x19:
        return "Milan" if model < 0x10 else "Genoa"
    if family == 0x1A:
        return "Turin"
    return None


def chip_tcb(report: bytes, product: str) -> ChipTcb:
    """Chip id and REPORTED_TCB of a report, in KDS's terms for ``product``."""
    if len(report) < SNP_REPORT_SIZE:
        raise EvidenceError(f"a {len(report)}-byte SNP report is too short")
    if product not in PRODUCTS:
        raise EvidenceError(f"unknown SEV-SNP product {product!r}; one of {', '.join(PRODUCTS)}")
    tcb = report[0x180:0x188]
    chip = report[0x1A0:0x1E0]
    if product == "Turin":  # TCB bytes [fmc, bl, tee, snp, 0, 0, 0, ucode]; an 8-byte hwid
        return ChipTcb(product, chip[:8].hex(), tcb[1], tcb[2], tcb[3], tcb[7], fmc=tcb[0])
    return ChipTcb(product, chip.hex(), tcb[0], tcb[1], tcb[6], tcb[7])


def build_cert_table(entries: list[tuple[uuid.UUID, bytes]]) -> bytes:
    """A GHCB certificate table: 24-byte entries (GUID, offset u32, length u32), a zero entry, the data."""
    header_size = 24 * (len(entries) + 1)
    header = b""
    body = b""
    for guid, data in entries:
        header += guid.bytes + struct.pack("<II", header_size + len(body), len(data))
        body += data
    return header + bytes(24) + body


def _crl_current(data: bytes, at: datetime) -> bool:
    """A DER CRL not past its next update (its signature is the verifier's to judge, against the pinned ARK)."""
    from cryptography import x509

    try:
        crl = x509.load_der_x509_crl(data)
        next_update = crl.next_update_utc
        return crl.last_update_utc <= at and (next_update is None or at < next_update)
    except Exception:  # whatever KDS (or whoever answered) sent is not a usable CRL
        return False


def _pem_to_der(pem: bytes) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


class KdsClient:
    def __init__(self, *, cache: Path | None = None, fetcher: Fetcher | None = None, base: str = KDS) -> None:
        self.cache = cache or cache_dir() / "amd-kds"
        self.fetch = fetcher or urllib_fetcher()
        self.base = base
        self._crl_unavailable_since: dict[str, datetime] = {}

    def _cached(self, name: str, url: str, what: str) -> bytes:
        path = self.cache / name
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pass
        data = get(self.fetch, url, what).body
        self.cache.mkdir(parents=True, exist_ok=True, mode=0o755)
        replace_atomically(path, data, mode=0o644)
        return data

    def vcek(self, tcb: ChipTcb) -> bytes:
        return self._cached(tcb.cache_name, tcb.vcek_url(self.base), "VCEK")

    def chain(self, product: str) -> tuple[bytes, bytes]:
        """(ASK, ARK) DER certificates of ``product``."""
        pem = self._cached(
            f"{product}-cert_chain.pem", f"{self.base}/vcek/v1/{product}/cert_chain", "ASK/ARK"
        )
        blocks = _PEM.findall(pem)
        if len(blocks) != 2:
            raise PlatformError(
                f"AMD's {product} certificate chain has {len(blocks)} certificates, not ASK and ARK"
            )
        return _pem_to_der(blocks[0]), _pem_to_der(blocks[1])

    def crl(self, product: str, *, now: datetime | None = None) -> bytes | None:
        """AMD's CRL for ``product`` (DER): the cached one while current, else a fresh one; None when neither."""
        path = self.cache / f"{product}.crl"
        at = now or utcnow()
        try:
            cached: bytes | None = path.read_bytes()
        except OSError:
            cached = None
        if cached is not None and _crl_current(cached, at):
            return cached
        failed = self._crl_unavailable_since.get(product)
        if failed is not None and timedelta(0) <= at - failed < CRL_RETRY:
            return None  # KDS rate-limits: do not ask again at every session start
        try:
            data = get(self.fetch, f"{self.base}/vcek/v1/{product}/crl", "AMD CRL").body
        except PlatformError:
            data = b""
        if not _crl_current(data, at):
            self._crl_unavailable_since[product] = at
            return None
        self._crl_unavailable_since.pop(product, None)
        self.cache.mkdir(parents=True, exist_ok=True, mode=0o755)
        replace_atomically(path, data, mode=0o644)
        return data

    def certificate_table(self, report: bytes, product: str | None = None) -> bytes:
        product = product or product_of(report)
        if product is None:
            raise EvidenceError(
                "this SNP report (version 2) does not say which processor line it comes from",
                hint="set TEELAB_SNP_PRODUCT to Milan, Genoa or Turin",
            )
        tcb = chip_tcb(report, product)
        ask, ark = self.chain(product)
        entries = [(VCEK_GUID, self.vcek(tcb)), (ASK_GUID, ask), (ARK_GUID, ark)]
        crl = self.crl(product)
        return build_cert_table(entries + ([(CRL_GUID, crl)] if crl is not None else []))
