"""Appraisal of SEV-SNP evidence: the guest's pins, the platform's TCB and revocation, and the guest policy.

The defaults are the safe ones (docs/policy.md, "Defaults against stale collateral and weak guests"): a minimum
TCB per product, AMD's CRL checked, VMPL 0 and no migration agent.
"""

from __future__ import annotations

from teelab.gateway.judgement import CONFIGURATION, EXECUTABLES, HARDWARE, Judgement, judge_pin
from teelab.gateway.policy import DEFAULT_SNP_MIN_TCB, SnpReference

_SNP_POLICY_SMT = 1 << 16
_SNP_POLICY_MIGRATE_MA = 1 << 18
_SNP_POLICY_SINGLE_SOCKET = 1 << 20


def snp_reference(judge: Judgement) -> SnpReference:
    # Without an [snp] section the defaults apply: no pins, and the safe defaults for TCB, CRL, VMPL, agent.
    return judge.policy.snp or SnpReference()


def judge_snp(judge: Judgement) -> None:
    ref = snp_reference(judge)
    judge_pin(judge, "measurement", ref.measurement, EXECUTABLES)
    judge_pin(judge, "host_data", ref.host_data, CONFIGURATION)
    _judge_snp_min_tcb(judge, ref)
    if ref.require_crl:
        checked = judge.evidence.details.get("amd_crl_checked") is True
        detail = (
            "the ASK/ASVK was checked against a current CRL of AMD's ARK"
            if checked
            else "revocation was not checked (no CRL of AMD's ARK came with the certificates) but the policy "
            "requires snp.require_crl = true; supply AMD's CRL (https://kdsintf.amd.com/vcek/v1/<product>/crl)"
        )
        judge.record("policy.amd_crl", checked, detail, HARDWARE)
    _judge_vmpl(judge, ref.max_vmpl)
    constrained = not ref.allow_smt or not ref.allow_migration_agent or ref.require_single_socket
    if not constrained:
        return
    bits = judge.claim("policy")
    if not isinstance(bits, int) or isinstance(bits, bool):
        detail = (
            "the evidence has no SEV-SNP guest policy to compare with snp.allow_smt / allow_migration_agent"
        )
        judge.record("policy.guest_policy", False, detail, CONFIGURATION)
        return
    if not ref.allow_smt:
        ok = not bits & _SNP_POLICY_SMT
        detail = (
            "the guest policy disallows SMT (bit 16 clear)"
            if ok
            else "the guest policy allows SMT (bit 16 set) but the policy requires allow_smt = false; launch "
            "the guest with SMT disallowed"
        )
        judge.record("policy.smt", ok, detail, CONFIGURATION)
    if not ref.allow_migration_agent:
        ok = not bits & _SNP_POLICY_MIGRATE_MA
        detail = (
            "the guest policy does not allow a migration agent (bit 18 clear)"
            if ok
            else "the guest policy allows a migration agent (bit 18 set) but the policy requires "
            "allow_migration_agent = false; launch the guest without MIGRATE_MA"
        )
        judge.record("policy.migration_agent", ok, detail, CONFIGURATION)
    if ref.require_single_socket:
        ok = bool(bits & _SNP_POLICY_SINGLE_SOCKET)
        detail = (
            "the guest policy requires a single socket (bit 20 set)"
            if ok
            else "the guest policy does not restrict the guest to one socket (bit 20 clear) but the policy "
            "requires require_single_socket = true; launch the guest with SINGLE_SOCKET"
        )
        judge.record("policy.single_socket", ok, detail, CONFIGURATION)


def _judge_snp_min_tcb(judge: Judgement, ref: SnpReference) -> None:
    if ref.min_tcb is not None:
        _judge_min_tcb(judge, ref.min_tcb.minimums())
        return
    product = judge.evidence.details.get("product")
    default = DEFAULT_SNP_MIN_TCB.get(product) if isinstance(product, str) else None
    if default is None:
        detail = (
            f"teelab has no default minimum TCB for {product or 'this product'} (TCB numbers differ per "
            "product); set snp.min_tcb from AMD's security bulletins for your CPUs"
        )
        judge.record("policy.min_tcb", False, detail, HARDWARE)
        return
    _judge_min_tcb(judge, default.minimums(), source=f"teelab's default minimum for {product}")


def _judge_vmpl(judge: Judgement, maximum: int) -> None:
    vmpl = judge.claim("vmpl")
    if not isinstance(vmpl, int) or isinstance(vmpl, bool):
        judge.record("policy.vmpl", False, "the evidence has no VMPL to compare", CONFIGURATION)
    elif vmpl <= maximum:
        judge.record("policy.vmpl", True, f"VMPL {vmpl} (the policy accepts up to {maximum})", CONFIGURATION)
    else:
        detail = (
            f"the report was requested at VMPL {vmpl} but the policy accepts up to {maximum}: less privileged "
            "code in the guest asked for it, not the measured firmware and kernel; raise snp.max_vmpl only "
            "for a guest that runs under an SVSM"
        )
        judge.record("policy.vmpl", False, detail, CONFIGURATION)


def _judge_min_tcb(
    judge: Judgement, minimums: dict[str, int], *, source: str = "the policy's minimum"
) -> None:
    reported = judge.evidence.details.get("reported_tcb")
    if not isinstance(reported, dict):
        judge.record("policy.min_tcb", False, "the verifier reported no REPORTED_TCB to compare", HARDWARE)
        return
    shortfalls = []
    for name, minimum in minimums.items():
        value = reported.get(name)
        if not isinstance(value, int):
            shortfalls.append(f"{name} is not reported (minimum {minimum})")
        elif value < minimum:
            shortfalls.append(f"{name} {value} < {minimum}")
    shown = ", ".join(f"{name} {reported.get(name)}" for name in minimums)
    if shortfalls:
        detail = (
            f"REPORTED_TCB is below {source}: {'; '.join(shortfalls)}; the host needs newer "
            "SEV-SNP firmware / microcode, or the policy a lower snp.min_tcb"
        )
        judge.record("policy.min_tcb", False, detail, HARDWARE)
    else:
        judge.record("policy.min_tcb", True, f"REPORTED_TCB meets {source} ({shown})", HARDWARE)
