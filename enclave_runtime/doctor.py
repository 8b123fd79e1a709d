"""``teelab doctor``: which TEE backends this machine can run and, for each one it cannot, precisely why.

Probes look only at the OS boundary (device nodes, configfs, tools on PATH, the kernel version), through a
:class:`HostView` so tests can point them at a stand-in file tree.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from teelab.enclave_runtime.backend import BackendStatus


@dataclass(frozen=True)
class HostView:
    """The parts of the host the probes read."""

    root: Path = Path("/")
    which: Callable[[str], str | None] = shutil.which
    kernel_release: str = field(default_factory=platform.release)

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def exists(self, absolute: str) -> bool:
        return self.path(absolute).exists()

    def cpu_flags(self) -> set[str]:
        try:
            text = self.path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
        match = re.search(r"^flags\s*:\s*(.*)$", text, re.MULTILINE)
        return set(match.group(1).split()) if match else set()

    def kernel_at_least(self, major: int, minor: int) -> bool:
        match = re.match(r"(\d+)\.(\d+)", self.kernel_release)
        if match is None:
            return False
        return (int(match.group(1)), int(match.group(2))) >= (major, minor)


def _sgx_device(view: HostView, found: list[str], missing: list[str]) -> bool:
    if view.exists("/dev/sgx_enclave"):
        found.append("/dev/sgx_enclave (in-kernel SGX driver)")
        ok = True
    else:
        flags = view.cpu_flags()
        why = "the CPU reports no 'sgx' flag" if "sgx" not in flags else "the kernel exposes no SGX device"
        missing.append(
            f"no /dev/sgx_enclave: {why} (needs an SGX CPU, SGX enabled in firmware, Linux ≥ 5.11)"
        )
        ok = False
    if view.exists("/dev/sgx_provision"):
        found.append("/dev/sgx_provision (DCAP quoting enclave access)")
    else:
        missing.append("no /dev/sgx_provision: the quoting enclave cannot get its provisioning key")
        ok = False
    return ok


def _quote_provider(view: HostView, found: list[str], missing: list[str]) -> bool:
    ok = True
    if view.exists("/var/run/aesmd/aesm.socket"):
        found.append("aesmd is running (/var/run/aesmd/aesm.socket)")
    else:
        missing.append(
            "aesmd is not running (no /var/run/aesmd/aesm.socket): install and start sgx-aesm-service"
        )
        ok = False
    if view.exists("/etc/sgx_default_qcnl.conf"):
        found.append("DCAP quote provider configured (/etc/sgx_default_qcnl.conf)")
    else:
        missing.append(
            "no quote provider configured (/etc/sgx_default_qcnl.conf): install libsgx-dcap-default-qpl "
            "and point it at a PCCS"
        )
        ok = False
    return ok


def _tools(view: HostView, names: tuple[str, ...], found: list[str], missing: list[str]) -> bool:
    ok = True
    for name in names:
        location = view.which(name)
        if location:
            found.append(f"{name} ({location})")
        else:
            missing.append(f"{name} is not on PATH")
            ok = False
    return ok


def gramine_status(view: HostView) -> BackendStatus:
    found: list[str] = []
    missing: list[str] = []
    tools = _tools(view, ("gramine-sgx", "gramine-manifest", "gramine-sgx-sign"), found, missing)
    device = _sgx_device(view, found, missing)
    provider = _quote_provider(view, found, missing)
    if view.which("gramine-direct"):
        found.append("gramine-direct (development only: no attestation, policy refuses it unless told)")
    available = tools and device and provider
    summary = "SGX enclaves under Gramine" if available else "cannot run Gramine SGX enclaves here"
    return BackendStatus("gramine", available, summary, found, missing)


def occlum_status(view: HostView) -> BackendStatus:
    found: list[str] = []
    missing: list[str] = []
    tools = _tools(view, ("occlum",), found, missing)
    device = _sgx_device(view, found, missing)
    provider = _quote_provider(view, found, missing)
    available = tools and device and provider
    summary = "SGX enclaves under Occlum" if available else "cannot run Occlum SGX enclaves here"
    return BackendStatus("occlum", available, summary, found, missing)


def cvm_status(view: HostView) -> BackendStatus:
    found: list[str] = []
    missing: list[str] = []
    guest = ""
    if view.exists("/dev/sev-guest"):
        guest = "SEV-SNP"
        found.append("/dev/sev-guest (inside an SEV-SNP guest)")
    if view.exists("/dev/tdx_guest"):
        guest = "TDX"
        found.append("/dev/tdx_guest (inside a TDX guest)")
    tsm = view.exists("/sys/kernel/config/tsm/report")
    if tsm:
        found.append("configfs-tsm reports (/sys/kernel/config/tsm/report)")
    if not guest and not tsm:
        missing.append("not inside a confidential VM: no /dev/sev-guest, /dev/tdx_guest or configfs-tsm")
    elif not tsm:
        if not view.kernel_at_least(6, 7):
            missing.append(
                f"kernel {view.kernel_release} is older than 6.7: no configfs-tsm (TDX quotes need it)"
            )
        elif not view.exists("/sys/kernel/config/tsm"):
            missing.append(
                "configfs is not mounted at /sys/kernel/config, or the kernel lacks CONFIG_TSM_REPORTS"
            )
        else:
            missing.append("configfs-tsm has no report provider (is the sev-guest/tdx-guest driver loaded?)")
    available = bool(tsm) or guest == "SEV-SNP"
    summary = f"a {guest or 'confidential'} VM guest" if available else "not a confidential VM guest"
    return BackendStatus("cvm", available, summary, found, missing)


def all_statuses(view: HostView | None = None) -> list[BackendStatus]:
    from teelab.enclave_runtime.sim.backend import SimBackend

    view = view or HostView()
    return [SimBackend.status(), gramine_status(view), occlum_status(view), cvm_status(view)]


def render(statuses: list[BackendStatus]) -> str:
    lines = []
    for status in statuses:
        mark = "yes" if status.available else "no "
        lines.append(f"{status.name:<8} {mark}  {status.summary}")
        lines.extend(f"           + {item}" for item in status.found)
        lines.extend(f"           - {item}" for item in status.missing)
    usable = [s.name for s in statuses if s.available]
    lines.append("")
    lines.append(f"usable backends: {', '.join(usable) if usable else 'none'}")
    if usable == ["sim"]:
        lines.append("only the simulated TEE runs here: sessions work end to end but are NOT confidential.")
    return os.linesep.join(lines)
