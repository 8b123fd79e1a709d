"""Lay out links shaped like the installed ``teelab`` package so mypy sees ``teelab.gateway`` etc.

setuptools maps the top-level folders into ``teelab.*`` (setup.py); mypy only understands folders named like
their modules, so it type-checks this tree instead of the source folders directly.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("enclave_runtime", "gateway", "kernel", "sealed_store", "extension")


def main(out: str) -> None:
    tree = Path(out) / "teelab"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    for entry in (ROOT / "teelab").iterdir():
        if entry.name != "__pycache__":
            (tree / entry.name).symlink_to(entry)
    for part in PARTS:
        (tree / part).symlink_to(ROOT / part)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".build/typecheck")
