"""Inside a confidential VM: evidence from configfs-tsm or ``/dev/sev-guest``, and sealing keys on SNP.

Evidence: configfs-tsm first (SNP report or TDX quote, whichever provider the guest has); on SNP guests whose
kernel predates it (< 6.7), ``SNP_GET_REPORT`` on ``/dev/sev-guest``. An SNP report travels with its
certificates: the host's ``auxblob`` when it gave one, else the VCEK fetched from AMD KDS (cached). A TDX guest
without configfs-tsm cannot produce a quote (``/dev/tdx_guest`` only gives a locally MAC'ed TDREPORT).

Sealing: on SNP, ``SNP_GET_DERIVED_KEY`` rooted in the chip's VCEK with the launch MEASUREMENT and the guest
POLICY mixed in (the policy holds the DEBUG bit, so a debug launch of the same image derives another key),
then HKDF. TDX has no sealing key at all: keys come from the key broker after attestation.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

from teelab.enclave_runtime.backend import (
    REPORT_DATA_SIZE,
    Evidence,
    EvidenceKind,
    SealPolicy,
    TeeRuntime,
    check_report_data,
)
from teelab.enclave_runtime.controller import controller_from_field
from teelab.enclave_runtime.cvm.kds import KdsClient
from teelab.enclave_runtime.cvm.sevguest import (
    FIELD_GUEST_POLICY,
    FIELD_MEASUREMENT,
    SNP_REPORT_SIZE,
    SevGuest,
)
from teelab.enclave_runtime.cvm.tsm import ConfigfsTsm, TsmFiles
from teelab.enclave_runtime.gramine.runtime import derive_sealing_key
from teelab.enclave_runtime.occlum.ioctl import IoctlFn
from teelab.errors import EvidenceError, PlatformError

TDX_GUEST = "/dev/tdx_guest"
_KINDS = {"sev_guest": EvidenceKind.SNP_REPORT, "tdx_guest": EvidenceKind.TDX_QUOTE}
SNP_HOST_DATA = slice(0xC0, 0xE0)  # in the SNP attestation report
TDX_MRCONFIGID = (184, 232)  # in a TDX quote's TD report body


def tdx_quote_report_data(quote: bytes) -> bytes | None:
    """REPORTDATA of a TDX quote v4 (body at 48) or v5 (body at 54), or None."""
    if len(quote) < 48:
        return None
    version, key_type, tee_type = struct.unpack_from("<HHI", quote)
    if key_type != 2 or tee_type != 0x81:
        return None
    body = {4: 48, 5: 54}.get(version)
    if body is None or len(quote) < body + 584:
        return None
    return quote[body + 520 : body + 584]


class CvmRuntime(TeeRuntime):
    backend = "cvm"

    def __init__(
        self,
        root: Path = Path("/"),
        *,
        tsm_files: TsmFiles | None = None,
        ioctl: IoctlFn | None = None,
        kds: KdsClient | None = None,
        snp_product: str | None = None,
    ) -> None:
        self.root = root
        self.tsm = ConfigfsTsm(root, files=tsm_files)
        self.sev = SevGuest(root, ioctl=ioctl)
        self._kds = kds
        self.snp_product = snp_product or os.environ.get("TEELAB_SNP_PRODUCT") or None

    @classmethod
    def detect(cls, root: Path = Path("/")) -> bool:
        return any(
            (root / p.lstrip("/")).exists()
            for p in ("/sys/kernel/config/tsm/report", "/dev/sev-guest", TDX_GUEST)
        )

    @property
    def kds(self) -> KdsClient:
        if self._kds is None:
            self._kds = KdsClient()
        return self._kds

    def guest_kind(self) -> str:
        """``sev_guest`` or ``tdx_guest``, from the devices the guest kernel exposes."""
        if self.sev.available():
            return "sev_guest"
        if (self.root / TDX_GUEST.lstrip("/")).exists():
            return "tdx_guest"
        if self.tsm.available():
            return ""  # configfs-tsm names its provider per report
        raise EvidenceError(
            "this process is not inside a confidential VM: no configfs-tsm, /dev/sev-guest or /dev/tdx_guest",
            hint="`teelab doctor` says what this machine can run",
        )

    def evidence(self, report_data: bytes) -> Evidence:
        check_report_data(report_data)
        kind = self.guest_kind()
        if self.tsm.available():
            report = self.tsm.report(report_data, provider=kind or None)
            evidence = _KINDS[report.provider]
            blob = report.outblob
            certificates = report.auxblob
        elif kind == "sev_guest":
            evidence, blob, certificates = EvidenceKind.SNP_REPORT, self.sev.report(report_data), None
        else:
            raise EvidenceError(
                "this TDX guest has no configfs-tsm: a TDX quote needs Linux ≥ 6.7 with CONFIG_TSM_REPORTS "
                "(/dev/tdx_guest only gives a TDREPORT, which cannot be verified remotely)",
                hint="mount configfs at /sys/kernel/config and use a 6.7+ guest kernel",
            )
        if evidence is EvidenceKind.SNP_REPORT:
            if len(blob) < SNP_REPORT_SIZE:
                raise EvidenceError(f"the SNP report is {len(blob)} bytes; a report is {SNP_REPORT_SIZE}")
            blob = blob[:SNP_REPORT_SIZE]
            if blob[0x50:0x90] != report_data:
                raise EvidenceError("the SNP report carries other report data than was asked for")
            if certificates is None:
                certificates = self._certificates(blob)
        elif tdx_quote_report_data(blob) != report_data:
            raise EvidenceError("the TDX quote does not carry the report data that was asked for")
        return Evidence(evidence, blob, certificates)

    def controller(self) -> bytes | None:
        """HOST_DATA (SEV-SNP) or MRCONFIGID (TDX) of a report of this guest: set by the VMM when it created the
        VM, the same in every report (the report data asked for here does not matter)."""
        kind = self.guest_kind()
        probe = bytes(REPORT_DATA_SIZE)
        if self.tsm.available():
            report = self.tsm.report(probe, provider=kind or None)
            provider, blob = report.provider, report.outblob
        elif kind == "sev_guest":
            provider, blob = kind, self.sev.report(probe)
        else:
            raise EvidenceError("this TDX guest has no configfs-tsm: it cannot read its own MRCONFIGID")
        if provider == "sev_guest":
            if len(blob) < SNP_REPORT_SIZE:
                raise EvidenceError(f"the SNP report is {len(blob)} bytes; a report is {SNP_REPORT_SIZE}")
            return controller_from_field(blob[SNP_HOST_DATA])
        if tdx_quote_report_data(blob) is None:
            raise EvidenceError("configfs-tsm returned something that is not a TDX quote")
        body = {4: 48, 5: 54}[struct.unpack_from("<H", blob)[0]]
        start, end = TDX_MRCONFIGID
        return controller_from_field(blob[body + start : body + end])

    def confine(self, private_dirs: Iterable[str] = ()) -> Callable[[bytes], Evidence] | None:
        """Only the boot (root) reads the guest's attestation device: split off the root agent, give the
        kernel's folders to its user (``TEELAB_KERNEL_USER``, default nobody) and drop to it."""
        from teelab.enclave_runtime.cvm.privileges import (
            DEFAULT_KERNEL_USER,
            KERNEL_USER_ENV,
            KernelUser,
            split_privileges,
        )

        user = KernelUser.named(os.environ.get(KERNEL_USER_ENV) or DEFAULT_KERNEL_USER)
        for folder in private_dirs:
            if os.path.isdir(folder):
                os.chown(folder, user.uid, user.gid)
        return split_privileges(self, user).evidence

    def _certificates(self, report: bytes) -> bytes:
        try:
            return self.kds.certificate_table(report, self.snp_product)
        except PlatformError as error:
            raise EvidenceError(
                f"the host gave no SNP certificates (auxblob) and the VCEK could not be fetched: {error.message}",
                hint="give the guest access to kdsintf.amd.com, or have the host provide certificates",
            ) from None

    def sealing_key(self, policy: SealPolicy = SealPolicy.MRENCLAVE, *, label: bytes = b"") -> bytes:
        kind = self.guest_kind()
        if kind == "tdx_guest":
            raise EvidenceError(
                "TDX has no sealing key: a TD cannot derive a key bound to its measurement",
                hint="keys for a TDX kernel come only from the key broker, after it verified the TD's quote",
            )
        if kind != "sev_guest":
            raise EvidenceError(
                "no sealing key here: SNP keys need /dev/sev-guest (configfs-tsm has no key interface), and on "
                "TDX keys come only from the key broker"
            )
        if policy is not SealPolicy.MRENCLAVE:
            raise EvidenceError(
                "SEV-SNP has no signer identity to seal to (MRSIGNER); seal to the launch measurement instead"
            )
        raw = self.sev.derived_key(field_select=FIELD_MEASUREMENT | FIELD_GUEST_POLICY)
        return derive_sealing_key(raw, backend="snp", policy=policy, label=label)
