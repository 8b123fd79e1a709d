"""Shared helpers for teelab's benchmarks: statistics, machine facts, and writing results.

Every benchmark compares teelab against the plain baseline measured in the same run, and reports medians of
repeated runs; the ratio is what BENCHMARKS.md shows against the issue's goal.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def speed_probe() -> float:
    """Milliseconds for a fixed piece of pure-Python work (median of 5): how fast this shared machine ran when
    the benchmark was measured. Absolute numbers (verifications/s, releases/s) are only comparable between
    runs with similar probes; the ratios against a baseline measured in the same run are robust to it."""

    def once() -> float:
        start = time.perf_counter()
        total = 0
        for i in range(1_000_000):
            total += i * i
        return time.perf_counter() - start

    return round(statistics.median(once() for _ in range(5)) * 1000, 1)


def machine() -> dict[str, object]:
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        cpu = platform.processor()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "speed_probe_ms": speed_probe(),
    }


def write_result(name: str, result: dict[str, object]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    document = {
        "benchmark": name,
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
    }
    document.update(result)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(document, indent=1) + "\n")
    return path


@contextmanager
def isolated_teelab(root: Path) -> Iterator[dict[str, str]]:
    """Point teelab and Jupyter at fresh folders under ``root`` (the hash cache stays shared)."""
    env = {
        "TEELAB_DATA_DIR": str(root / "data"),
        "TEELAB_CONFIG_DIR": str(root / "config"),
        "JUPYTER_DATA_DIR": str(root / "jupyter-data"),
        "JUPYTER_RUNTIME_DIR": str(root / "runtime"),
        "JUPYTER_PLATFORM_DIRS": "1",
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def one_core() -> Iterator[None]:
    """Benchmarks that claim "per core" run on one core; the cores are given back afterwards (affinity is
    inherited: left pinned, `make bench` once ran every later benchmark and its children on one core)."""
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cores)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, cores)


def git_revision() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
