"""Intel DCAP (SGX and TDX) quote verification with ``cryptography`` only.

Public API::

    parse_quote(data) -> Quote
    parse_pck_extension(der) -> PckExtension
    IntelCollateral.from_bundle_json(data) / IntelCollateral.from_folder(path) / .to_bundle_json()
    load_collateral(path) -> IntelCollateral          (memoised)
    verify_intel_quote(quote, collateral, *, at, anchors, extra_pck_chain=None, log=None) -> VerifiedEvidence

Every public function raises only :class:`teelab.errors.VerificationError` on bad input.
"""

from __future__ import annotations

from teelab.gateway.dcap.collateral import IntelCollateral
from teelab.gateway.dcap.loader import clear_collateral_cache, load_collateral
from teelab.gateway.dcap.pck import PckExtension, parse_pck_extension
from teelab.gateway.dcap.quote import EnclaveReport, Quote, TdReport, parse_quote
from teelab.gateway.dcap.verify import verify_intel_quote

__all__ = [
    "EnclaveReport",
    "IntelCollateral",
    "PckExtension",
    "Quote",
    "TdReport",
    "clear_collateral_cache",
    "load_collateral",
    "parse_pck_extension",
    "parse_quote",
    "verify_intel_quote",
]
