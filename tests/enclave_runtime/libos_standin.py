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
