"""Where the key broker gets Intel collateral (TCB info, QE identity, CRLs) for the evidence it judges.

A release request may carry its own collateral bundle; otherwise the KBS uses its configured source:

- ``sim``: the local simulated platform plays Intel's PCS (what ``SimBackend().collateral_path(at)`` serves):
  collateral valid at the judged time, re-issued when it expires. The sim root is added to the trust anchors
  as a *simulated* root, so only policies with ``allow_simulation = true`` accept such evidence.
- a path: a JSON bundle or a folder of PCS files, reloaded when the files change (operators refresh it).
- ``none``: requests must bring collateral (SEV-SNP evidence needs none; it carries its certificates).

Parsed collateral is cached: parsing a bundle costs about a millisecond, verifying a quote against parsed
collateral a quarter of that.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from teelab.enclave_runtime.backend import EnclaveBackend, RootPin
from teelab.enclave_runtime.backends import get_backend
from teelab.errors import ConfigError, VerificationError
from teelab.gateway.dcap import IntelCollateral, load_collateral

# Cached sim collateral is re-read this often (wall-clock seconds) even while valid: a reset platform shows.
_SIM_RECHECK_SECONDS = 600.0


class CollateralSource(Protocol):
    description: str

    def collateral(self, at: datetime) -> IntelCollateral | None: ...

    def simulated_roots(self) -> dict[str, str]:
        """Roots this source vouches for as simulated (fingerprint -> label)."""
        ...


class NoCollateral:
    description = "none (requests bring their own)"

    def collateral(self, at: datetime) -> IntelCollateral | None:
        return None

    def simulated_roots(self) -> dict[str, str]:
        return {}


class PathCollateral:
    def __init__(self, path: Path) -> None:
        if not path.exists():
            raise ConfigError(
                f"collateral not found: {path}", hint="give a JSON bundle or a folder of PCS files"
            )
        self.path = path
        self.description = f"files at {path}"

    def collateral(self, at: datetime) -> IntelCollateral | None:
        try:
            return load_collateral(self.path)  # memoised while the files are unchanged
        except VerificationError:
            return None  # the quote's verification then names the missing collateral

    def simulated_roots(self) -> dict[str, str]:
        return {}


@dataclass(frozen=True)
class _SimCached:
    valid_from: datetime
    valid_until: datetime
    loaded_at: float
    collateral: IntelCollateral
    pins: tuple[RootPin, ...]


class SimCollateral:
    """The simulated platform's collateral, through the sim backend (which plays Intel's PCS): the platform is
    created on first use, like ``SimBackend``'s."""

    def __init__(self, backend: EnclaveBackend) -> None:
        self.backend = backend
        self.description = f"{backend.describe()} (NOT confidential)"
        self._lock = threading.Lock()
        self._cached: _SimCached | None = None

    def _current(self, at: datetime) -> _SimCached:
        with self._lock:
            cached = self._cached
            fresh = cached is not None and time.monotonic() - cached.loaded_at < _SIM_RECHECK_SECONDS
            if cached is not None and fresh and cached.valid_from <= at < cached.valid_until:
                return cached
            path = self.backend.collateral_path(at)  # valid at `at`; re-issued (as PCS would) when expired
            if path is None:
                raise ConfigError(f"the {self.backend.name} backend serves no collateral")
            collateral = load_collateral(path)
            documents = [d.body for d in collateral.tcb_infos] + [d.body for d in collateral.qe_identities]
            cached = _SimCached(
                valid_from=max(d.issue_date for d in documents),
                valid_until=min(d.next_update for d in documents),
                loaded_at=time.monotonic(),
                collateral=collateral,
                pins=self.backend.root_pins(),
            )
            self._cached = cached
            return cached

    def collateral(self, at: datetime) -> IntelCollateral | None:
        return self._current(at).collateral

    def simulated_roots(self) -> dict[str, str]:
        cached = self._cached
        if cached is None:
            return {}
        return {pin.sha256: pin.label for pin in cached.pins if pin.simulated}


def collateral_source(spec: str | Path | None, *, sim_platform: Path | None = None) -> CollateralSource:
    """``"sim"``, ``"none"`` or a path, as given to ``teelab kbs serve --collateral``."""
    if spec is None or str(spec) == "none":
        return NoCollateral()
    if str(spec) == "sim":
        return SimCollateral(get_backend("sim", sim_platform=sim_platform))
    return PathCollateral(Path(spec))
