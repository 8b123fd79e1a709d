"""What a verified Intel quote says: its claims for policy, and the details recorded beside them.

Claims are the values a policy pins (measurements, ids, report data, the debug flag); details are everything
else a person or a relying party may want to see (the PCK certificate's TCB, the collateral's evaluation
numbers, the QE and TDX module), and the facts some policies judge (the evaluation numbers, CONFIGID).
"""

from __future__ import annotations

from dataclasses import dataclass

from teelab.gateway.dcap.chain import PckChain
from teelab.gateway.dcap.qeidentity import EnclaveIdentity
from teelab.gateway.dcap.quote import EnclaveReport, Quote
from teelab.gateway.dcap.tcbinfo import IsvLevel, TcbInfo, TcbLevel
from teelab.gateway.verified import ClaimValue
from teelab.timeutil import isoformat

NOT_FOUND = "TcbLevelNotFound"


def _h(value: bytes) -> str:
    return value.hex()


@dataclass
class TcbFindings:
    """Intermediate TCB findings, folded into the final status at the end."""

    platform: TcbLevel | None = None
    qe: IsvLevel | None = None
    module_status: str | None = "UpToDate"
    module_level: IsvLevel | None = None
    not_found: bool = False


def quote_claims(quote: Quote) -> dict[str, ClaimValue]:
    body = quote.body
    if isinstance(body, EnclaveReport):
        return {
            "mrenclave": _h(body.mrenclave),
            "mrsigner": _h(body.mrsigner),
            "isv_prod_id": body.isv_prod_id,
            "isv_svn": body.isv_svn,
            "config_id": _h(body.config_id),
            "report_data": _h(body.report_data),
            "debug": body.debug,
        }
    claims: dict[str, ClaimValue] = {
        "mrtd": _h(body.mrtd),
        "mrconfigid": _h(body.mrconfigid),
        "mrowner": _h(body.mrowner),
        "mrownerconfig": _h(body.mrownerconfig),
    }
    for i, rtmr in enumerate(body.rtmrs):
        claims[f"rtmr{i}"] = _h(rtmr)
    claims["report_data"] = _h(body.report_data)
    claims["debug"] = body.debug
    return claims


def quote_details(
    quote: Quote, chain: PckChain, info: TcbInfo, identity: EnclaveIdentity, status: TcbFindings
) -> dict[str, object]:
    ext = chain.extension
    qe = quote.signature.qe_report
    details: dict[str, object] = {
        "quote_version": quote.header.version,
        "quote_body": quote.body_name,
        "trailing_bytes": quote.trailing,
        "qe_vendor_id": _h(quote.header.qe_vendor_id),
        "user_data": _h(quote.header.user_data),
        "attestation_key": _h(quote.signature.attestation_key),
        "fmspc": _h(ext.fmspc),
        "pceid": _h(ext.pceid),
        "pcesvn": ext.pcesvn,
        "pck_tcb_svns": list(ext.tcb_comp_svns),
        "pck_cpusvn": _h(ext.cpusvn),
        "sgx_type": ext.sgx_type_name,
        "pck_ca": chain.ca_name,
        "pck_serial": f"{chain.leaf.serial_number:x}",
        "root_fingerprint": chain.root_fingerprint,
        "qe_svn": qe.isv_svn,
        "qe_isv_prod_id": qe.isv_prod_id,
        "qe_mrenclave": _h(qe.mrenclave),
        "qe_mrsigner": _h(qe.mrsigner),
        "qe_tcb_status": status.qe.status if status.qe else NOT_FOUND,
        "qe_identity_evaluation_data_number": identity.tcb_evaluation_data_number,
        "tcb_info_evaluation_data_number": info.tcb_evaluation_data_number,
        "tcb_info_version": info.version,
        "platform_tcb_status": status.platform.status if status.platform else NOT_FOUND,
        "tcb_date": isoformat(status.platform.tcb_date) if status.platform else None,
        "platform_advisory_ids": list(status.platform.advisory_ids) if status.platform else [],
    }
    body = quote.body
    if isinstance(body, EnclaveReport):
        details.update(
            cpusvn=_h(body.cpusvn),
            miscselect=_h(body.miscselect),
            attributes=_h(body.attributes),
            isv_ext_prod_id=_h(body.isv_ext_prod_id),
            isv_family_id=_h(body.isv_family_id),
            config_id=_h(body.config_id),
            config_svn=body.config_svn,
        )
    else:
        details.update(
            tee_tcb_svn=_h(body.tee_tcb_svn),
            mrseam=_h(body.mrseam),
            mrsignerseam=_h(body.mrsignerseam),
            seam_attributes=_h(body.seam_attributes),
            td_attributes=_h(body.td_attributes),
            xfam=_h(body.xfam),
            tdx_module_id=f"TDX_{body.tee_tcb_svn[1]:02X}" if body.tee_tcb_svn[1] else "tdxModule",
            tdx_module_tcb_status=status.module_status or NOT_FOUND,
        )
        if body.tee_tcb_svn2 is not None and body.mrservicetd is not None:
            details.update(tee_tcb_svn2=_h(body.tee_tcb_svn2), mrservicetd=_h(body.mrservicetd))
    return details
