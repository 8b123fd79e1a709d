"""notebooks/02-sealed-dataset.ipynb runs top to bottom: the owner's half (given the broker's admin token, as
`make demo` gives it) and the analyst's half (reading inside the attested kernel)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import papermill

from .conftest import KERNEL, KernelEnv
from .test_clients import NOTEBOOKS, _outputs


def test_owner_and_analyst(kernel_env: KernelEnv, broker: object, tmp_path: Path) -> None:
    out = tmp_path / "owner-and-analyst.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOKS / "02-sealed-dataset.ipynb"),
        str(out),
        kernel_name=KERNEL,
        parameters={"admin_token_file": str(kernel_env.data / "kbs" / "admin-token"), "dataset": "nb-sales"},
        progress_bar=False,
    )
    text = _outputs(nbformat.read(out, as_version=4))
    assert "published nb-sales v1: 50,000 rows" in text
    assert "50,000 rows, columns ['region', 'amount', 'day']" in text
    assert "EU revenue" in text
    assert kernel_env.mrenclave in text  # the release policy pins this kernel's measurement

    # An analyst's session without the owner's token reads what the owner published.
    analyst = tmp_path / "analyst.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOKS / "02-sealed-dataset.ipynb"),
        str(analyst),
        kernel_name=KERNEL,
        parameters={"dataset": "nb-sales"},
        progress_bar=False,
    )
    text = _outputs(nbformat.read(analyst, as_version=4))
    assert "skipping the owner's steps" in text and "50,000 rows" in text
