"""Fixtures for the server extension's tests: a jupyter_server with ``teelab.extension`` enabled, token auth
on, and the simulated kernel installed (the kernel tests' session-wide image and policy, reused)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ..kernel.conftest import (
    KERNEL,
    KernelEnv,
    broker,
    copy_kernelspec,
    kernel_env,
    kernel_env_session,
    write_policy,
)

__all__ = [
    "KERNEL",
    "KernelEnv",
    "broker",
    "copy_kernelspec",
    "kernel_env",
    "kernel_env_session",
    "write_policy",
]

EXTENSION = "teelab.extension"


def server_config(**serverapp: Any) -> dict[str, Any]:
    return {
        "ServerApp": {
            "jpserver_extensions": {EXTENSION: True},
            "allow_unauthenticated_access": False,
            **serverapp,
        }
    }


@pytest.fixture
def jp_server_config() -> dict[str, Any]:
    return server_config()


@pytest.fixture
def spec(
    kernel_env: KernelEnv, jp_data_dir: Path, jp_environ: None, monkeypatch: pytest.MonkeyPatch
) -> KernelEnv:
    # The server finds kernelspecs in pytest-jupyter's data dir; teelab's own dirs stay the session's.
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(jp_data_dir))
    copy_kernelspec(kernel_env, jp_data_dir)
    return kernel_env
