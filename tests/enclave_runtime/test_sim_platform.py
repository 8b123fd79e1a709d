"""The simulated platform: created on first use, private on disk, safe to create concurrently, and a
damaged file is reported by name."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from teelab.enclave_runtime.sim.platform import METADATA, SimPlatform, default_path, known_root_fingerprints
from teelab.errors import PlatformError

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
PRIVATE = (
    "root-ca.key.pem",
    "pck-ca.key.pem",
    "pck.key.pem",
    "tcb-signing.key.pem",
    "attestation.key.pem",
    "platform-secret.bin",
)


def test_created_on_first_use_under_the_data_dir(teelab_dirs: Path) -> None:
    assert not default_path().exists()
    platform = SimPlatform.open(now=NOW)
    assert platform.path == teelab_dirs / "sim-platform"
    assert known_root_fingerprints() == {
        platform.root_fingerprint: f"teelab simulated platform ({platform.path})"
    }
    assert SimPlatform.open().root_fingerprint == platform.root_fingerprint  # loaded, not re-created


def test_directory_is_0700_and_private_files_0600(tmp_path: Path) -> None:
    platform = SimPlatform.create(tmp_path / "p", now=NOW)
    assert stat.S_IMODE(platform.path.stat().st_mode) == 0o700
    for name in PRIVATE:
        assert stat.S_IMODE((platform.path / name).stat().st_mode) == 0o600, name


CREATE = """
import sys
from datetime import UTC, datetime
from pathlib import Path
from teelab.enclave_runtime.sim.platform import SimPlatform
print(SimPlatform.open(Path(sys.argv[1]), now=datetime(2026, 3, 1, tzinfo=UTC)).root_fingerprint)
"""


def test_concurrent_creation_yields_one_complete_platform(tmp_path: Path) -> None:
    path = tmp_path / "race"
    workers = [
        subprocess.Popen([sys.executable, "-c", CREATE, str(path)], stdout=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    outputs = [worker.communicate(timeout=120)[0].strip() for worker in workers]
    assert [worker.returncode for worker in workers] == [0] * 6
    assert len(set(outputs)) == 1
    assert SimPlatform.load(path).root_fingerprint == outputs[0]
    assert [p.name for p in tmp_path.iterdir()] == ["race"]  # no temporary folders left behind


@pytest.mark.parametrize(
    "name", ["pck.key.pem", "pck.pem", "attestation.key.pem", "qe-report.bin", "root-ca.pem"]
)
def test_a_damaged_file_is_named_in_the_error(tmp_path: Path, name: str) -> None:
    platform = SimPlatform.create(tmp_path / "p", now=NOW)
    target = platform.path / name
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(PlatformError) as raised:
        SimPlatform.load(platform.path)
    assert str(target) in str(raised.value)
    assert raised.value.hint and "teelab sim reset" in raised.value.hint


def test_a_missing_file_is_named_in_the_error(tmp_path: Path) -> None:
    platform = SimPlatform.create(tmp_path / "p", now=NOW)
    (platform.path / "tcb-signing.pem").unlink()
    with pytest.raises(PlatformError, match=r"tcb-signing\.pem"):
        SimPlatform.load(platform.path)


def test_unreadable_metadata_is_named_in_the_error(tmp_path: Path) -> None:
    platform = SimPlatform.create(tmp_path / "p", now=NOW)
    (platform.path / METADATA).write_text("{not json")
    with pytest.raises(PlatformError, match=METADATA):
        SimPlatform.load(platform.path)


def test_collateral_is_reissued_when_it_expires(tmp_path: Path) -> None:
    platform = SimPlatform.create(tmp_path / "p", now=NOW)
    first = platform.collateral(NOW)
    assert first.issued == NOW and first.valid_at(NOW + timedelta(days=29))
    assert platform.collateral(NOW + timedelta(days=29)).issued == NOW  # still valid: reused
    later = NOW + timedelta(days=45)
    second = platform.collateral(later)
    assert second.issued == later
    tcb_info = json.loads(second.bundle["tcb_info"])
    assert (
        tcb_info["issueDate"] == "2026-04-15T12:00:00Z" and tcb_info["nextUpdate"] == "2026-05-15T12:00:00Z"
    )
    assert json.loads((platform.path / "collateral.json").read_text()) == second.bundle


def test_collateral_documents_have_intels_shapes(tmp_path: Path) -> None:
    platform = SimPlatform.create(tmp_path / "p", now=NOW)
    bundle = platform.collateral(NOW).bundle
    tcb_info = json.loads(bundle["tcb_info"])
    assert tcb_info["id"] == "SGX" and tcb_info["version"] == 3
    assert tcb_info["fmspc"] == platform.tcb.fmspc.hex().upper()
    assert [c["svn"] for c in tcb_info["tcbLevels"][0]["tcb"]["sgxtcbcomponents"]] == list(
        platform.tcb.comp_svns
    )
    qe = json.loads(bundle["qe_identity"])
    assert qe["id"] == "QE" and qe["version"] == 2 and qe["isvprodid"] == 1
    root_crl = x509.load_der_x509_crl(bytes.fromhex(bundle["root_ca_crl"]))
    pck_crl = x509.load_der_x509_crl(bytes.fromhex(bundle["pck_crl"]))
    assert root_crl.issuer == platform.root.certificate.subject
    assert pck_crl.issuer == platform.pck_ca.certificate.subject
    assert root_crl.is_signature_valid(platform.root.certificate.public_key())  # type: ignore[arg-type]


def test_revoked_collateral_lists_the_pck_certificate(tmp_path: Path) -> None:
    platform = SimPlatform.create(tmp_path / "p", now=NOW)
    serial = platform.pck.certificate.serial_number
    crl = x509.load_der_x509_crl(
        bytes.fromhex(platform.issue_collateral(NOW, revoked_pck_serials=(serial,)).bundle["pck_crl"])
    )
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None


def test_temporary_folder_of_a_failed_creation_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "rename", explode)
    with pytest.raises(OSError):
        SimPlatform.create(tmp_path / "p", now=NOW)
    assert list(tmp_path.iterdir()) == []
