"""Measurement: deterministic, sensitive to every trusted input, fast when nothing changed, and enforced
at launch."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from teelab.enclave_runtime.hashcache import HashCache
from teelab.enclave_runtime.images import kernel_image_spec
from teelab.enclave_runtime.manifest import ImageSpec, check_trusted_files, expand
from teelab.errors import EnclaveError


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "app"
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("x = 1\n")
    (root / "pkg" / "sub" / "data.bin").write_bytes(bytes(range(256)) * 40)
    (root / "main.py").write_text("print('hi')\n")
    return root


def spec_for(root: Path, **changes: object) -> ImageSpec:
    values: dict[str, object] = {
        "name": "app",
        "entrypoint": sys.executable,
        "argv": (sys.executable, "main.py"),
        "env": {"A": "1"},
        "trusted": (sys.executable, str(root)),
    }
    values.update(changes)
    return ImageSpec(**values)  # type: ignore[arg-type]


def measure(spec: ImageSpec, cache_dir: Path) -> bytes:
    with HashCache(cache_dir / "hashes.sqlite") as cache:
        return expand(spec, cache).mrenclave


def test_same_inputs_same_measurement_with_or_without_a_cache(tree: Path, tmp_path: Path) -> None:
    first = measure(spec_for(tree), tmp_path / "c1")
    (tmp_path / "c2").mkdir()
    assert measure(spec_for(tree), tmp_path / "c1") == first  # warm cache
    assert measure(spec_for(tree), tmp_path / "c2") == first  # cold cache: every file hashed again


def test_any_trusted_byte_changes_the_measurement(tree: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "c"
    cache_dir.mkdir()
    before = measure(spec_for(tree), cache_dir)
    data = tree / "pkg" / "sub" / "data.bin"
    content = bytearray(data.read_bytes())
    content[5000] ^= 1
    stat = data.stat()
    data.write_bytes(bytes(content))
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and mtime: ctime still moves
    assert measure(spec_for(tree), cache_dir) != before


@pytest.mark.parametrize(
    "change",
    [
        {"argv": (sys.executable, "main.py", "--x")},
        {"env": {"A": "2"}},
        {"passthrough_env": ("INPUT",)},
        {"isv_prod_id": 1},
        {"isv_svn": 1},
        {"entrypoint": "/usr/bin/env"},
    ],
)
def test_manifest_fields_change_the_measurement(
    tree: Path, tmp_path: Path, change: dict[str, object]
) -> None:
    cache_dir = tmp_path / "c"
    cache_dir.mkdir()
    assert measure(spec_for(tree, **change), cache_dir) != measure(spec_for(tree), cache_dir)


def test_added_and_removed_files_change_the_measurement(tree: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "c"
    cache_dir.mkdir()
    before = measure(spec_for(tree), cache_dir)
    (tree / "pkg" / "new.py").write_text("")
    added = measure(spec_for(tree), cache_dir)
    (tree / "main.py").unlink()
    assert len({before, added, measure(spec_for(tree), cache_dir)}) == 3


def test_bytecode_caches_are_not_trusted_files(tree: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "c"
    cache_dir.mkdir()
    before = measure(spec_for(tree), cache_dir)
    (tree / "pkg" / "__pycache__").mkdir()
    (tree / "pkg" / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"\x00" * 16)
    (tree / "stray.pyc").write_bytes(b"\x00")
    assert measure(spec_for(tree), cache_dir) == before


def test_unchanged_files_are_not_hashed_again(tree: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "c"
    cache_dir.mkdir()
    with HashCache(cache_dir / "hashes.sqlite") as cache:
        expand(spec_for(tree), cache)
        assert cache.hashed_bytes > 0
    with HashCache(cache_dir / "hashes.sqlite") as cache:
        expand(spec_for(tree), cache)
        assert cache.hashed_bytes == 0


def test_launch_check_refuses_a_changed_or_missing_trusted_file(tree: Path, tmp_path: Path) -> None:
    with HashCache(tmp_path / "hashes.sqlite") as cache:
        manifest = expand(spec_for(tree), cache)
        check_trusted_files(manifest, cache)
        (tree / "main.py").write_text("print('evil')\n")
        with pytest.raises(EnclaveError, match=r"main\.py changed since the enclave image was built"):
            check_trusted_files(manifest, cache)
        (tree / "main.py").unlink()
        with pytest.raises(EnclaveError, match=r"main\.py is missing"):
            check_trusted_files(manifest, cache)


def test_missing_trusted_location_is_a_clear_error(tmp_path: Path) -> None:
    with HashCache(tmp_path / "h.sqlite") as cache, pytest.raises(EnclaveError, match="does not exist"):
        expand(spec_for(tmp_path / "nowhere"), cache)


@pytest.mark.slow
def test_the_kernel_image_measures_identically_from_a_cold_cache(tmp_path: Path) -> None:
    """'Another machine with the same environment': nothing cached, every file hashed from scratch."""
    spec = kernel_image_spec()
    with HashCache() as warm:
        expected = expand(spec, warm).mrenclave
    with HashCache(tmp_path / "cold.sqlite") as cold:
        manifest = expand(spec, cold)
        assert cold.hashed_bytes == manifest.total_size
    assert manifest.mrenclave == expected
    paths = {f.path for f in manifest.trusted_files}
    assert os.path.abspath(sys.executable) in paths
    assert any(p.endswith("/ipykernel/kernelapp.py") for p in paths)
    assert any(p.endswith("/enclave_runtime/manifest.py") for p in paths)
    assert not any("__pycache__" in p for p in paths)


def test_the_kernel_image_leaves_the_debugger_out() -> None:
    """debugpy is installed beside ipykernel, but a TEE kernel never runs it (its adapter talks plaintext)."""
    import debugpy

    spec = kernel_image_spec()
    installed = os.path.dirname(os.path.abspath(debugpy.__file__))
    assert installed in spec.excluded
    from teelab.enclave_runtime.manifest import trusted_paths

    leaked = [path for path, _ in trusted_paths(spec) if "/debugpy" in path]
    assert leaked == []
