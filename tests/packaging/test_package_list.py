"""Every folder of Python code in the parts is a package of the built distribution (issue 19).

An editable install maps whole folders, so a folder without ``__init__.py`` still imports in the checkout
while setuptools' package discovery leaves it out of the wheel (``enclave_runtime/sim`` — the default backend
— once did). This reads the package list setup.py hands to ``build_py`` (the list the wheel is built from;
no build needed, well under a second) and checks it against the folders on disk, both ways. The slow
end-to-end check of a real wheel is tests/packaging/test_wheel_smoke.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The parts of the system (ARCHITECTURE §2), each imported as teelab.<part>; teelab/ is the namespace root.
PARTS = ("enclave_runtime", "gateway", "kernel", "sealed_store", "extension")
ROOT_PACKAGE = "teelab"
SKIPPED = {"__pycache__", "node_modules"}

# Runs setup.py as `build` would, stopping once its setup() call has the package list (nothing is built).
READ_PACKAGES = """
import json, setuptools
from distutils.core import run_setup
dist = run_setup("setup.py", stop_after="init")
print(json.dumps({"packages": dist.packages, "package_dir": dist.package_dir}))
"""


def distribution_packages(root: Path) -> tuple[list[str], dict[str, str]]:
    """The package list and package_dir that setup.py in ``root`` gives the build."""
    result = subprocess.run(
        [sys.executable, "-c", READ_PACKAGES], cwd=root, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"setup.py did not run:\n{result.stderr}"
    found = json.loads(result.stdout.strip().splitlines()[-1])
    return list(found["packages"]), dict(found["package_dir"])


def code_folders(root: Path) -> dict[str, Path]:
    """Package name → folder, for every folder holding .py files in the parts and the namespace root."""
    folders: dict[str, Path] = {}
    for top, prefix in [(ROOT_PACKAGE, ROOT_PACKAGE), *((part, f"{ROOT_PACKAGE}.{part}") for part in PARTS)]:
        for source in sorted((root / top).rglob("*.py")):
            relative = source.parent.relative_to(root / top)
            if any(piece in SKIPPED or piece.startswith(".") for piece in relative.parts):
                continue
            folders[".".join((prefix, *relative.parts))] = source.parent
    return folders


def folder_of(package: str, package_dir: dict[str, str], root: Path) -> Path:
    """Where setuptools takes ``package`` from: the longest mapped prefix, as build_py resolves it."""
    pieces = package.split(".")
    for cut in range(len(pieces), 0, -1):
        mapped = package_dir.get(".".join(pieces[:cut]))
        if mapped is not None:
            return root.joinpath(mapped, *pieces[cut:])
    return root.joinpath(*pieces)


def missing_and_misplaced(root: Path) -> tuple[list[str], list[str]]:
    """(code folders the distribution leaves out, distribution packages not taken from their folder)."""
    packages, package_dir = distribution_packages(root)
    folders = code_folders(root)
    missing = sorted(set(folders) - set(packages))
    misplaced = sorted(
        package
        for package in packages
        if package not in folders
        or folder_of(package, package_dir, root).resolve() != folders[package].resolve()
        or not (folders[package] / "__init__.py").is_file()
    )
    return missing, misplaced


def test_every_code_folder_of_the_parts_is_a_package_of_the_distribution() -> None:
    missing, misplaced = missing_and_misplaced(ROOT)
    assert missing == [], f"left out of the wheel (add an __init__.py): {missing}"
    assert misplaced == [], f"packages not built from their folder: {misplaced}"


def test_the_distribution_maps_exactly_the_parts() -> None:
    _, package_dir = distribution_packages(ROOT)
    assert package_dir == {ROOT_PACKAGE: ROOT_PACKAGE, **{f"{ROOT_PACKAGE}.{p}": p for p in PARTS}}


def test_a_folder_without_init_is_reported(tmp_path: Path) -> None:
    """The check fails for the bug it exists for: setup.py discovering a tree with one __init__.py missing."""
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    for package in (ROOT_PACKAGE, *PARTS):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "enclave_runtime" / "sim").mkdir()
    (tmp_path / "enclave_runtime" / "sim" / "backend.py").write_text("")
    (tmp_path / "gateway" / "dcap").mkdir()
    (tmp_path / "gateway" / "dcap" / "__init__.py").write_text("")

    missing, misplaced = missing_and_misplaced(tmp_path)

    assert missing == ["teelab.enclave_runtime.sim"]
    assert misplaced == []
