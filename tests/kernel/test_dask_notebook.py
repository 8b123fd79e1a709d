"""notebooks/03-attested-dask.ipynb runs top to bottom in the attested sim kernel: the kernel starts a TeeCluster
with no image and no policy (its own image and measurement are the defaults inside a kernel), the owner's half
publishes a sealed dataset pinned to the kernel's measurement, the workers read it with their own key releases,
and the groupby matches the single-kernel read."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import papermill
import pytest

from .conftest import KERNEL, KernelEnv
from .test_clients import NOTEBOOKS, _outputs

pytestmark = pytest.mark.slow


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
