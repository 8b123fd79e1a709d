"""Collateral for the simulated platform in Intel's document shapes.

TCB info v3 and QE identity v2 JSON signed by the TCB Signing key over their exact text, the root-CA CRL
and the PCK Processor CA CRL — the same documents Intel's PCS serves, with Intel's ~30-day validity, so the
verifier treats them exactly like Intel's. The bundle is dcap-qvl's ``QuoteCollateralV3`` JSON; the folder
form writes one file per document, as PCS responses are usually cached.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from teelab.enclave_runtime.sim.certs import Issued, issue_crl
from teelab.enclave_runtime.sim.sgx_extension import PlatformTcb
from teelab.enclave_runtime.sim.sgx_structs import raw_signature

COLLATERAL_LIFETIME = timedelta(days=30)
TCB_EVALUATION_DATA_NUMBER = 17
SIM_ADVISORY = "TEELAB-SIM-0001"


def _iso(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


@dataclass(frozen=True)
class QeIdentityValues:
    mrsigner: bytes
    isv_prod_id: int
    isv_svn: int


def tcb_info_text(tcb: PlatformTcb, issued: datetime, tcb_date: datetime) -> str:
    """TCB info v3: the platform's own TCB is UpToDate; one older level is OutOfDate with an advisory."""
    older = [max(svn - 1, 0) for svn in tcb.comp_svns]
    levels = [
        {
            "tcb": {"sgxtcbcomponents": [{"svn": s} for s in tcb.comp_svns], "pcesvn": tcb.pcesvn},
            "tcbDate": _iso(tcb_date),
            "tcbStatus": "UpToDate",
        },
        {
            "tcb": {"sgxtcbcomponents": [{"svn": s} for s in older], "pcesvn": max(tcb.pcesvn - 1, 0)},
            "tcbDate": _iso(tcb_date - timedelta(days=365)),
            "tcbStatus": "OutOfDate",
            "advisoryIDs": [SIM_ADVISORY],
        },
    ]
    return _compact(
        {
            "id": "SGX",
            "version": 3,
            "issueDate": _iso(issued),
            "nextUpdate": _iso(issued + COLLATERAL_LIFETIME),
            "fmspc": tcb.fmspc.hex().upper(),
            "pceId": tcb.pceid.hex().upper(),
            "tcbType": 0,
            "tcbEvaluationDataNumber": TCB_EVALUATION_DATA_NUMBER,
            "tcbLevels": levels,
        }
    )


def qe_identity_text(qe: QeIdentityValues, issued: datetime, tcb_date: datetime) -> str:
    return _compact(
        {
            "id": "QE",
            "version": 2,
            "issueDate": _iso(issued),
            "nextUpdate": _iso(issued + COLLATERAL_LIFETIME),
            "tcbEvaluationDataNumber": TCB_EVALUATION_DATA_NUMBER,
            "miscselect": "00000000",
            "miscselectMask": "FFFFFFFF",
            "attributes": "11000000000000000000000000000000",
            "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
            "mrsigner": qe.mrsigner.hex().upper(),
            "isvprodid": qe.isv_prod_id,
            "tcbLevels": [
                {"tcb": {"isvsvn": qe.isv_svn}, "tcbDate": _iso(tcb_date), "tcbStatus": "UpToDate"},
                {
                    "tcb": {"isvsvn": max(qe.isv_svn - 2, 0)},
                    "tcbDate": _iso(tcb_date - timedelta(days=365)),
                    "tcbStatus": "OutOfDate",
                    "advisoryIDs": [SIM_ADVISORY],
                },
            ],
        }
    )


def _pem(*issued: Issued) -> str:
    return "".join(i.certificate.public_bytes(serialization.Encoding.PEM).decode() for i in issued)


@dataclass(frozen=True)
class Collateral:
    """One consistent set of collateral documents, issued at ``issued``."""

    bundle: dict[str, str]
    issued: datetime

    @property
    def next_update(self) -> datetime:
        return self.issued + COLLATERAL_LIFETIME

    def valid_at(self, at: datetime) -> bool:
        return self.issued <= at < self.next_update

    def to_json(self) -> str:
        return json.dumps(self.bundle, indent=1)

    def write_folder(self, folder: Path) -> list[Path]:
        """Write the documents as Intel PCS-style files (a verifier recognises them by content)."""
        folder.mkdir(parents=True, exist_ok=True)
        b = self.bundle
        files = {
            # The signed documents are embedded as the exact text that was signed, as PCS serves them.
            "tcb_info.json": f'{{"tcbInfo":{b["tcb_info"]},"signature":"{b["tcb_info_signature"]}"}}',
            "qe_identity.json": (
                f'{{"enclaveIdentity":{b["qe_identity"]},"signature":"{b["qe_identity_signature"]}"}}'
            ),
            "tcb_info_issuer_chain.pem": b["tcb_info_issuer_chain"],
            "pck_crl_issuer_chain.pem": b["pck_crl_issuer_chain"],
        }
        written = []
        for name, text in files.items():
            (folder / name).write_text(text)
            written.append(folder / name)
        for name, key in (("root_ca_crl.der", "root_ca_crl"), ("pck_crl.der", "pck_crl")):
            (folder / name).write_bytes(bytes.fromhex(b[key]))
            written.append(folder / name)
        return written


def issue_collateral(
    *,
    root: Issued,
    pck_ca: Issued,
    tcb_signing: Issued,
    tcb: PlatformTcb,
    qe: QeIdentityValues,
    issued: datetime,
    tcb_date: datetime,
    revoked_pck_serials: tuple[int, ...] = (),
) -> Collateral:
    issued = issued.replace(microsecond=0)
    tcb_info = tcb_info_text(tcb, issued, tcb_date)
    qe_identity = qe_identity_text(qe, issued, tcb_date)
    next_update = issued + COLLATERAL_LIFETIME
    root_crl = issue_crl(root, issued, next_update)
    pck_crl = issue_crl(pck_ca, issued, next_update, revoked_pck_serials)
    signing_chain = _pem(tcb_signing, root)
    bundle = {
        "pck_crl_issuer_chain": _pem(pck_ca, root),
        "root_ca_crl": root_crl.public_bytes(serialization.Encoding.DER).hex(),
        "pck_crl": pck_crl.public_bytes(serialization.Encoding.DER).hex(),
        "tcb_info_issuer_chain": signing_chain,
        "tcb_info": tcb_info,
        "tcb_info_signature": raw_signature(tcb_signing.key, tcb_info.encode()).hex(),
        "qe_identity_issuer_chain": signing_chain,
        "qe_identity": qe_identity,
        "qe_identity_signature": raw_signature(tcb_signing.key, qe_identity.encode()).hex(),
    }
    return Collateral(bundle, issued)
