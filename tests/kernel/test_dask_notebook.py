"""notebooks/03-attested-dask.ipynb runs top to bottom in the attested sim kernel: the kernel starts a TeeCluster
with no image and no policy (its own image and measurement are the defaults inside a kernel), the owner's half
publishes a sealed dataset pinned to the kernel's measurement, the workers read it with their own key releases,
and the groupby matches the single-kernel read."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import papermill
import pytest

from .conftest import KERNEL, KernelEnv
from .test_clients import NOTEBOOKS, _outputs

pytestmark = pytest.mark.slow


def expected_totals() -> dict[str, float]:
    """The sums computed here from the frame the notebook's owner cell generates (same seed), in plain pandas."""
    rng = np.random.default_rng(16)
    region = rng.choice(["EU", "US", "APAC"], size=40_000)
    amount = rng.gamma(2.0, 40.0, size=40_000).round(2)
    sums = pd.DataFrame({"region": region, "amount": amount}).groupby("region").amount.sum().round(2)
    return {str(k): float(v) for k, v in sums.items()}


def cluster_totals(nb: nbformat.NotebookNode) -> dict[str, float]:
    """The Series the groupby cell displayed (computed on the cluster's workers)."""
    cell = next(c for c in nb.cells if "groupby" in c.source and ".compute()" in c.source)
    shown = next(o["data"]["text/plain"] for o in cell.outputs if o.get("output_type") == "execute_result")
    return {m[1]: float(m[2]) for m in re.finditer(r"^(\w+)\s+([0-9.]+)$", shown, re.M)}


def test_the_dask_notebook_runs_in_an_attested_kernel(
    kernel_env: KernelEnv, broker: object, tmp_path: Path
) -> None:
    out = tmp_path / "attested-dask.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOKS / "03-attested-dask.ipynb"),
        str(out),
        kernel_name=KERNEL,
        parameters={
            "admin_token_file": str(kernel_env.data / "kbs" / "admin-token"),
            "dataset": "nb-claims",
            "n_workers": 2,
        },
        progress_bar=False,
        execution_timeout=600,
    )
    nb = nbformat.read(out, as_version=4)
    text = _outputs(nb)
    assert "published nb-claims v1: 40,000 rows in 4 sealed parts" in text
    assert "4 partitions" in text
    assert "the cluster's totals match the single-kernel read" in text
    totals, expected = cluster_totals(nb), expected_totals()
    assert totals.keys() == expected.keys() == {"APAC", "EU", "US"}
    assert all(abs(totals[k] - expected[k]) < 0.015 for k in expected), (totals, expected)
    # Every node's recorded verdict: a scheduler and two workers, all admitted, all of the kernel's measurement.
    rows = re.findall(r"^(scheduler|worker)\s+(\S+)\s+(\S+)\s+(pass|fail)\s+([0-9a-f]{64})$", text, re.M)
    assert sorted((role, name) for role, name, *_ in rows) == [
        ("scheduler", "scheduler"),
        ("worker", "0"),
        ("worker", "1"),
    ], text
    assert {(verdict, outcome, measured) for *_, verdict, outcome, measured in rows} == {
        ("warning", "pass", kernel_env.mrenclave)  # simulated: a warning verdict, admitted
    }
    # The cell showing `cluster` carries its attestation table (LocalCluster's card with the verdicts).
    assert text.count("pass (warning)") >= 3 and kernel_env.mrenclave[:16] in text
    assert "cluster closed" in text
