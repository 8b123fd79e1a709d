"""Trust anchors: the roots evidence must chain to, pinned by the SHA-256 of their DER encoding.

The root certificate itself arrives with the evidence or the collateral; verification requires that the
root that arrives *equals* a pinned one (a damaged or substituted root is refused even when the chain
below it would verify under the pinned key).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Intel SGX Root CA (production), the root of every SGX and TDX PCK chain.
INTEL_SGX_ROOT_CA = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"

# AMD Root Keys per product line (the ARK of the ARK -> ASK/ASVK -> VCEK/VLEK chain).
AMD_ARK_MILAN = "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd"
# ARK-Genoa as published in google/go-sev-guest verify/trust/ask_ark_genoa_vlek.pem (commit f94d851) and,
# byte-identical, as AMD KDS's /vcek/v1/Genoa/cert_chain in veehaitch/routex-client-lua (commit a215bd8);
# self-signature checked. The certificate itself is in teelab.gateway.snp.amd_ca.
AMD_ARK_GENOA = "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1"
AMD_ARK_TURIN = "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a"


@dataclass(frozen=True)
class TrustAnchors:
    """Pinned roots.

    ``intel_roots`` and ``amd_arks`` map a fingerprint to a label (``amd_arks``: the product name, e.g.
    ``"Milan"``). ``simulated_roots`` are roots of simulated platforms: evidence that chains to one of them
    is authentic *as a simulation* and is marked ``simulated``; policy decides whether that is acceptable.
    """

    intel_roots: dict[str, str] = field(default_factory=lambda: {INTEL_SGX_ROOT_CA: "Intel SGX Root CA"})
    amd_arks: dict[str, str] = field(
        default_factory=lambda: {AMD_ARK_MILAN: "Milan", AMD_ARK_GENOA: "Genoa", AMD_ARK_TURIN: "Turin"}
    )
    simulated_roots: dict[str, str] = field(default_factory=dict)

    def with_simulated_root(self, fingerprint: str, label: str) -> TrustAnchors:
        roots = dict(self.simulated_roots)
        roots[fingerprint.lower()] = label
        return TrustAnchors(dict(self.intel_roots), dict(self.amd_arks), roots)

    def with_intel_root(self, fingerprint: str, label: str) -> TrustAnchors:
        roots = dict(self.intel_roots)
        roots[fingerprint.lower()] = label
        return TrustAnchors(roots, dict(self.amd_arks), dict(self.simulated_roots))
