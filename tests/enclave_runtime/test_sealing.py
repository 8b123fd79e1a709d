"""Sealing keys: HKDF from the platform secret and the enclave identity, distinct per identity."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from teelab.enclave_runtime.backend import SealPolicy
from teelab.enclave_runtime.sim.identity import SimIdentity
from teelab.enclave_runtime.sim.platform import SimPlatform
from teelab.enclave_runtime.sim.runtime import SimRuntime

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def runtime(
    platform: SimPlatform, *, mrenclave: int = 1, mrsigner: int = 2, prod: int = 0, debug: bool = False
) -> SimRuntime:
    identity = SimIdentity(
        platform=platform.path,
        mrenclave=bytes([mrenclave]) * 32,
        mrsigner=bytes([mrsigner]) * 32,
        isv_prod_id=prod,
        isv_svn=0,
        attributes=0x05 | (0x02 if debug else 0),
    )
    return SimRuntime(identity, platform)


def test_same_identity_same_key_and_256_bits(tmp_path: Path) -> None:
    platform = SimPlatform.create(tmp_path / "p", now=NOW)
    key = runtime(platform).sealing_key()
    assert len(key) == 32
    assert runtime(SimPlatform.load(platform.path)).sealing_key() == key


def test_mrenclave_policy_separates_enclaves(tmp_path: Path) -> None:
    platform = SimPlatform.create(tmp_path / "p", now=NOW)
    assert runtime(platform, mrenclave=1).sealing_key() != runtime(platform, mrenclave=3).sealing_key()


def test_mrsigner_policy_is_shared_by_an_authors_enclaves_of_one_product(tmp_path: Path) -> None:
    platform = SimPlatform.create(tmp_path / "p", now=NOW)
    a = runtime(platform, mrenclave=1).sealing_key(SealPolicy.MRSIGNER)
    b = runtime(platform, mrenclave=3).sealing_key(SealPolicy.MRSIGNER)
    assert a == b
    assert a != runtime(platform, mrenclave=1, mrsigner=9).sealing_key(SealPolicy.MRSIGNER)
    assert a != runtime(platform, mrenclave=1, prod=1).sealing_key(SealPolicy.MRSIGNER)
    assert a != runtime(platform, mrenclave=1).sealing_key(SealPolicy.MRENCLAVE)


def test_debug_enclaves_get_other_keys(tmp_path: Path) -> None:
    platform = SimPlatform.create(tmp_path / "p", now=NOW)
    for policy in SealPolicy:
        assert runtime(platform).sealing_key(policy) != runtime(platform, debug=True).sealing_key(policy)


def test_labels_and_platforms_separate_keys(tmp_path: Path) -> None:
    one = SimPlatform.create(tmp_path / "one", now=NOW)
    two = SimPlatform.create(tmp_path / "two", now=NOW)
    assert runtime(one).sealing_key(label=b"a") != runtime(one).sealing_key(label=b"b")
    assert runtime(one).sealing_key() != runtime(two).sealing_key()
