"""The image specs teelab knows how to build: a Python interpreter running one module.

The kernel's image runs ``python -s -m teelab.kernel.boot`` (the module name is only a string here:
``enclave_runtime`` imports no other part). The interpreter's path is part of the measurement, so the
image is reproducible across machines whose environments sit at the same paths. Its trusted files are
what that interpreter can import — its ``sys.path`` (stdlib, lib-dynload, site-packages) and the folders
teelab's packages live in — found by asking the interpreter itself, as Gramine's
``python.get_sys_path()`` does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from teelab.enclave_runtime.manifest import TEE_STATE, TEE_TMP, ImageSpec
from teelab.errors import EnclaveError

KERNEL_IMAGE = "python-kernel"
KERNEL_MODULE = "teelab.kernel.boot"
# The untrusted input of the kernel boot: the nonce and the address to answer on (ARCHITECTURE §3).
KERNEL_INPUTS = ("TEELAB_BOOT_REQUEST",)
# Packages of teelab that run inside the TEE; the server-side extension does not.
_IN_TEE_PACKAGES = (
    "teelab",
    "teelab.enclave_runtime",
    "teelab.gateway",
    "teelab.kernel",
    "teelab.sealed_store",
)

_PROBE = r"""
import importlib.util, json, os, sys
names = json.loads(sys.argv[1])
locations = {}
for name in names:
    try:
        spec = importlib.util.find_spec(name)
    except ImportError:
        spec = None
    if spec is not None and spec.submodule_search_locations:
        locations[name] = [os.path.realpath(p) for p in spec.submodule_search_locations]
stdlib = os.path.realpath(os.path.dirname(os.__file__))
print(json.dumps({"sys_path": [os.path.realpath(p) for p in sys.path if p and os.path.exists(p)],
                  "packages": locations, "stdlib": stdlib, "prefix": sys.prefix}))
"""


def ask_interpreter(python: str, code: str, *args: str) -> Any:
    """What ``python -s -c code args`` prints as JSON: the way to learn about an interpreter (its paths, its
    libpython) from the interpreter itself, with no user site and a minimal environment."""
    try:
        out = subprocess.run(
            [python, "-s", "-c", code, *args],
            check=True,
            capture_output=True,
            text=True,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            cwd="/",
        ).stdout
        return json.loads(out)
    except (OSError, subprocess.CalledProcessError, ValueError) as error:
        raise EnclaveError(f"cannot inspect the Python interpreter {python}: {error}") from None


def _probe(python: str, packages: tuple[str, ...]) -> dict[str, object]:
    result: dict[str, object] = ask_interpreter(python, _PROBE, json.dumps(list(packages)))
    return result


def python_module_spec(
    module: str,
    *,
    name: str,
    python: str | None = None,
    packages: tuple[str, ...] = (),
    passthrough_env: tuple[str, ...] = (),
    isv_prod_id: int = 0,
    isv_svn: int = 0,
) -> ImageSpec:
    """An image that runs ``python -s -m MODULE`` with everything that interpreter imports trusted."""
    # Not resolved through symlinks: a venv's interpreter finds its environment from its own path
    # (pyvenv.cfg beside bin/), so the launcher must run it by that path.
    interpreter = os.path.abspath(python or sys.executable)
    probe = _probe(interpreter, packages)
    sys_path = [str(p) for p in probe["sys_path"]]  # type: ignore[attr-defined]
    package_dirs = [str(p) for dirs in probe["packages"].values() for p in dirs]  # type: ignore[attr-defined]
    trusted = [interpreter, *sys_path, *package_dirs]
    venv_config = os.path.join(str(probe["prefix"]), "pyvenv.cfg")
    if os.path.exists(venv_config):
        trusted.append(venv_config)  # it decides which site-packages the interpreter uses
    # The base interpreter's own site-packages sits inside the stdlib folder but is not on a venv's path.
    stdlib = str(probe["stdlib"])
    excluded = tuple(
        os.path.join(stdlib, d)
        for d in ("site-packages", "dist-packages")
        if os.path.join(stdlib, d) not in sys_path
    ) + _left_out_packages(sys_path)
    bindir = os.path.dirname(interpreter)
    env = {
        "PATH": f"{bindir}:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "PYTHONNOUSERSITE": "1",
        "PYTHONPYCACHEPREFIX": f"{TEE_STATE}/pycache",
        "HOME": f"{TEE_TMP}/home",
        "TMPDIR": TEE_TMP,
        "IPYTHONDIR": f"{TEE_TMP}/ipython",
        "JUPYTER_RUNTIME_DIR": f"{TEE_TMP}/runtime",
        "JUPYTER_PLATFORM_DIRS": "1",
        "MPLCONFIGDIR": f"{TEE_TMP}/matplotlib",
        # Keeps BLAS thread pools inside an enclave's thread budget (Gramine's sgx.max_threads).
        "OMP_NUM_THREADS": "4",
        "OPENBLAS_NUM_THREADS": "4",
    }
    return ImageSpec(
        name=name,
        entrypoint=interpreter,
        argv=(interpreter, "-s", "-m", module),
        env=env,
        passthrough_env=passthrough_env,
        trusted=tuple(dict.fromkeys(trusted)),
        excluded=excluded,
        isv_prod_id=isv_prod_id,
        isv_svn=isv_svn,
    )


# Installed beside ipykernel but never run in a TEE kernel: debugpy's adapter would talk in plaintext over the
# host's loopback (kernel/no_debugger.py refuses it before any of its files is read), and its ~500 files only
# make the image slower to measure and to start. moto: the dev extra's S3 test server (~3,400 files), never
# imported by a kernel.
_LEFT_OUT = ("debugpy", "moto")


def _left_out_packages(sys_path: list[str]) -> tuple[str, ...]:
    found: list[str] = []
    for folder in sys_path:
        if not os.path.isdir(folder):
            continue
        for entry in sorted(os.listdir(folder)):
            stem = entry.split("-", 1)[0] if entry.endswith(".dist-info") else entry
            if stem in _LEFT_OUT:
                found.append(os.path.join(folder, entry))
    return tuple(found)


def kernel_image_spec(python: str | None = None, *, isv_prod_id: int = 0, isv_svn: int = 0) -> ImageSpec:
    """The attested Jupyter kernel's image."""
    return python_module_spec(
        KERNEL_MODULE,
        name=KERNEL_IMAGE,
        python=python,
        packages=_IN_TEE_PACKAGES,
        passthrough_env=KERNEL_INPUTS,
        isv_prod_id=isv_prod_id,
        isv_svn=isv_svn,
    )
