"""Where a kernel inside a confidential VM keeps its scratch files: in guest memory, never on the VM's disk.

A confidential VM encrypts its memory, not its virtual disks: a disk-backed ``/tmp`` is a file on the host, who
reads what the kernel writes there (spilled frames, temporary files of libraries, the decrypted parts of a
dataset). The kernel's ``{tee_tmp}`` therefore goes on a memory file system (tmpfs or ramfs) — ``/tmp`` when
the guest mounts it so, else ``/dev/shm`` or ``/run`` — and the launch is refused when there is none.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from teelab.errors import EnclaveError

MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})
CANDIDATES = ("/tmp", "/dev/shm", "/run")


def _filesystem_of(path: str, mounts: list[tuple[str, str]]) -> str | None:
    """The file system type of the mount that holds ``path`` (the longest mount point above it)."""
    target = PurePosixPath(path)
    best: tuple[int, str] | None = None
    for point, fstype in mounts:
        mount = PurePosixPath(point)
        if mount == target or mount in target.parents:
            depth = len(mount.parts)
            if best is None or depth >= best[0]:
                best = (depth, fstype)
    return None if best is None else best[1]


def parse_mounts(text: str) -> list[tuple[str, str]]:
    """``(mount point, type)`` of each line of /proc/mounts (octal escapes in mount points decoded)."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            point = fields[1].encode().decode("unicode_escape")
            mounts.append((point, fields[2]))
    return mounts


def memory_scratch_parent(mounts_text: str) -> str:
    """The first candidate folder on a memory file system; EnclaveError when the guest has none."""
    mounts = parse_mounts(mounts_text)
    for candidate in CANDIDATES:
        if _filesystem_of(candidate, mounts) in MEMORY_FILESYSTEMS:
            return candidate
    raise EnclaveError(
        "no memory file system for the kernel's scratch files in this VM (/tmp, /dev/shm and /run are on disk): "
        "the VM's disk is readable by the host, its memory is not",
        hint="mount a tmpfs, e.g. `mount -t tmpfs -o mode=1777 tmpfs /tmp` (or tmp.mount in systemd)",
    )
