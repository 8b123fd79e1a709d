"""``teelab doctor``: which TEE backends this machine can run and, for each one it cannot, precisely why.

Probes look only at the OS boundary (device nodes, configfs, /proc, tools on PATH, configuration files, the
kernel version), through a :class:`HostView` so tests can point them at a stand-in file tree. Each missing
item is named with what provides it; items that are present are listed too, so a report explains itself.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from teelab.enclave_runtime.backend import BackendStatus

QCNL_CONFIG = "/etc/sgx_default_qcnl.conf"
AESM_SOCKET = "/var/run/aesmd/aesm.socket"
QUOTE_PROVIDER_LIBS = (
    "/usr/lib/x86_64-linux-gnu/libdcap_quoteprov.so.1",
    "/usr/lib64/libdcap_quoteprov.so.1",
    "/usr/lib/libdcap_quoteprov.so.1",
)
TSM_REPORT = "/sys/kernel/config/tsm/report"
MAX_MAP_COUNT = "/proc/sys/vm/max_map_count"
# A fork under Gramine re-creates the parent's memory in the child enclave as one-page mappings: ~65k for a
# threaded CPython kernel under gramine-direct, above Linux's default of 65530, and the child died with
# -ENOMEM from mmap (research/tee_runtimes.md §1.7). 16x the default leaves room for the 8G enclave's heap.
MIN_MAX_MAP_COUNT = 1048576
MAX_MAP_COUNT_FIX = (
    f"sysctl -w vm.max_map_count={MIN_MAX_MAP_COUNT} (as root; to keep it, "
    f"echo vm.max_map_count={MIN_MAX_MAP_COUNT} > /etc/sysctl.d/60-teelab-gramine.conf)"
)


@dataclass(frozen=True)
class HostView:
    """The parts of the host the probes read."""

    root: Path = Path("/")
    which: Callable[[str], str | None] = shutil.which
    kernel_release: str = field(default_factory=platform.release)
    euid: int = field(default_factory=os.geteuid)
    access: Callable[[Path, int], bool] = os.access

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def exists(self, absolute: str) -> bool:
        return self.path(absolute).exists()

    def read(self, absolute: str) -> str | None:
        try:
            return self.path(absolute).read_text(errors="replace")
        except OSError:
            return None

    def writable(self, absolute: str) -> bool:
        return self.euid == 0 or self.access(self.path(absolute), os.W_OK)

    def cpu_flags(self) -> set[str]:
        text = self.read("/proc/cpuinfo") or ""
        match = re.search(r"^flags\s*:\s*(.*)$", text, re.MULTILINE)
        return set(match.group(1).split()) if match else set()

    def mounted(self, fstype: str, where: str) -> bool | None:
        """Whether /proc/mounts lists ``fstype`` at ``where``; None when /proc/mounts cannot be read."""
        text = self.read("/proc/mounts")
        if text is None:
            return None
        return any(
            len(fields) >= 3 and fields[1] == where and fields[2] == fstype
            for fields in (line.split() for line in text.splitlines())
        )

    def kernel_at_least(self, major: int, minor: int) -> bool:
        match = re.match(r"(\d+)\.(\d+)", self.kernel_release)
        if match is None:
            return False
        return (int(match.group(1)), int(match.group(2))) >= (major, minor)


def _sgx_device(view: HostView, found: list[str], missing: list[str]) -> bool:
    flags = view.cpu_flags()
    ok = True
    if view.exists("/dev/sgx_enclave"):
        found.append("/dev/sgx_enclave (in-kernel SGX driver)")
    else:
        if "sgx" not in flags:
            why = "the CPU reports no 'sgx' flag (no SGX CPU, or SGX disabled in the firmware setup)"
        elif "sgx_lc" not in flags:
            why = "the CPU lacks Flexible Launch Control ('sgx_lc'), which Linux's SGX driver requires"
        else:
            why = "the kernel exposes no SGX device (needs Linux ≥ 5.11 with CONFIG_X86_SGX)"
        missing.append(f"no /dev/sgx_enclave: {why}")
        ok = False
    if view.exists("/dev/sgx_provision"):
        found.append("/dev/sgx_provision (the quoting enclave can get its provisioning key)")
    else:
        missing.append(
            "no /dev/sgx_provision: the DCAP quoting enclave cannot get its provisioning key (in-kernel driver, "
            "and the user needs the sgx_prv group)"
        )
        ok = False
    return ok


def _quote_provider(view: HostView, found: list[str], missing: list[str]) -> bool:
    ok = True
    library = next((lib for lib in QUOTE_PROVIDER_LIBS if view.exists(lib)), None)
    if library:
        found.append(f"DCAP quote provider library ({library})")
    else:
        missing.append(
            "no DCAP quote provider library (libdcap_quoteprov.so.1): install libsgx-dcap-default-qpl "
            "from Intel's SGX repository"
        )
        ok = False
    text = view.read(QCNL_CONFIG)
    if text is None:
        missing.append(f"no quote provider configured ({QCNL_CONFIG}): point it at a PCCS (pccs_url)")
        return False
    url = _pccs_url(text)
    if url:
        found.append(f"quote provider configured: PCCS {url} ({QCNL_CONFIG})")
    else:
        missing.append(f"{QCNL_CONFIG} names no PCCS (no pccs_url): quotes cannot get their certificates")
        ok = False
    return ok


def _pccs_url(text: str) -> str | None:
    try:
        document = json.loads(text)
    except ValueError:
        match = re.search(r"^\s*PCCS_URL\s*=\s*(\S+)", text, re.MULTILINE)
        return match.group(1) if match else None
    url = document.get("pccs_url") if isinstance(document, dict) else None
    return str(url) if url else None


def _aesmd(view: HostView, found: list[str], missing: list[str], *, required: bool) -> bool:
    if view.exists(AESM_SOCKET):
        found.append(f"aesmd is running ({AESM_SOCKET})")
        return True
    message = f"aesmd is not running (no {AESM_SOCKET}): install and start sgx-aesm-service"
    if required:
        missing.append(message)
        return False
    found.append(f"aesmd not running ({AESM_SOCKET} absent); not needed for DCAP on FLC CPUs")
    return True


def _tools(
    view: HostView, names: tuple[str, ...], found: list[str], missing: list[str], *, provides: str
) -> bool:
    ok = True
    for name in names:
        location = view.which(name)
        if location:
            found.append(f"{name} ({location})")
        else:
            missing.append(f"{name} is not on PATH ({provides})")
            ok = False
    return ok


def _max_map_count(view: HostView, found: list[str], missing: list[str]) -> bool:
    text = view.read(MAX_MAP_COUNT)
    try:
        value = int((text or "").strip())
    except ValueError:
        found.append(f"cannot read {MAX_MAP_COUNT}; forks in the kernel need it ≥ {MIN_MAX_MAP_COUNT}")
        return True
    if value >= MIN_MAX_MAP_COUNT:
        found.append(f"vm.max_map_count = {value} (a fork under Gramine needs many mappings)")
        return True
    missing.append(
        f"vm.max_map_count = {value}: a fork or subprocess in the kernel fails (the child enclave's memory "
        f"needs more mappings, mmap returns ENOMEM); fix: {MAX_MAP_COUNT_FIX}"
    )
    return False


def gramine_status(view: HostView) -> BackendStatus:
    found: list[str] = []
    missing: list[str] = []
    tools = _tools(
        view,
        ("gramine-sgx", "gramine-manifest", "gramine-sgx-sign"),
        found,
        missing,
        provides="install Gramine ≥ 1.8: `apt-get install gramine` from packages.gramineproject.io",
    )
    device = _sgx_device(view, found, missing)
    aesmd = _aesmd(view, found, missing, required=True)
    provider = _quote_provider(view, found, missing)
    mappings = _max_map_count(view, found, missing)
    if view.which("gramine-direct"):
        found.append("gramine-direct (development only: no attestation, policy refuses it unless told)")
    found.append(
        "controller binding: measurement (Gramine sets no CONFIGID; build with `teelab enclave build "
        "--controller HEX`)"
    )
    available = tools and device and aesmd and provider and mappings
    summary = "SGX enclaves under Gramine" if available else "cannot run Gramine SGX enclaves here"
    return BackendStatus("gramine", available, summary, found, missing)


def occlum_status(view: HostView) -> BackendStatus:
    found: list[str] = []
    missing: list[str] = []
    tools = _tools(
        view,
        ("occlum", "copy_bom"),
        found,
        missing,
        provides="install Occlum ≥ 0.30 (its Docker image, or the occlum packages)",
    )
    device = _sgx_device(view, found, missing)
    flc = "sgx_lc" in view.cpu_flags() or view.exists("/dev/sgx_enclave")
    aesmd = _aesmd(view, found, missing, required=not flc)
    provider = _quote_provider(view, found, missing)
    found.append("controller binding: CONFIGID (`occlum run --config-id`; the CPU needs SGX KSS)")
    available = tools and device and aesmd and provider
    summary = "SGX enclaves under Occlum" if available else "cannot run Occlum SGX enclaves here"
    return BackendStatus("occlum", available, summary, found, missing)


def cvm_status(view: HostView) -> BackendStatus:
    found: list[str] = []
    missing: list[str] = []
    flags = view.cpu_flags()
    guest = ""
    if view.exists("/dev/sev-guest"):
        guest = "SEV-SNP"
        found.append("/dev/sev-guest (inside an SEV-SNP guest; sealing keys available)")
    if view.exists("/dev/tdx_guest") or "tdx_guest" in flags:
        guest = "TDX"
        found.append(
            "inside a TDX guest (/dev/tdx_guest or the 'tdx_guest' CPU flag); no sealing keys on TDX"
        )
    tsm = view.exists(TSM_REPORT)
    if tsm:
        found.append(f"configfs-tsm reports ({TSM_REPORT})")
        if not view.writable(TSM_REPORT):
            missing.append(f"configfs-tsm reports need root: cannot create entries in {TSM_REPORT}")
    if not guest and not tsm:
        missing.append("not inside a confidential VM: no /dev/sev-guest, /dev/tdx_guest or configfs-tsm")
    elif not tsm:
        if not view.kernel_at_least(6, 7):
            missing.append(
                f"kernel {view.kernel_release} is older than 6.7: no configfs-tsm"
                + (" (TDX quotes need it)" if guest == "TDX" else " (SNP falls back to /dev/sev-guest)")
            )
        elif view.mounted("configfs", "/sys/kernel/config") is False or not view.exists("/sys/kernel/config"):
            missing.append("configfs is not mounted: mount -t configfs none /sys/kernel/config")
        elif not view.exists("/sys/kernel/config/tsm"):
            missing.append("the kernel has no configfs-tsm (CONFIG_TSM_REPORTS is off)")
        else:
            missing.append(
                "configfs-tsm has no report provider: load the guest driver (modprobe sev-guest or tdx-guest)"
            )
    elif not guest:
        missing.append(
            "configfs-tsm is present but no guest driver device is: the provider's driver is not loaded "
            "(modprobe sev-guest or tdx-guest)"
        )
    if guest == "TDX":
        available = tsm and view.writable(TSM_REPORT)
    elif guest == "SEV-SNP":
        device = view.writable("/dev/sev-guest")
        available = (tsm and view.writable(TSM_REPORT)) or device
        if not device:
            missing.append("/dev/sev-guest is not writable: SNP reports and sealing keys need root")
    else:
        available = False
    if guest:
        field = "MRCONFIGID" if guest == "TDX" else "HOST_DATA"
        found.append(f"controller binding: {field}, set by the VMM when it created this VM")
    summary = f"inside a {guest} confidential VM" if available else "cannot attest a confidential VM here"
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
