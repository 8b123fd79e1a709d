"""The dependency direction of ARCHITECTURE §2, enforced: every import of one part by another, anywhere in a
module (lazy imports inside functions included), goes down the chain

    extension → kernel → sealed_store → gateway → enclave_runtime

(docs/architecture.md explains the two edges the design did not draw: kernel → sealed_store for the key
broker client, extension → sealed_store for the dataset API). enclave_runtime, what runs inside the TEE,
imports no other part; the root (teelab/) is imported by all and imports no part except in the CLI entry."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("enclave_runtime", "gateway", "sealed_store", "kernel", "extension")
ALLOWED = {
    "enclave_runtime": set(),
    "gateway": {"enclave_runtime"},
    "sealed_store": {"gateway", "enclave_runtime"},
    "kernel": {"sealed_store", "gateway", "enclave_runtime"},
    "extension": {"kernel", "sealed_store", "gateway", "enclave_runtime"},
    "teelab": set(),
}


def imported_parts(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
            if node.module == "teelab":
                names += [f"teelab.{alias.name}" for alias in node.names]
        for name in names:
            pieces = name.split(".")
            if len(pieces) > 1 and pieces[0] == "teelab" and pieces[1] in PARTS:
                found.add(pieces[1])
    return found


def modules(folder: str) -> list[Path]:
    return [
        p for p in (ROOT / folder).rglob("*.py") if "_pb2" not in p.name and "labextension" not in p.parts
    ]


@pytest.mark.parametrize("part", [*PARTS, "teelab"])
def test_each_part_imports_only_what_lies_below_it(part: str) -> None:
    wrong = []
    for module in modules(part):
        if part == "teelab" and module.name == "cli.py":
            continue  # the entry module assembles every part's commands
        for other in imported_parts(module) - ALLOWED[part] - {part}:
            wrong.append(f"{module.relative_to(ROOT)} imports teelab.{other}")
    assert not wrong, "\n".join(wrong)


def test_the_scan_sees_lazy_imports(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    from teelab.kernel.boot import main\n    import teelab.gateway.wire\n")
    assert imported_parts(sample) == {"kernel", "gateway"}
