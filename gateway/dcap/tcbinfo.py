"""Intel TCB info (PCS ``/tcb``), versions 2 (SGX) and 3 (SGX and TDX), parsed from the signed JSON value."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from teelab.gateway.dcap import jsondoc as j
from teelab.gateway.dcap.jsondoc import DocError

PLATFORM_STATUSES = frozenset(
    {
        "UpToDate",
        "SWHardeningNeeded",
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
        "OutOfDate",
        "OutOfDateConfigurationNeeded",
        "Revoked",
    }
)
MODULE_STATUSES = frozenset({"UpToDate", "OutOfDate", "Revoked"})


@dataclass(frozen=True, slots=True)
class TcbLevel:
    sgx_svns: tuple[int, ...]  # 16 component SVNs
    pcesvn: int
    tdx_svns: tuple[int, ...] | None  # 16 TDX component SVNs (TDX TCB info only)
    tcb_date: datetime
    status: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class IsvLevel:
    """A TCB level keyed by one ISVSVN (TDX module identities, QE identities)."""

    isvsvn: int
    tcb_date: datetime
    status: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TdxModule:
    id: str  # "" for the base tdxModule, "TDX_01"... for tdxModuleIdentities
    mrsigner: bytes
    attributes: bytes
    attributes_mask: bytes
    levels: tuple[IsvLevel, ...]


@dataclass(frozen=True, slots=True)
class TcbInfo:
    id: str  # "SGX" or "TDX"
    version: int
    issue_date: datetime
    next_update: datetime
    fmspc: bytes
    pce_id: bytes
    tcb_type: int
    tcb_evaluation_data_number: int
    levels: tuple[TcbLevel, ...]
    tdx_module: TdxModule | None
    tdx_module_identities: tuple[TdxModule, ...]

    def module_identity(self, major: int) -> TdxModule | None:
        wanted = f"TDX_{major:02X}"
        for identity in self.tdx_module_identities:
            if identity.id.upper() == wanted:
                return identity
        return None


def _status(doc: dict[str, Any], what: str, allowed: frozenset[str]) -> str:
    status = j.get_str(doc, "tcbStatus", what)
    if status not in allowed:
        raise DocError(f"{what}.tcbStatus {status!r} is not one of {', '.join(sorted(allowed))}")
    return status


def _components(doc: dict[str, Any], key: str, what: str) -> tuple[int, ...]:
    items = j.get_list(doc, key, what)
    if len(items) != 16:
        raise DocError(f"{what}.{key} has {len(items)} entries, expected 16")
    return tuple(
        j.get_int(j.obj(c, f"{what}.{key}[{i}]"), "svn", f"{what}.{key}[{i}]", 255)
        for i, c in enumerate(items)
    )


def _level(raw: Any, what: str, version: int, tdx: bool) -> TcbLevel:
    level = j.obj(raw, what)
    tcb = j.get_obj(level, "tcb", what)
    where = f"{what}.tcb"
    if version == 2:
        sgx = tuple(j.get_int(tcb, f"sgxtcbcomp{i:02d}svn", where, 255) for i in range(1, 17))
    else:
        sgx = _components(tcb, "sgxtcbcomponents", where)
    tdx_svns = _components(tcb, "tdxtcbcomponents", where) if tdx else None
    return TcbLevel(
        sgx_svns=sgx,
        pcesvn=j.get_int(tcb, "pcesvn", where, 0xFFFF),
        tdx_svns=tdx_svns,
        tcb_date=j.get_date(level, "tcbDate", what),
        status=_status(level, what, PLATFORM_STATUSES),
        advisory_ids=j.get_advisories(level, what),
    )


def parse_isv_levels(doc: dict[str, Any], what: str, allowed: frozenset[str]) -> tuple[IsvLevel, ...]:
    levels = j.get_list(doc, "tcbLevels", what)
    if not levels:
        raise DocError(f"{what}.tcbLevels is empty")
    out: list[IsvLevel] = []
    for i, raw in enumerate(levels):
        where = f"{what}.tcbLevels[{i}]"
        level = j.obj(raw, where)
        out.append(
            IsvLevel(
                isvsvn=j.get_int(j.get_obj(level, "tcb", where), "isvsvn", f"{where}.tcb", 0xFFFF),
                tcb_date=j.get_date(level, "tcbDate", where),
                status=_status(level, where, allowed),
                advisory_ids=j.get_advisories(level, where),
            )
        )
    return tuple(out)


def _module(raw: Any, what: str, with_levels: bool) -> TdxModule:
    doc = j.obj(raw, what)
    return TdxModule(
        id=j.get_str(doc, "id", what) if with_levels else "",
        mrsigner=j.get_hex(doc, "mrsigner", what, 48),
        attributes=j.get_hex(doc, "attributes", what, 8),
        attributes_mask=j.get_hex(doc, "attributesMask", what, 8),
        levels=parse_isv_levels(doc, what, MODULE_STATUSES) if with_levels else (),
    )


def parse_tcb_info(value: Any) -> TcbInfo:
    """Parse the decoded ``tcbInfo`` object; raises DocError naming the bad field."""
    what = "tcbInfo"
    doc = j.obj(value, what)
    version = j.get_int(doc, "version", what)
    if version not in (2, 3):
        raise DocError(f"TCB info version {version} is not supported (2 and 3 are)")
    tcb_id = j.get_str(doc, "id", what) if version == 3 else "SGX"
    if tcb_id not in ("SGX", "TDX"):
        raise DocError(f"TCB info id {tcb_id!r} is not SGX or TDX")
    tdx = tcb_id == "TDX"
    tcb_type = j.get_int(doc, "tcbType", what)
    if tcb_type != 0:
        raise DocError(f"tcbType {tcb_type} is not supported (Intel defines only type 0)")
    levels_raw = j.get_list(doc, "tcbLevels", what)
    if not levels_raw:
        raise DocError("tcbInfo.tcbLevels is empty")
    levels = tuple(_level(raw, f"{what}.tcbLevels[{i}]", version, tdx) for i, raw in enumerate(levels_raw))
    module = _module(j.field(doc, "tdxModule", what), f"{what}.tdxModule", False) if tdx else None
    identities: tuple[TdxModule, ...] = ()
    if tdx and "tdxModuleIdentities" in doc:
        identities = tuple(
            _module(raw, f"{what}.tdxModuleIdentities[{i}]", True)
            for i, raw in enumerate(j.get_list(doc, "tdxModuleIdentities", what))
        )
    info = TcbInfo(
        id=tcb_id,
        version=version,
        issue_date=j.get_date(doc, "issueDate", what),
        next_update=j.get_date(doc, "nextUpdate", what),
        fmspc=j.get_hex(doc, "fmspc", what, 6),
        pce_id=j.get_hex(doc, "pceId", what, 2),
        tcb_type=tcb_type,
        tcb_evaluation_data_number=j.get_int(doc, "tcbEvaluationDataNumber", what),
        levels=levels,
        tdx_module=module,
        tdx_module_identities=identities,
    )
    if info.next_update < info.issue_date:
        raise DocError("tcbInfo.nextUpdate is before its issueDate")
    return info
