"""What an Occlum instance of an enclave image holds: ``Occlum.json``, the copy_bom file list, the launcher.

Occlum measures the whole image (LibOS, ``Occlum.json``, every file copied in) into MRENCLAVE, but **not** the
command line ``occlum run`` passes. So the only entry point is a measured launcher script in
``/teelab/bin``: its shebang names the interpreter (Occlum execs scripts through their ``#!`` line), and it
ignores whatever arguments the host adds, sets the interpreter's module path from the image and runs exactly
the image's module — the equivalent of Gramine's fixed ``loader.argv``.

Environment: the image's variables are ``env.default`` (measured); ``env.untrusted`` lets in only the image's
passthrough variables. ``{tee_tmp}`` is a RamFS mount (enclave memory) at ``/teelab/tmp``; ``{tee_state}`` is
``/teelab/state`` on Occlum's root file system, whose writable layer Occlum encrypts with its sealed "autokey"
(bound to MRSIGNER, not MRENCLAVE — a difference from Gramine, recorded in docs/backends.md).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from teelab.enclave_runtime.manifest import TEE_STATE, TEE_TMP, EnclaveManifest
from teelab.errors import EnclaveError

TEE_TMP_PATH = "/teelab/tmp"
TEE_STATE_PATH = "/teelab/state"
LAUNCHER_DIR = "/teelab/bin"
MIN_THREADS = 64
_SIZE = re.compile(r"[1-9][0-9]*[KMG]B")

# Occlum v0.31's etc/template/Occlum.json: the base when Occlum is not installed (tests, previews); a real
# build starts from the instance's own file, which `occlum new` writes for the installed version.
TEMPLATE: dict[str, Any] = {
    "resource_limits": {
        "kernel_space_heap_size": "32MB",
        "kernel_space_heap_max_size": "32MB",
        "kernel_space_stack_size": "1MB",
        "user_space_size": "300MB",
        "user_space_max_size": "300MB",
        "max_num_of_threads": 32,
        "init_num_of_threads": 2,
    },
    "process": {"default_stack_size": "4MB", "default_heap_size": "32MB", "default_mmap_size": "100MB"},
    "entry_points": ["/bin"],
    "env": {"default": ["OCCLUM=yes"], "untrusted": ["EXAMPLE"]},
    "metadata": {
        "product_id": 0,
        "version_number": 0,
        "debuggable": True,
        "enable_kss": False,
        "family_id": {"high": "0x0", "low": "0x0"},
        "ext_prod_id": {"high": "0x0", "low": "0x0"},
        "disable_log": False,
    },
    "feature": {"amx": 0, "pkru": 0, "io_uring": 0, "enable_edmm": False, "enable_posix_shm": False},
    "mount": [
        {
            "target": "/",
            "type": "unionfs",
            "options": {
                "layers": [
                    {"target": "/", "type": "sefs", "source": "./build/mount/__ROOT", "options": {"MAC": ""}},
                    {"target": "/", "type": "sefs", "source": "./run/mount/__ROOT"},
                ]
            },
        },
        {"target": "/host", "type": "hostfs", "source": "."},
        {"target": "/proc", "type": "procfs"},
        {"target": "/dev", "type": "devfs"},
    ],
}


@dataclass(frozen=True)
class OcclumOptions:
    debug: bool = False
    user_space_size: str = "6GB"  # pandas frames live here
    kernel_space_heap_size: str = "512MB"  # LibOS buffers, RamFS files, sockets
    kernel_space_stack_size: str = "1MB"
    max_num_of_threads: int = MIN_THREADS
    default_stack_size: str = "8MB"  # CPython's main-thread recursion limit assumes 8 MB
    default_heap_size: str = "256MB"
    # SGX Key Separation and Sharing: lets `occlum run --config-id` set the enclave's CONFIGID, which binds the
    # launching gateway's controller into every quote (SGX on Ice Lake SP and later servers has KSS).
    kss: bool = True

    def check(self) -> None:
        for name in (
            "user_space_size",
            "kernel_space_heap_size",
            "kernel_space_stack_size",
            "default_stack_size",
        ):
            if not _SIZE.fullmatch(getattr(self, name)):
                raise EnclaveError(f"{name} {getattr(self, name)!r} is not an Occlum size like 512MB or 6GB")
        if self.max_num_of_threads < MIN_THREADS:
            raise EnclaveError(
                f"max_num_of_threads {self.max_num_of_threads} is too few for ipykernel and BLAS pools; "
                f"use at least {MIN_THREADS}"
            )


def place(value: str) -> str:
    return value.replace(TEE_TMP, TEE_TMP_PATH).replace(TEE_STATE, TEE_STATE_PATH)


def launcher_name(manifest: EnclaveManifest) -> str:
    return f"{LAUNCHER_DIR}/{manifest.name}"


def occlum_json(
    manifest: EnclaveManifest, options: OcclumOptions | None = None, base: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``Occlum.json`` for the image: ``base`` (the instance's template) with every field teelab owns set."""
    options = options or OcclumOptions()
    options.check()
    config = copy.deepcopy(dict(base if base is not None else TEMPLATE))
    limits = config.setdefault("resource_limits", {})
    # Both the size and the max size: without EDMM Occlum uses the max as the static size when present.
    for key, value in (
        ("user_space_size", options.user_space_size),
        ("user_space_max_size", options.user_space_size),
        ("kernel_space_heap_size", options.kernel_space_heap_size),
        ("kernel_space_heap_max_size", options.kernel_space_heap_size),
        ("kernel_space_stack_size", options.kernel_space_stack_size),
    ):
        limits[key] = value
    limits["max_num_of_threads"] = options.max_num_of_threads
    process = config.setdefault("process", {})
    process["default_stack_size"] = options.default_stack_size
    process["default_heap_size"] = options.default_heap_size
    config["entry_points"] = [LAUNCHER_DIR]
    env = [f"{name}={place(value)}" for name, value in manifest.env]
    if "PYTHONNOUSERSITE" not in dict(manifest.env):
        env.append("PYTHONNOUSERSITE=1")  # what `python -s` would do; the launcher cannot pass flags
    config["env"] = {"default": env, "untrusted": list(manifest.passthrough_env)}
    metadata = config.setdefault("metadata", {})
    metadata["product_id"] = manifest.isv_prod_id
    metadata["version_number"] = manifest.isv_svn
    metadata["debuggable"] = options.debug
    metadata["enable_kss"] = options.kss
    # A production enclave writes no LibOS log for the host to read.
    metadata["disable_log"] = not options.debug
    feature = config.setdefault("feature", {})
    feature["enable_edmm"] = False
    # multiprocessing's locks and queues are POSIX semaphores in shared memory (Occlum's own multiprocessing
    # demo turns this on); Occlum keeps that memory inside the enclave.
    feature["enable_posix_shm"] = True
    mounts = [m for m in config.get("mount", []) if m.get("target") not in (TEE_TMP_PATH, "/tmp")]
    # Scratch space in enclave memory: /tmp for libraries that ignore TMPDIR, and the image's own.
    mounts.append({"target": "/tmp", "type": "ramfs"})
    mounts.append({"target": TEE_TMP_PATH, "type": "ramfs"})
    config["mount"] = mounts
    return config


def _yaml(value: str) -> str:
    # A JSON string is a valid YAML double-quoted scalar: paths with any character stay one scalar.
    return json.dumps(value, ensure_ascii=False)


def copy_bom(paths: Iterable[str], *, interpreter: str) -> str:
    """The copy_bom file list: every trusted file at its own path (copy_bom adds ELF dependencies)."""
    by_folder: dict[str, list[str]] = {}
    for path in sorted({*paths, interpreter}):
        by_folder.setdefault(str(PurePosixPath(path).parent), []).append(path)
    lines = ["includes:", "  - base.yaml", "targets:"]
    for folder, files in sorted(by_folder.items()):
        lines.append(f"  - target: {_yaml(folder)}")
        lines.append("    copy:")
        lines.append("      - files:")
        lines.extend(f"          - {_yaml(f)}" for f in files)
    return "\n".join(lines) + "\n"


def launcher_script(
    manifest: EnclaveManifest, *, interpreter: str, sys_path: Iterable[str], module: str | None = None
) -> str:
    """The measured entry point: runs the image's module, whatever command line the host passes."""
    if module is None:
        argv = list(manifest.argv)
        if "-m" not in argv or argv.index("-m") + 1 >= len(argv):
            raise EnclaveError("the Occlum backend runs images whose argv is `python [-s] -m MODULE`")
        flags = argv[1 : argv.index("-m")]
        if any(flag != "-s" for flag in flags):
            raise EnclaveError(f"the Occlum launcher cannot pass interpreter flags {flags}")
        module = argv[argv.index("-m") + 1]
    if len(interpreter) > 120 or any(c in interpreter for c in " \t\n"):
        raise EnclaveError(f"Occlum reads at most 127 bytes of a #! line and no spaces: {interpreter!r}")
    entries = list(sys_path)
    plain = [p for p in entries if PurePosixPath(p).name not in ("site-packages", "dist-packages")]
    sites = [p for p in entries if p not in plain]
    return (
        f"#!{interpreter}\n"
        f"# teelab launcher for the Occlum image {manifest.name!r}, written by `teelab enclave build --backend\n"
        "# occlum` and measured with the image. Occlum does not measure the command line, so this ignores it.\n"
        "import sys\n"
        f"sys.argv[:] = [{launcher_name(manifest)!r}]\n"
        f"sys.path[:] = {plain!r}\n"
        "import site\n"
        f"for folder in {sites!r}:\n"
        "    site.addsitedir(folder)  # runs the folder's .pth files (editable installs)\n"
        "import multiprocessing\n"
        "# Occlum has no fork() (ENOSYS); multiprocessing starts children with spawn (vfork + exec) instead.\n"
        "multiprocessing.set_start_method('spawn', force=True)\n"
        "import runpy\n"
        f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n"
    )
