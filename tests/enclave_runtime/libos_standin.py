"""A stand-in for what a LibOS (Gramine, Occlum) takes away from a process: AF_NETLINK.

Gramine has no netlink sockets, so glibc's ``getifaddrs()`` fails with ``EAFNOSUPPORT`` there (observed under
gramine-direct v1.9, research/tee_runtimes.md §1.7). An ``LD_PRELOAD`` library makes an ordinary process see
the same: ``socket(AF_NETLINK, …)`` and ``getifaddrs()`` fail with that errno. (glibc's ``getifaddrs`` opens
its netlink socket internally, past any preload, so it is replaced too.) Built with the system C compiler.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

NO_NETLINK_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <ifaddrs.h>
#include <sys/socket.h>

int socket(int domain, int type, int protocol) {
    static int (*real)(int, int, int);
    if (domain == AF_NETLINK) { errno = EAFNOSUPPORT; return -1; }
    if (!real) real = (int (*)(int, int, int))dlsym(RTLD_NEXT, "socket");
    return real(domain, type, protocol);
}
int getifaddrs(struct ifaddrs **ifap) { (void)ifap; errno = EAFNOSUPPORT; return -1; }
void freeifaddrs(struct ifaddrs *ifa) { (void)ifa; }
"""


def build_no_netlink(folder: Path) -> Path:
    """Compile the preload library into ``folder``; the path to put in ``LD_PRELOAD``."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("the no-netlink stand-in needs a C compiler (cc) on PATH")
    source = folder / "no_netlink.c"
    library = folder / "no_netlink.so"
    source.write_text(NO_NETLINK_C)
    subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(library), str(source), "-ldl"], check=True)
    return library


# What Gramine's loader checks before the first instruction of the application, as a stand-in launcher runs it
# (source text, so a stand-in script can exec it): mount order and the file policy of the entrypoint. Gramine
# applies fs.mounts in order, and with file policy on (direct mode too, v1.9) it refuses to open a file that is
# neither trusted nor allowed: "Disallowing access to file '…'; file is not allowed".
GRAMINE_LOADER_CHECKS = r"""
def gramine_loader_errors(doc):
    from pathlib import PurePosixPath
    errors = []
    mounts = [m["path"] for m in doc.get("fs", {}).get("mounts", [])]
    for i, path in enumerate(mounts):
        for later in mounts[i + 1:]:
            if later == path or PurePosixPath(later) in PurePosixPath(path).parents:
                errors.append(f"mount {path} is hidden by the later mount {later}")
    sgx = doc.get("sgx", {})
    covered = [t if isinstance(t, str) else t["uri"] for t in sgx.get("trusted_files", [])]
    covered += list(sgx.get("allowed_files", []))
    entry = "file:" + doc["libos"]["entrypoint"]
    if not any(entry == c or (c.endswith("/") and entry.startswith(c)) for c in covered):
        name = doc["libos"]["entrypoint"].rsplit("/", 1)[-1]
        errors.append(f"Disallowing access to file '{name}'; file is not allowed. init_exec_handle: Permission denied")
    return errors
"""


def gramine_loader_errors(doc: dict[str, object]) -> list[str]:
    scope: dict[str, object] = {}
    exec(GRAMINE_LOADER_CHECKS, scope)  # the stand-in's own source text above
    check = scope["gramine_loader_errors"]
    assert callable(check)
    result: list[str] = check(doc)
    return result


NO_FORK_C = r"""
#include <errno.h>
#include <sys/types.h>
pid_t fork(void) { errno = ENOSYS; return -1; }
"""


def build_no_fork(folder: Path) -> Path:
    """A preload library for Occlum's process model: ``fork()`` fails with ENOSYS (Occlum's
    ``handle_unsupported``); ``vfork`` and ``posix_spawn`` work, as in Occlum."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("the no-fork stand-in needs a C compiler (cc) on PATH")
    source = folder / "no_fork.c"
    library = folder / "no_fork.so"
    source.write_text(NO_FORK_C)
    subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(library), str(source)], check=True)
    return library


# Gramine's pseudo file systems and what teelab mounts in enclave memory: never checked against the file lists.
GRAMINE_UNCHECKED = ("/proc/", "/dev/", "/sys/", "/teelab/")


def gramine_file_allowed(path: str, doc: dict[str, Any]) -> bool:
    """Whether Gramine's strict file policy lets the enclave open ``path`` (a host path, as the manifest
    names files): listed as a trusted/allowed file, or under a trusted/allowed directory entry."""
    sgx = doc["sgx"]
    uris = [t if isinstance(t, str) else t["uri"] for t in sgx.get("trusted_files", [])]
    uris += list(sgx.get("allowed_files", []))
    target = "file:" + path
    return any(target == uri or (uri.endswith("/") and target.startswith(uri)) for uri in uris)
