"""Fixtures for attested Dask clusters: one simulated platform and kernel image per test session.

Building the kernel image hashes the whole Python environment, so it is done once; each test points teelab at
that data folder. The nodes are real processes launched through the sim backend (the TEE is simulated: the
tests stand at the OS boundary — processes, sockets, files, /proc — not at hardware isolation).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@dataclass(frozen=True)
class DaskEnv:
    data: Path
    config: Path
    policy: Path
    mrenclave: str


@pytest.fixture(scope="session")
def dask_env_session(tmp_path_factory: pytest.TempPathFactory, shared_cache_dir: Path) -> Iterator[DaskEnv]:
    from teelab.kernel.kernelspec import install

    root = tmp_path_factory.mktemp("dask-env")
    env = {
        "TEELAB_DATA_DIR": str(root / "data"),
        "TEELAB_CONFIG_DIR": str(root / "config"),
        "TEELAB_CACHE_DIR": str(shared_cache_dir),
        "JUPYTER_DATA_DIR": str(root / "jupyter-data"),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        installed = install(backend="sim", user=True)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    yield DaskEnv(root / "data", root / "config", installed.policy_file, installed.image.mrenclave.hex())


@pytest.fixture
def dask_env(dask_env_session: DaskEnv, teelab_dirs: Path, monkeypatch: pytest.MonkeyPatch) -> DaskEnv:
    monkeypatch.setenv("TEELAB_DATA_DIR", str(dask_env_session.data))
    monkeypatch.setenv("TEELAB_CONFIG_DIR", str(dask_env_session.config))
    return dask_env_session


@contextlib.contextmanager
def pointed_at(env: DaskEnv) -> Iterator[None]:
    """teelab's folders are the session's while a longer-lived cluster is made (the autouse fixture points each
    test at a fresh data folder; `dask_env` points it back)."""
    saved = {k: os.environ.get(k) for k in ("TEELAB_DATA_DIR", "TEELAB_CONFIG_DIR")}
    os.environ["TEELAB_DATA_DIR"], os.environ["TEELAB_CONFIG_DIR"] = str(env.data), str(env.config)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def cluster(dask_env_session: DaskEnv) -> Iterator[Any]:
    """A scheduler and two one-thread workers on the sim backend, judged by the kernel's installed policy."""
    from teelab.dask import TeeCluster

    with pointed_at(dask_env_session):
        made = TeeCluster(n_workers=2, threads_per_worker=1, backend="sim", policy=dask_env_session.policy)
    with made:
        yield made
