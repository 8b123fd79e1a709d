"""``teelab doctor`` probes at the OS boundary. These run against a stand-in file tree, not hardware."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from teelab.enclave_runtime.doctor import (
    HostView,
    all_statuses,
    cvm_status,
    gramine_status,
    occlum_status,
    render,
)

SGX_HOST = [
    "/dev/sgx_enclave",
    "/dev/sgx_provision",
    "/var/run/aesmd/aesm.socket",
    "/usr/lib/x86_64-linux-gnu/libdcap_quoteprov.so.1",
]
QCNL = json.dumps({"pccs_url": "https://pccs.example:8081/sgx/certification/v4/", "use_secure_cert": False})


def stand_in(
    tmp_path: Path,
    files: list[str],
    tools: dict[str, str],
    release: str = "6.8.0",
    *,
    euid: int = 0,
    cpuinfo: str | None = None,
    qcnl: str | None = QCNL,
    max_map_count: int | None = 1048576,
) -> HostView:
    for name in files:
        path = tmp_path / name.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    tmp_path.mkdir(parents=True, exist_ok=True)
    if cpuinfo is not None:
        (tmp_path / "proc").mkdir(exist_ok=True)
        (tmp_path / "proc" / "cpuinfo").write_text(cpuinfo)
    if max_map_count is not None:
        (tmp_path / "proc" / "sys" / "vm").mkdir(parents=True, exist_ok=True)
        (tmp_path / "proc" / "sys" / "vm" / "max_map_count").write_text(f"{max_map_count}\n")
    if qcnl is not None:
        (tmp_path / "etc").mkdir(exist_ok=True)
        (tmp_path / "etc" / "sgx_default_qcnl.conf").write_text(qcnl)
    return HostView(
        root=tmp_path, which=tools.get, kernel_release=release, euid=euid, access=lambda p, m: False
    )


def gramine_tools(*extra: str) -> dict[str, str]:
    return {n: f"/usr/bin/{n}" for n in ("gramine-sgx", "gramine-manifest", "gramine-sgx-sign", *extra)}


def test_bare_machine_reports_why_each_hardware_backend_is_missing(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "cpuinfo").write_text("flags\t\t: fpu vme sse\n")
    statuses = {s.name: s for s in all_statuses(HostView(root=tmp_path, which=lambda _: None))}
    assert statuses["sim"].available
    assert not statuses["gramine"].available
    assert any("CPU reports no 'sgx' flag" in m for m in statuses["gramine"].missing)
    assert any("gramine-sgx is not on PATH" in m for m in statuses["gramine"].missing)
    assert any("aesmd is not running" in m for m in statuses["gramine"].missing)
    assert any("no quote provider configured" in m for m in statuses["gramine"].missing)
    assert any("occlum is not on PATH" in m for m in statuses["occlum"].missing)
    assert any("copy_bom is not on PATH" in m for m in statuses["occlum"].missing)
    assert any("not inside a confidential VM" in m for m in statuses["cvm"].missing)
    text = render(list(statuses.values()))
    assert "usable backends: sim" in text and "NOT confidential" in text


def test_stand_in_sgx_host_with_gramine_is_usable(tmp_path: Path) -> None:
    status = gramine_status(stand_in(tmp_path, SGX_HOST, gramine_tools("gramine-direct")))
    assert status.available and not status.missing, status.missing
    assert any("gramine-direct" in f and "no attestation" in f for f in status.found)
    assert any("PCCS https://pccs.example:8081/" in f for f in status.found)


@pytest.mark.parametrize(
    ("missing_file", "message"),
    [
        ("/dev/sgx_enclave", "no /dev/sgx_enclave: the kernel exposes no SGX device"),
        ("/dev/sgx_provision", "no /dev/sgx_provision"),
        ("/var/run/aesmd/aesm.socket", "aesmd is not running"),
        ("/usr/lib/x86_64-linux-gnu/libdcap_quoteprov.so.1", "no DCAP quote provider library"),
    ],
)
def test_each_missing_sgx_piece_is_named(tmp_path: Path, missing_file: str, message: str) -> None:
    files = [f for f in SGX_HOST if f != missing_file]
    view = stand_in(tmp_path, files, gramine_tools(), cpuinfo="flags : fpu sgx sgx_lc\n")
    status = gramine_status(view)
    assert not status.available
    assert [m for m in status.missing if message in m], status.missing


def test_missing_tools_and_quote_configuration_are_named(tmp_path: Path) -> None:
    status = gramine_status(stand_in(tmp_path, SGX_HOST, {"gramine-sgx": "/usr/bin/gramine-sgx"}, qcnl="{}"))
    assert "gramine-manifest is not on PATH (install Gramine" in " ".join(status.missing)
    assert any("names no PCCS" in m for m in status.missing)
    flc = gramine_status(stand_in(tmp_path / "b", [], gramine_tools(), cpuinfo="flags : sgx\n"))
    assert any("Flexible Launch Control" in m for m in flc.missing)


def test_occlum_on_an_flc_host_does_not_need_aesmd(tmp_path: Path) -> None:
    files = [f for f in SGX_HOST if "aesm" not in f]
    status = occlum_status(
        stand_in(tmp_path, files, {"occlum": "/opt/occlum/build/bin/occlum", "copy_bom": "/x"})
    )
    assert status.available, status.missing
    assert any("not needed for DCAP on FLC" in f for f in status.found)


def test_stand_in_tdx_guest_on_an_old_kernel_names_the_kernel(tmp_path: Path) -> None:
    status = cvm_status(stand_in(tmp_path, ["/dev/tdx_guest"], {}, release="6.5.0-15-generic"))
    assert not status.available
    assert any("older than 6.7" in m and "TDX quotes need it" in m for m in status.missing)


def test_stand_in_snp_guest_with_configfs_tsm_is_usable(tmp_path: Path) -> None:
    status = cvm_status(stand_in(tmp_path, ["/dev/sev-guest", "/sys/kernel/config/tsm/report/.keep"], {}))
    assert status.available and "SEV-SNP" in status.summary


def test_configfs_not_mounted_and_missing_tsm_are_told_apart(tmp_path: Path) -> None:
    unmounted = stand_in(tmp_path / "a", ["/dev/tdx_guest", "/proc/mounts"], {})
    assert any("configfs is not mounted" in m for m in cvm_status(unmounted).missing)
    (tmp_path / "b" / "proc").mkdir(parents=True)
    (tmp_path / "b" / "proc" / "mounts").write_text("configfs /sys/kernel/config configfs rw 0 0\n")
    no_tsm = stand_in(tmp_path / "b", ["/dev/tdx_guest", "/sys/kernel/config/.keep"], {})
    assert any("CONFIG_TSM_REPORTS" in m for m in cvm_status(no_tsm).missing)
    no_provider = stand_in(tmp_path / "c", ["/dev/tdx_guest", "/sys/kernel/config/tsm/.keep"], {})
    assert any("no report provider" in m for m in cvm_status(no_provider).missing)
    no_driver = stand_in(tmp_path / "d", ["/sys/kernel/config/tsm/report/.keep"], {})
    assert any("driver is not loaded" in m for m in cvm_status(no_driver).missing)


def test_configfs_tsm_as_an_unprivileged_user_says_it_needs_root(tmp_path: Path) -> None:
    view = stand_in(tmp_path, ["/dev/tdx_guest", "/sys/kernel/config/tsm/report/.keep"], {}, euid=1000)
    status = cvm_status(view)
    assert not status.available and any("need root" in m for m in status.missing)


def test_each_hardware_backend_says_how_it_binds_the_controller(tmp_path: Path) -> None:
    statuses = {s.name: s for s in all_statuses(HostView(root=tmp_path, which=lambda _: None))}
    assert any(f.startswith("controller binding: measurement") for f in statuses["gramine"].found)
    assert any("occlum run --config-id" in f for f in statuses["occlum"].found)
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "sev-guest").write_bytes(b"")
    cvm = {s.name: s for s in all_statuses(HostView(root=tmp_path, which=lambda _: None))}["cvm"]
    assert "controller binding: HOST_DATA, set by the VMM when it created this VM" in cvm.found


def test_gramine_needs_vm_max_map_count_raised_for_forks_and_says_how(tmp_path: Path) -> None:
    """Linux's default 65530 is what made a fork under gramine-direct fail (tee_runtimes.md §1.7)."""
    status = gramine_status(stand_in(tmp_path, SGX_HOST, gramine_tools(), max_map_count=65530))
    assert not status.available
    assert [m for m in status.missing if m.startswith("vm.max_map_count = 65530")] == [
        "vm.max_map_count = 65530: a fork or subprocess in the kernel fails (the child enclave's memory needs "
        "more mappings, mmap returns ENOMEM); fix: sysctl -w vm.max_map_count=1048576 (as root; to keep it, "
        "echo vm.max_map_count=1048576 > /etc/sysctl.d/60-teelab-gramine.conf)"
    ]
    raised = gramine_status(stand_in(tmp_path, SGX_HOST, gramine_tools(), max_map_count=1048576))
    assert raised.available and "vm.max_map_count = 1048576 (a fork under Gramine needs many mappings)" in (
        raised.found
    )
