"""`make hub-demo` works from the README alone: `teelab hub demo --check` signs bob and carol in through the
hub, bob reads alice's dataset in an attested kernel, carol is refused, the operator view shows the verdict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_hub_demo_runs_end_to_end(tmp_path: Path) -> None:
    teelab = Path(sys.executable).with_name("teelab")
    result = subprocess.run(
        [str(teelab), "hub", "demo", "--check", "--root", str(tmp_path / "hub")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "sample-sales   published by alice, granted to group:analysts" in out
    assert "bob's kernel   Simulated TEE — not confidential" in out
    assert "bob reads      rows 3000" in out
    assert "carol refused" in out and "no current grant on the dataset" in out
    assert "operator view  bob's kernels: ['simulated']" in out
    assert "hub demo check passed" in out
