"""Build the prebuilt JupyterLab extension ``@teelab/jupyterlab`` — only when its sources changed.

``labextension/`` (TypeScript) → ``extension/labextension/`` (the prebuilt extension JupyterLab loads). Used by
setup.py's ``build_labextension`` step (wheel and editable builds; there ``jlpm`` and ``jupyter-builder`` come
from the ``jupyter_builder`` build requirement, the builder JupyterLab itself uses) and by the Makefile (with
the venv's, installed with jupyterlab). Standard library only.

A digest of every source (package.json, yarn.lock, tsconfig, src/, style/) is kept in the output folder, and of
package.json + yarn.lock in node_modules, so a repeated build with nothing changed costs a few file reads.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUTPUT = HERE.parent / "extension" / "labextension"
BUILD_DIGEST = OUTPUT / ".teelab-build-digest"  # a dotfile: never shipped (see setup.py)
INSTALL_DIGEST = HERE / "node_modules" / ".teelab-install-digest"
INSTALL_INPUTS = ("package.json", "yarn.lock", ".yarnrc.yml")
BUILD_INPUTS = (*INSTALL_INPUTS, "tsconfig.json")
SOURCE_DIRS = ("src", "style")


class BuildError(Exception):
    pass


def digest(names: tuple[str, ...], folders: tuple[str, ...] = ()) -> str:
    files = [HERE / name for name in names]
    for folder in folders:
        files.extend(sorted(path for path in (HERE / folder).rglob("*") if path.is_file()))
    hasher = hashlib.sha256()
    for path in files:
        hasher.update(str(path.relative_to(HERE)).encode() + b"\0")
        hasher.update(path.read_bytes() if path.exists() else b"<missing>")
        hasher.update(b"\0")
    return hasher.hexdigest()


def _current(marker: Path, expected: str) -> bool:
    return marker.is_file() and marker.read_text().strip() == expected


def tool_path() -> str:
    """PATH with jlpm and jupyter-builder first: from the build environment, or beside this Python (the venv)."""
    folders = [str(Path(sys.executable).parent)]
    found = shutil.which("jlpm")
    if found:
        folders.insert(0, str(Path(found).parent))
    return os.pathsep.join([*folders, os.environ.get("PATH", os.defpath)])


def jlpm(*args: str, path: str) -> None:
    command = shutil.which("jlpm", path=path)
    if command is None:
        raise BuildError(
            "jlpm (JupyterLab's yarn) is not installed: install jupyterlab into this environment"
        )
    if shutil.which("node", path=path) is None:
        raise BuildError("Node.js is needed to build the JupyterLab extension: install node (≥ 20) and npm")
    env = {**os.environ, "PATH": path}
    result = subprocess.run([command, *args], cwd=HERE, env=env)
    if result.returncode != 0:
        raise BuildError(f"`jlpm {' '.join(args)}` failed with status {result.returncode} (in {HERE})")


def install(path: str) -> None:
    expected = digest(INSTALL_INPUTS)
    if _current(INSTALL_DIGEST, expected):
        return
    print("labextension: installing node packages (jlpm install --immutable)", flush=True)
    # --immutable: the committed yarn.lock is the truth; a build never rewrites it.
    jlpm("install", "--immutable", path=path)
    INSTALL_DIGEST.write_text(expected + "\n")


def build(*, force: bool = False) -> Path:
    """Build into OUTPUT unless it is up to date; return OUTPUT."""
    expected = digest(BUILD_INPUTS, SOURCE_DIRS)
    manifest = OUTPUT / "package.json"
    if not force and manifest.is_file() and _current(BUILD_DIGEST, expected):
        # Up to date: touch the manifest so make sees the output as newer than the sources it checked.
        os.utime(manifest)
        return OUTPUT
    path = tool_path()
    install(path)
    print(f"labextension: building @teelab/jupyterlab into {OUTPUT}", flush=True)
    jlpm("run", "build:prod", path=path)
    if not manifest.is_file() or json.loads(manifest.read_text()).get("name") != "@teelab/jupyterlab":
        raise BuildError(f"the build finished but wrote no extension manifest at {manifest}")
    BUILD_DIGEST.write_text(expected + "\n")
    return OUTPUT


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--force", action="store_true", help="rebuild even when the sources did not change")
    args = parser.parse_args()
    try:
        build(force=args.force)
    except BuildError as error:
        print(f"labextension: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
