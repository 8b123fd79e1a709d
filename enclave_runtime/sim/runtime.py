"""The in-TEE side of the simulated backend: quotes and sealing keys for the launched enclave."""

from __future__ import annotations

import os

from teelab.enclave_runtime.backend import Evidence, EvidenceKind, SealPolicy, TeeRuntime, check_report_data
from teelab.enclave_runtime.controller import controller_from_field
from teelab.enclave_runtime.sim.identity import IDENTITY_FD_ENV, SimIdentity
from teelab.enclave_runtime.sim.platform import SimPlatform
from teelab.enclave_runtime.sim.sgx_structs import (
    ATTRIBUTE_DEBUG,
    ATTRIBUTE_INIT,
    ATTRIBUTE_MODE64BIT,
    ReportBody,
)


class SimRuntime(TeeRuntime):
    backend = "sim"
    simulated = True

    def __init__(self, identity: SimIdentity, platform: SimPlatform) -> None:
        self.identity = identity
        self.platform = platform

    _current: SimRuntime | None = None

    @classmethod
    def from_environment(cls) -> SimRuntime:
        """This process's runtime; the identity pipe can be read once, so the runtime is kept."""
        if cls._current is None:
            identity = SimIdentity.from_loader(os.environ.get(IDENTITY_FD_ENV))
            cls._current = cls(identity, SimPlatform.load(identity.platform))
        return cls._current

    def report_body(self, report_data: bytes) -> ReportBody:
        flags = ATTRIBUTE_INIT | ATTRIBUTE_MODE64BIT | (self.identity.attributes & ATTRIBUTE_DEBUG)
        return ReportBody(
            cpusvn=self.platform.tcb.cpusvn,
            mrenclave=self.identity.mrenclave,
            mrsigner=self.identity.mrsigner,
            isv_prod_id=self.identity.isv_prod_id,
            isv_svn=self.identity.isv_svn,
            report_data=report_data,
            attributes_flags=flags,
            config_id=self.identity.config_id,
        )

    def evidence(self, report_data: bytes) -> Evidence:
        check_report_data(report_data)
        return Evidence(EvidenceKind.SGX_QUOTE, self.platform.quote(self.report_body(report_data)))

    def controller(self) -> bytes | None:
        # The CONFIGID the sim backend set at launch: what every quote of this enclave carries.
        return controller_from_field(self.identity.config_id)

    def sealing_key(self, policy: SealPolicy = SealPolicy.MRENCLAVE, *, label: bytes = b"") -> bytes:
        return self.platform.sealing_key(self.identity.sealing_identity(policy), label=label)
