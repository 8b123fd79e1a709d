"""TCB level selection and status convergence, as Intel's Quote Verification Library does them.

Sources: Intel QVL ``TcbLevelCheck.cpp`` / ``TdxModuleCheck.cpp`` / ``EnclaveReportVerifier.cpp`` and the PCS
TCB info documentation. Pure functions of parsed data; the verifier records what they decide.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from teelab.gateway.dcap.tcbinfo import IsvLevel, TcbLevel


def sgx_components_met(pck_svns: Sequence[int], pcesvn: int, level: TcbLevel) -> bool:
    """Every PCK-certificate component SVN and the PCESVN reach the level's."""
    return pcesvn >= level.pcesvn and all(
        have >= need for have, need in zip(pck_svns, level.sgx_svns, strict=True)
    )


def tdx_components_met(tee_tcb_svn: bytes, level: TcbLevel) -> bool:
    """TEE_TCB_SVN reaches the level's tdxtcbcomponents.

    Intel's rule: when TEE_TCB_SVN[1] (the TDX module major version) is non-zero, components 0 and 1 (module
    SVN and version) are judged by the TDX module identity instead, so comparison starts at index 2.
    """
    if level.tdx_svns is None:
        return False
    start = 2 if tee_tcb_svn[1] != 0 else 0
    return all(tee_tcb_svn[i] >= level.tdx_svns[i] for i in range(start, 16))


def match_levels(
    levels: Iterable[TcbLevel], pck_svns: Sequence[int], pcesvn: int, tee_tcb_svn: bytes | None
) -> tuple[TcbLevel | None, TcbLevel | None]:
    """(SGX level, TDX level): the first level the PCK SVNs meet and, for TDX, the first that TEE_TCB_SVN also
    meets. Levels are taken in the TCB info's order, which Intel publishes from highest to lowest."""
    sgx_level: TcbLevel | None = None
    for level in levels:
        if not sgx_components_met(pck_svns, pcesvn, level):
            continue
        if tee_tcb_svn is None:
            return level, None
        if sgx_level is None:
            sgx_level = level
        if tdx_components_met(tee_tcb_svn, level):
            return sgx_level, level
    return sgx_level, None


def match_isv_level(levels: Iterable[IsvLevel], isvsvn: int) -> IsvLevel | None:
    """The first level whose ISVSVN the enclave (QE, TDX module) reaches."""
    for level in levels:
        if isvsvn >= level.isvsvn:
            return level
    return None


def converge(platform: str, component: str) -> str:
    """Fold a QE or TDX-module status into the platform status (Intel QVL ``converge…`` functions)."""
    if component == "OutOfDate":
        if platform in ("UpToDate", "SWHardeningNeeded"):
            return "OutOfDate"
        if platform in ("ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded"):
            return "OutOfDateConfigurationNeeded"
    if component == "Revoked":
        return "Revoked"
    return platform


def merge_advisories(*groups: Iterable[str]) -> list[str]:
    """Advisory IDs of every matched level, platform first, each once."""
    out: list[str] = []
    for group in groups:
        for advisory in group:
            if advisory not in out:
                out.append(advisory)
    return out


def masked_equal(value: bytes, mask: bytes, expected: bytes) -> bool:
    """``value & mask == expected``, byte by byte in report order (Intel's hex is the report's byte order)."""
    return len(value) == len(mask) == len(expected) and all(
        v & m == e for v, m, e in zip(value, mask, expected, strict=True)
    )
