"""Writes the example notebooks from their source here, so their JSON stays reviewable in diffs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1] / "notebooks"
KERNEL = {"name": "teelab-sim", "display_name": "Python 3 (teelab · simulated TEE)", "language": "python"}


def attested_session() -> nbformat.NotebookNode:
    cells = [
        new_markdown_cell(
            "# An attested notebook session\n\n"
            "This notebook runs on the **teelab** kernel. Before JupyterLab sent this kernel a single line of "
            "code, the gateway (inside your Jupyter server) checked the kernel's remote-attestation evidence: "
            "an SGX quote over the measurement of the kernel's enclave image, bound to a fresh nonce and to a "
            "key that only the enclave holds. Only then did it hand the kernel its session keys — sealed to that "
            "key — and the kernel now accepts connections from nobody else.\n\n"
            "With the `teelab-sim` kernel the TEE is **simulated**: the protocol, the formats and every check "
            "are the real ones, but nothing is isolated from the host. Everything below says so."
        ),
        new_markdown_cell("## What attestation established about this kernel"),
        new_code_cell("import teelab.session\n\nattestation = teelab.session.attestation()\nattestation"),
        new_code_cell(
            "print('verdict   ', attestation['verdict'])\n"
            "print('TEE       ', attestation['tee'])\n"
            "print('simulated ', attestation.simulated, '(not confidential)' if attestation.simulated else '')\n"
            "print('TCB status', attestation['tcb_status'])\n"
            "print('MRENCLAVE ', attestation.measurement)\n"
            "print('policy    ', attestation['policy_id'])"
        ),
        new_markdown_cell(
            "The MRENCLAVE above is the value `teelab enclave measure` prints for this environment; the "
            "operator's policy pinned it when the kernel was installed. Every check the gateway made:"
        ),
        new_code_cell(
            "import pandas as pd\n\n"
            "checks = pd.DataFrame(attestation['checks'])\n"
            "checks[['name', 'passed', 'detail']]"
        ),
        new_code_cell(
            "# A failed check would have stopped the kernel before this cell ran.\n"
            "assert attestation['ok'] and checks['passed'].all()\n"
            "assert attestation.verdict == ('warning' if attestation.simulated else 'affirming')\n"
            "print(f'{len(checks)} checks passed')"
        ),
        new_markdown_cell("## And it is an ordinary Python kernel"),
        new_code_cell(
            "import numpy as np\n\n"
            "frame = pd.DataFrame({'x': np.arange(10), 'y': np.arange(10) ** 2})\n"
            "frame.describe().loc[['mean', 'max']]"
        ),
    ]
    return new_notebook(cells=cells, metadata={"kernelspec": KERNEL, "language_info": {"name": "python"}})


NOTEBOOKS = {"01-attested-session.ipynb": attested_session}


def main(names: list[str]) -> None:
    written = []
    for name, build in NOTEBOOKS.items():
        if not names or name in names:
            nbformat.write(build(), ROOT / name)
            written.append(str(ROOT / name))
    # The code cells follow the project's formatting like every other Python file.
    subprocess.run([Path(sys.executable).parent / "ruff", "format", "--quiet", *written], check=True)


if __name__ == "__main__":
    main(sys.argv[1:])
