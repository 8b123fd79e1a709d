"""The part graph of docs/architecture.md, enforced: every import of one part by another, anywhere in a module
(lazy imports inside functions included), must be an edge of ``EDGES``, and must go through the part's public
surface for that edge (``THROUGH``).

    extension        → kernel, gateway, sealed_store
    kernel           → gateway, sealed_store, enclave_runtime, dask (the boot hands a Dask node to it)
    dask             → gateway, sealed_store, enclave_runtime (the backend contract only)
    sealed_store     → gateway, enclave_runtime (the backend contract only)
    gateway          → enclave_runtime (the backend contract only)
    enclave_runtime  → nothing

The graph is written as edges rather than as one total order because an order hides edges the design does not
allow (``extension → enclave_runtime`` for instance would be "below" and pass). ``enclave_runtime``, what
runs inside the TEE, imports no other part; the root (``teelab/``) is imported by all and imports no part,
except its CLI entry module, which assembles every part's commands."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("enclave_runtime", "gateway", "sealed_store", "kernel", "extension", "dask")
# Parts whose folder is not a top-level one: teelab.dask lives in teelab/dask/ (below the root's folder).
FOLDERS = {"dask": "teelab/dask"}

# part -> the parts it may import. Each edge is explained in docs/architecture.md.
EDGES: dict[str, frozenset[str]] = {
    "enclave_runtime": frozenset(),
    "gateway": frozenset({"enclave_runtime"}),
    "sealed_store": frozenset({"gateway", "enclave_runtime"}),
    "kernel": frozenset({"gateway", "enclave_runtime", "sealed_store", "dask"}),
    "dask": frozenset({"gateway", "enclave_runtime", "sealed_store"}),
    "extension": frozenset({"kernel", "gateway", "sealed_store"}),
    "teelab": frozenset(),
}

# Into enclave_runtime only through the backend contract: no part may know a particular backend (the
# simulator's knowledge leaking into the verifier, the provisioner and the key broker was the bug).
BACKEND_PACKAGES = ("sim", "gramine", "occlum", "cvm")


def imports_of(path: Path) -> set[tuple[str, str]]:
    """(part, module path below the part) for every teelab part this module imports."""
    found: set[tuple[str, str]] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
            if node.module == "teelab":
                names += [f"teelab.{alias.name}" for alias in node.names]
            elif node.module.startswith("teelab.") and node.module.count(".") == 1:
                names += [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            pieces = name.split(".")
            if len(pieces) > 1 and pieces[0] == "teelab" and pieces[1] in PARTS:
                found.add((pieces[1], ".".join(pieces[2:])))
    return found


def imported_parts(path: Path) -> set[str]:
    return {part for part, _ in imports_of(path)}


def modules(folder: str) -> list[Path]:
    nested = [ROOT / f for f in FOLDERS.values()] if folder == "teelab" else []
    return [
        p
        for p in (ROOT / FOLDERS.get(folder, folder)).rglob("*.py")
        if "_pb2" not in p.name
        and "labextension" not in p.parts
        and "__pycache__" not in p.parts
        and not any(p.is_relative_to(n) for n in nested)
    ]


@pytest.mark.parametrize("part", [*PARTS, "teelab"])
def test_each_part_imports_only_along_the_graph(part: str) -> None:
    wrong = []
    for module in modules(part):
        if part == "teelab" and module.name == "cli.py":
            continue  # the entry module assembles every part's commands
        for other in imported_parts(module) - EDGES[part] - {part}:
            wrong.append(f"{module.relative_to(ROOT)} imports teelab.{other}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("part", [p for p in PARTS if p != "enclave_runtime"])
def test_no_part_knows_a_particular_backend(part: str) -> None:
    wrong = []
    for module in modules(part):
        for other, below in imports_of(module):
            if other == "enclave_runtime" and below.split(".")[0] in BACKEND_PACKAGES:
                wrong.append(f"{module.relative_to(ROOT)} imports teelab.enclave_runtime.{below}")
    assert not wrong, "\n".join(wrong)


def test_the_in_tee_boot_imports_no_verifier_code() -> None:
    boot = ROOT / "kernel" / "boot.py"
    assert "gateway" not in imported_parts(boot)
    # The Dask node boot (teelab.dask.boot, entered from the kernel boot) and what it loads in the TEE.
    for name in ("__init__", "boot", "config", "tls", "scheduler"):
        assert "gateway" not in imported_parts(ROOT / "teelab" / "dask" / f"{name}.py"), name


def test_no_private_name_crosses_a_part() -> None:
    """A part uses another's public names only (sealed_store once imported teelab.session._current)."""
    wrong = []
    for part in [*PARTS, "teelab"]:
        for module in modules(part):
            for node in ast.walk(ast.parse(module.read_text(), str(module))):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("teelab"):
                    target = node.module.split(".")[1] if "." in node.module else "teelab"
                    owner = target if target in PARTS else "teelab"
                    if owner == part:
                        continue
                    wrong += [
                        f"{module.relative_to(ROOT)}: {node.module}.{alias.name}"
                        for alias in node.names
                        if alias.name.startswith("_") and not alias.name.endswith("__")
                    ]
    assert not wrong, "\n".join(wrong)


def test_the_scan_sees_lazy_imports(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text(
        "def f():\n    from teelab.kernel.boot import main\n    import teelab.gateway.verifier\n"
        "    from teelab.enclave_runtime import sim\n"
    )
    assert imported_parts(sample) == {"kernel", "gateway", "enclave_runtime"}
    assert ("enclave_runtime", "sim") in imports_of(sample)
