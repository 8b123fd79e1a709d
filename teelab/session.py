"""Inside an attested kernel: what attestation established about this session.

``teelab.session.attestation()`` returns the gateway's verdict on this kernel (TEE, measurement, TCB status,
every check, whether it is simulated). The kernel boot installs it with the key-broker section of the session
bundle (:func:`services`); nothing here is ever written to disk. User code gets evidence only through
:func:`attest`, whose report_data is domain-separated from every teelab protocol; the session's attested key E
and the TEE's raw evidence function go to the dataset reader alone (:mod:`teelab.sealed_store.notebook`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from teelab.errors import TeelabError
from teelab.protocols.session import KeyBrokerSection


class NotAttested(TeelabError):
    """This Python process is not an attested teelab kernel."""


class Attestation(Mapping[str, Any]):
    """The attestation result of this kernel, read-only (the keys of ``teelab evidence verify --json``)."""

    def __init__(self, result: Mapping[str, Any]) -> None:
        self._result = dict(result)

    def __getitem__(self, key: str) -> Any:
        return self._result[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._result)

    def __len__(self) -> int:
        return len(self._result)

    @property
    def verdict(self) -> str:
        return str(self._result.get("verdict"))

    @property
    def simulated(self) -> bool:
        return bool(self._result.get("simulated"))

    @property
    def measurement(self) -> str | None:
        claims = self._result.get("claims") or {}
        for name in ("mrenclave", "mrtd", "measurement"):
            if name in claims:
                return str(claims[name])
        return None

    def summary(self) -> str:
        tee = str(self._result.get("tee") or "unknown TEE").upper()
        line = f"{self.verdict} · {tee} · {self._result.get('tcb_status') or 'no TCB status'}"
        if self.simulated:
            line += " · simulated TEE — NOT confidential"
        return f"{line}\nmeasurement {self.measurement}"

    def __repr__(self) -> str:
        return f"<Attestation {self.summary()}>"

    def _repr_markdown_(self) -> str:
        rows = "\n".join(
            f"| {c['name']} | {'✅' if c['passed'] else '❌'} | {c['detail']} |"
            for c in self._result.get("checks", [])
        )
        warning = "\n\n**Simulated TEE — not confidential.**" if self.simulated else ""
        return f"**{self.summary().splitlines()[0]}**{warning}\n\n| check | | detail |\n|---|---|---|\n{rows}"


@dataclass(frozen=True)
class _SessionState:
    attestation: Attestation
    key_broker: KeyBrokerSection | None  # None: no key broker was configured when the session was attested
    # The TEE's evidence function (report_data -> evidence). Private: user code gets attest(), whose
    # report_data is domain-separated; teelab's dataset reader gets its own copy from the boot.
    evidence: Callable[[bytes], Any] | None
    # In a confidential VM the kernel is unprivileged and asks the boot's agent, which takes the raw user data
    # and applies the domain separation itself (teelab.enclave_runtime.cvm.privileges.UserEvidenceClient).
    user_evidence: Callable[[bytes], Any] | None = None


_state: _SessionState | None = None


def install(
    attestation: Mapping[str, Any],
    key_broker: KeyBrokerSection | None = None,
    attest: Callable[[bytes], Any] | None = None,
    user_evidence: Callable[[bytes], Any] | None = None,
) -> None:
    """Called once by the kernel boot after it opened the session bundle. ``attest`` takes report data;
    ``user_evidence`` (when the TEE's device is out of this process's reach) takes the raw user data."""
    global _state
    _state = _SessionState(Attestation(attestation), key_broker, attest, user_evidence)


def services() -> dict[str, Any]:
    """Where this session's data services are (key broker, dataset store), as the gateway configured them."""
    section = _current().key_broker
    if section is None:
        return {"kbs": None, "store": None, "user": None}
    return {"kbs": section.address, "store": section.store, "user": section.user}


def attestation() -> Attestation:
    if _state is None:
        raise NotAttested(
            "this kernel is not an attested teelab session",
            hint='start the notebook with a teelab kernel, e.g. "Python 3 (teelab · simulated TEE)"',
        )
    return _state.attestation


def is_attested() -> bool:
    return _state is not None


USER_DOMAIN = b"teelab/user/v1"


def user_report_data(user_data: bytes) -> bytes:
    """``SHA-512("teelab/user/v1" ‖ user_data)``: the only report_data user code can have evidence for."""
    return hashlib.sha512(USER_DOMAIN + user_data).digest()


def attest(user_data: bytes) -> Any:
    """Fresh evidence from this kernel's TEE over ``SHA-512("teelab/user/v1" ‖ user_data)``.

    The prefix keeps user code out of teelab's own protocols: no choice of ``user_data`` gives evidence that
    passes for a session handshake (``teelab/session/v1``) or a key release (``teelab/kbs/v1``). Like all of this
    kernel's evidence it names the kernel's controller, the gateway that launched it. Verify it with
    ``teelab evidence verify`` and ``--report-data`` set to :func:`user_report_data` of the same bytes.
    """
    if not isinstance(user_data, bytes | bytearray | memoryview):
        raise TypeError(f"user_data must be bytes, not {type(user_data).__name__}")
    state = _current()
    if state.user_evidence is not None:
        return state.user_evidence(bytes(user_data))  # the agent hashes: it serves no other report data
    evidence = state.evidence
    if evidence is None:
        raise NotAttested("this kernel's TEE gave the session no evidence function")
    return evidence(user_report_data(bytes(user_data)))


def _current() -> _SessionState:
    if _state is None:
        raise NotAttested("this kernel is not an attested teelab session")
    return _state
