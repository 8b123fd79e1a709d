"""Fixtures for the gateway tests: where the shared public attestation vectors live, and how to read them.

The vectors are never copied into the repository; tests read them from shared/vectors beside it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

VECTORS = Path(__file__).parents[2].parent / "shared" / "vectors"


def _require_vectors() -> Path:
    if not (VECTORS / "manifest.json").is_file():
        pytest.fail(f"the shared attestation vectors are missing: expected them at {VECTORS}")
    return VECTORS


@pytest.fixture(scope="session")
def vector_dir() -> Path:
    """shared/vectors (fails clearly when it is missing)."""
    return _require_vectors()


@pytest.fixture(scope="session")
def vector_manifest() -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((_require_vectors() / "manifest.json").read_text())
    return manifest


def read_evidence(path: Path) -> bytes:
    """Evidence as bytes; files named *.hex hold hex text."""
    data = path.read_bytes()
    return bytes.fromhex(data.decode("ascii").strip()) if path.suffix == ".hex" else data


@pytest.fixture(scope="session")
def read_vector() -> Callable[[str], bytes]:
    """Read a vector file by its path relative to shared/vectors (hex text decoded)."""
    base = _require_vectors()
    return lambda relative: read_evidence(base / relative)
