"""Gramine's ``/dev/attestation`` protocol against a stand-in tree — the OS boundary, not an SGX enclave.

The stand-in is a folder laid out like Gramine's pseudo-files: what the runtime writes to ``user_report_data``
stays in the file (the test reads back exactly what was written), and ``quote`` holds the REAL SGX quote from
``shared/vectors/sgx-dcap-qvl``, which then goes through the gateway's verifier end to end, at the vector's
time with its collateral. That quote's report data is fixed ("Hello, world!"), so the happy path asks for
exactly that report data; any other request must be refused because the quote does not carry it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from teelab.enclave_runtime.backend import EvidenceKind, SealPolicy
from teelab.enclave_runtime.gramine.runtime import GramineRuntime, derive_sealing_key
from teelab.enclave_runtime.runtime import current_runtime
from teelab.errors import EvidenceError
from teelab.gateway.policy import parse_policy
from teelab.gateway.verifier import verify_evidence

VECTORS = Path(__file__).resolve().parents[2].parent / "shared" / "vectors"
SGX = VECTORS / "sgx-dcap-qvl"
SGX_AT = datetime(2025, 7, 1, tzinfo=UTC)
HELLO = b"Hello, world!".ljust(64, b"\x00")
POLICY = parse_policy(
    """
id = "gramine-stand-in"
accepted_tcb_statuses = ["UpToDate", "ConfigurationAndSWHardeningNeeded"]
accepted_advisory_ids = ["INTEL-SA-00289", "INTEL-SA-00615"]
[sgx]
mrenclave = ["33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"]
mrsigner = ["815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6"]
"""
)


def stand_in(tmp_path: Path, *, kind: str | None = "dcap", quote: bool = True, keys: bool = True) -> Path:
    """A folder shaped like Gramine's /dev/attestation under gramine-sgx (or gramine-direct: kind=None)."""
    root = tmp_path / "root"
    folder = root / "dev" / "attestation"
    (folder / "keys").mkdir(parents=True)
    if kind is not None:
        (folder / "attestation_type").write_text(kind)
        (folder / "user_report_data").write_bytes(bytes(64))
        if quote:
            (folder / "quote").write_bytes((SGX / "sgx_quote.bin").read_bytes())
        if keys:
            (folder / "keys" / "_sgx_mrenclave").write_bytes(bytes(range(16)))
            (folder / "keys" / "_sgx_mrsigner").write_bytes(bytes(range(16, 32)))
    return root


def test_os_boundary_evidence_writes_exactly_64_bytes_and_returns_a_real_quote_that_verifies(
    tmp_path: Path,
) -> None:
    root = stand_in(tmp_path)
    runtime = current_runtime(root=root, env={})
    assert isinstance(runtime, GramineRuntime)
    evidence = runtime.evidence(HELLO)
    assert (root / "dev/attestation/user_report_data").read_bytes() == HELLO  # exactly what was written
    assert evidence.kind is EvidenceKind.SGX_QUOTE
    assert evidence.blob == (SGX / "sgx_quote.bin").read_bytes()
    result = verify_evidence(
        evidence.blob,
        collateral=SGX / "sgx_quote_collateral.json",
        at=SGX_AT,
        policy=POLICY,
        expected_report_data=HELLO,
    )
    assert result.ok, result.error
    assert result.tee == "sgx" and result.tcb_status == "ConfigurationAndSWHardeningNeeded"


def test_os_boundary_a_quote_over_other_report_data_is_refused_after_the_write(tmp_path: Path) -> None:
    root = stand_in(tmp_path)
    wanted = bytes(range(64))
    with pytest.raises(EvidenceError, match="other report data"):
        GramineRuntime(root).evidence(wanted)
    assert (root / "dev/attestation/user_report_data").read_bytes() == wanted


@pytest.mark.parametrize("size", [0, 32, 63, 65])
def test_os_boundary_report_data_of_any_other_size_is_refused_before_writing(
    tmp_path: Path, size: int
) -> None:
    root = stand_in(tmp_path)
    with pytest.raises(EvidenceError, match="exactly 64 bytes"):
        GramineRuntime(root).evidence(b"\x01" * size)
    assert (root / "dev/attestation/user_report_data").read_bytes() == bytes(64)


def test_os_boundary_gramine_direct_has_no_quote_and_says_so(tmp_path: Path) -> None:
    root = stand_in(tmp_path, kind=None)
    runtime = current_runtime(root=root, env={})
    assert isinstance(runtime, GramineRuntime)
    with pytest.raises(EvidenceError, match="gramine-direct") as caught:
        runtime.evidence(HELLO)
    assert caught.value.hint is not None and "gramine-sgx" in caught.value.hint
    with pytest.raises(EvidenceError, match="no SGX sealing key"):
        runtime.sealing_key()


def test_os_boundary_remote_attestation_none_is_refused(tmp_path: Path) -> None:
    root = stand_in(tmp_path, kind="none", quote=False)
    with pytest.raises(EvidenceError, match="'none', not 'dcap'"):
        GramineRuntime(root).evidence(HELLO)


def test_os_boundary_a_failing_quote_read_points_at_aesmd(tmp_path: Path) -> None:
    """Stand-in for aesmd being down: Gramine's read of ``quote`` fails with an OS error."""
    root = stand_in(tmp_path, quote=False)
    (root / "dev/attestation/quote").mkdir()  # reading it now fails (EISDIR), as a failed QE call does
    with pytest.raises(EvidenceError, match="could not produce a quote") as caught:
        GramineRuntime(root).evidence(HELLO)
    assert caught.value.hint is not None and "aesmd" in caught.value.hint


def test_os_boundary_sealing_keys_are_hkdf_of_the_16_byte_keys_never_the_raw_key(tmp_path: Path) -> None:
    root = stand_in(tmp_path)
    runtime = GramineRuntime(root)
    key = runtime.sealing_key(SealPolicy.MRENCLAVE, label=b"datasets")
    assert len(key) == 32 and bytes(range(16)) not in key
    assert key == derive_sealing_key(
        bytes(range(16)), backend="gramine", policy=SealPolicy.MRENCLAVE, label=b"datasets"
    )
    assert runtime.sealing_key(SealPolicy.MRENCLAVE, label=b"other") != key
    assert runtime.sealing_key(SealPolicy.MRSIGNER, label=b"datasets") != key
    (root / "dev/attestation/keys/_sgx_mrenclave").write_bytes(bytes(15))
    with pytest.raises(EvidenceError, match="gave 15 bytes"):
        runtime.sealing_key()


def test_os_boundary_attestation_calls_hold_the_process_wide_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Gramine's interface is not thread-safe: the write and the read of one request happen under one lock."""
    from teelab.enclave_runtime.gramine import runtime as module

    root = stand_in(tmp_path)
    runtime = GramineRuntime(root)
    seen: list[tuple[str, bool]] = []
    original = GramineRuntime._read

    def spy(self: GramineRuntime, name: str) -> bytes:
        seen.append((name, module._LOCK.locked()))
        return original(self, name)

    monkeypatch.setattr(GramineRuntime, "_read", spy)
    runtime.evidence(HELLO)
    runtime.sealing_key()
    assert seen == [("attestation_type", True), ("quote", True), ("keys/_sgx_mrenclave", True)]
