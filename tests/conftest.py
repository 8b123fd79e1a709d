"""Test-wide fixtures: every test gets its own teelab data directory; the file-hash cache is shared.

The data directory holds the simulated platform and keys, so isolating it per test makes each test start
from "first use". The hash cache only holds derived values, and sharing it keeps measuring the test
environment to one cold pass per session.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# jupyter_server's own fixtures (jp_serverapp, jp_fetch, jp_ws_fetch, ...) for the server-side tests.
pytest_plugins = ("pytest_jupyter.jupyter_server",)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
VECTORS = SHARED / "vectors"


@pytest.fixture(scope="session")
def shared_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("teelab-cache")


@pytest.fixture(autouse=True)
def teelab_dirs(
    tmp_path_factory: pytest.TempPathFactory, shared_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    data = tmp_path_factory.mktemp("teelab-data")
    monkeypatch.setenv("TEELAB_DATA_DIR", str(data))
    monkeypatch.setenv("TEELAB_CACHE_DIR", str(shared_cache_dir))
    yield data


@pytest.fixture
def vectors() -> Path:
    if not VECTORS.is_dir():
        pytest.fail(f"the shared attestation vectors are missing: expected them at {VECTORS}")
    return VECTORS
