"""Intel enclave identity (PCS ``/qe/identity``), version 2: what a genuine QE / TD QE looks like."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from teelab.gateway.dcap import jsondoc as j
from teelab.gateway.dcap.jsondoc import DocError
from teelab.gateway.dcap.tcbinfo import MODULE_STATUSES, IsvLevel, parse_isv_levels

# QVE identities are published too, but they describe the verification enclave, not quotes.
KNOWN_IDS = ("QE", "TD_QE", "QVE")


@dataclass(frozen=True, slots=True)
class EnclaveIdentity:
    id: str
    version: int
    issue_date: datetime
    next_update: datetime
    tcb_evaluation_data_number: int
    # MISCSELECT and ATTRIBUTES stay raw bytes in report order: Intel's hex is the report's byte sequence.
    miscselect: bytes
    miscselect_mask: bytes
    attributes: bytes
    attributes_mask: bytes
    mrsigner: bytes
    isv_prod_id: int
    levels: tuple[IsvLevel, ...]


def parse_enclave_identity(value: Any) -> EnclaveIdentity:
    what = "enclaveIdentity"
    doc = j.obj(value, what)
    version = j.get_int(doc, "version", what)
    if version != 2:
        raise DocError(f"enclave identity version {version} is not supported (2 is)")
    ident = j.get_str(doc, "id", what)
    if ident not in KNOWN_IDS:
        raise DocError(f"enclave identity id {ident!r} is not one of {', '.join(KNOWN_IDS)}")
    identity = EnclaveIdentity(
        id=ident,
        version=version,
        issue_date=j.get_date(doc, "issueDate", what),
        next_update=j.get_date(doc, "nextUpdate", what),
        tcb_evaluation_data_number=j.get_int(doc, "tcbEvaluationDataNumber", what),
        miscselect=j.get_hex(doc, "miscselect", what, 4),
        miscselect_mask=j.get_hex(doc, "miscselectMask", what, 4),
        attributes=j.get_hex(doc, "attributes", what, 16),
        attributes_mask=j.get_hex(doc, "attributesMask", what, 16),
        mrsigner=j.get_hex(doc, "mrsigner", what, 32),
        isv_prod_id=j.get_int(doc, "isvprodid", what, 0xFFFF),
        levels=parse_isv_levels(doc, what, MODULE_STATUSES),
    )
    if identity.next_update < identity.issue_date:
        raise DocError("enclaveIdentity.nextUpdate is before its issueDate")
    return identity
