"""Stock Jupyter clients run the attested kernel unchanged: nbclient, ``jupyter nbconvert --execute``,
papermill and ``jupyter console``. The example notebook is executed top to bottom here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from .conftest import KERNEL, KernelEnv

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
BIN = Path(sys.executable).parent


def _env(kernel_env: KernelEnv) -> dict[str, str]:
    return {**os.environ, **kernel_env.environ()}


def _outputs(nb: nbformat.NotebookNode) -> str:
    texts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", ""))
            texts.extend(str(v) for v in output.get("data", {}).values())
    return "\n".join(texts)


def test_attested_session_notebook_runs_top_to_bottom(kernel_env: KernelEnv) -> None:
    nb = nbformat.read(NOTEBOOKS / "01-attested-session.ipynb", as_version=4)
    NotebookClient(nb, kernel_name=KERNEL, timeout=120).execute()
    text = _outputs(nb)
    assert "checks passed" in text
    assert kernel_env.mrenclave in text
    assert "not confidential" in text


def test_nbconvert_execute(kernel_env: KernelEnv, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            BIN / "jupyter",
            "nbconvert",
            "--to",
            "notebook",
            "--execute",
            "--output-dir",
            tmp_path,
            NOTEBOOKS / "01-attested-session.ipynb",
        ],
        env=_env(kernel_env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    nb = nbformat.read(tmp_path / "01-attested-session.ipynb", as_version=4)
    assert "checks passed" in _outputs(nb)


def test_papermill(kernel_env: KernelEnv, tmp_path: Path) -> None:
    out = tmp_path / "out.ipynb"
    result = subprocess.run(
        [BIN / "papermill", "-k", KERNEL, NOTEBOOKS / "01-attested-session.ipynb", out],
        env=_env(kernel_env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "checks passed" in _outputs(nbformat.read(out, as_version=4))


def test_jupyter_console(kernel_env: KernelEnv) -> None:
    code = "print(6 * 7)\nimport teelab.session as s; print('verdict=' + s.attestation().verdict)\nexit\n"
    result = subprocess.run(
        [BIN / "jupyter", "console", "--kernel", KERNEL, "--simple-prompt"],
        input=code,
        env=_env(kernel_env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "42" in result.stdout and "verdict=warning" in result.stdout
