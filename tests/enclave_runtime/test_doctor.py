"""``teelab doctor`` probes at the OS boundary. These run against a stand-in file tree, not hardware."""

from __future__ import annotations

from pathlib import Path

from teelab.enclave_runtime.doctor import HostView, all_statuses, cvm_status, gramine_status, render


def stand_in(tmp_path: Path, files: list[str], tools: dict[str, str], release: str = "6.8.0") -> HostView:
    for name in files:
        path = tmp_path / name.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    return HostView(root=tmp_path, which=tools.get, kernel_release=release)


def test_bare_machine_reports_why_each_hardware_backend_is_missing(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "cpuinfo").write_text("flags\t\t: fpu vme sse\n")
    statuses = {s.name: s for s in all_statuses(HostView(root=tmp_path, which=lambda _: None))}
    assert statuses["sim"].available
    assert not statuses["gramine"].available
    assert any("CPU reports no 'sgx' flag" in m for m in statuses["gramine"].missing)
    assert any("gramine-sgx is not on PATH" in m for m in statuses["gramine"].missing)
    assert any("occlum is not on PATH" in m for m in statuses["occlum"].missing)
    assert any("not inside a confidential VM" in m for m in statuses["cvm"].missing)
    text = render(list(statuses.values()))
    assert "usable backends: sim" in text and "NOT confidential" in text


def test_stand_in_sgx_host_with_gramine_is_usable(tmp_path: Path) -> None:
    view = stand_in(
        tmp_path,
        [
            "/dev/sgx_enclave",
            "/dev/sgx_provision",
            "/var/run/aesmd/aesm.socket",
            "/etc/sgx_default_qcnl.conf",
        ],
        {
            n: f"/usr/bin/{n}"
            for n in ("gramine-sgx", "gramine-manifest", "gramine-sgx-sign", "gramine-direct")
        },
    )
    status = gramine_status(view)
    assert status.available and not status.missing
    assert any("gramine-direct" in f and "no attestation" in f for f in status.found)


def test_stand_in_tdx_guest_on_an_old_kernel_names_the_kernel(tmp_path: Path) -> None:
    status = cvm_status(stand_in(tmp_path, ["/dev/tdx_guest"], {}, release="6.5.0-15-generic"))
    assert not status.available
    assert any("older than 6.7" in m for m in status.missing)


def test_stand_in_snp_guest_with_configfs_tsm_is_usable(tmp_path: Path) -> None:
    status = cvm_status(stand_in(tmp_path, ["/dev/sev-guest", "/sys/kernel/config/tsm/report/.keep"], {}))
    assert status.available and "SEV-SNP" in status.summary
