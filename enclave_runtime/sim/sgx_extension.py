"""The SGX extension of a PCK certificate (OID 1.2.840.113741.1.13.1) in Intel's layout.

Layout (Intel "SGX PCK Certificate and CRL Profile"): a SEQUENCE of (OID, value) pairs — PPID, TCB (16
component SVNs, PCESVN, CPUSVN), PCE-ID, FMSPC, SGX type. Verifiers match TCB levels against the SVNs in
this extension, so the simulated platform writes exactly what Intel's PCS does.
"""

from __future__ import annotations

from dataclasses import dataclass

from teelab.enclave_runtime.sim import der

SGX_EXTENSION_OID = "1.2.840.113741.1.13.1"
_BASE = SGX_EXTENSION_OID


@dataclass(frozen=True)
class PlatformTcb:
    """What the platform's PCK certificate says about its TCB."""

    ppid: bytes  # 16
    comp_svns: tuple[int, ...]  # 16 values
    pcesvn: int
    cpusvn: bytes  # 16
    pceid: bytes  # 2
    fmspc: bytes  # 6
    sgx_type: int = 0  # 0 = Standard (issued by the Processor CA)


def encode_sgx_extension(tcb: PlatformTcb) -> bytes:
    if len(tcb.comp_svns) != 16 or len(tcb.cpusvn) != 16 or len(tcb.ppid) != 16:
        raise ValueError("PPID, CPUSVN and the component SVN list must each have 16 entries")
    components = [
        der.sequence(der.oid(f"{_BASE}.2.{i + 1}"), der.integer(svn)) for i, svn in enumerate(tcb.comp_svns)
    ]
    components.append(der.sequence(der.oid(f"{_BASE}.2.17"), der.integer(tcb.pcesvn)))
    components.append(der.sequence(der.oid(f"{_BASE}.2.18"), der.octet_string(tcb.cpusvn)))
    return der.sequence(
        der.sequence(der.oid(f"{_BASE}.1"), der.octet_string(tcb.ppid)),
        der.sequence(der.oid(f"{_BASE}.2"), der.sequence(*components)),
        der.sequence(der.oid(f"{_BASE}.3"), der.octet_string(tcb.pceid)),
        der.sequence(der.oid(f"{_BASE}.4"), der.octet_string(tcb.fmspc)),
        der.sequence(der.oid(f"{_BASE}.5"), der.enumerated(tcb.sgx_type)),
    )
