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


def sealed_dataset() -> nbformat.NotebookNode:
    parameters = new_code_cell(
        "# Parameters (papermill -p …). The data owner's steps need the key broker's admin token;\n"
        "# `make demo` and the test suite pass it. Left empty, the owner's steps are skipped and the\n"
        "# analyst reads the sample dataset `make demo` published.\n"
        'admin_token_file = ""\n'
        'dataset = "sample-sales"\n'
        'analyst = ""  # whom the owner grants; default: this session\'s user'
    )
    parameters.metadata["tags"] = ["parameters"]
    cells = [
        new_markdown_cell(
            "# Sealed datasets: decrypted only inside an attested kernel\n\n"
            "A **data owner** seals a table: it is encrypted (Parquet Modular Encryption, AES-GCM, a fresh "
            "256-bit key per version) before it leaves their hands, and the key goes — sealed — to the **key "
            "broker**. An **analyst** reads it in this notebook: the key broker releases the key only to an "
            "attested kernel whose measurement the owner's release policy accepts, for a user the owner "
            "granted, sealed to a key that exists only inside that kernel.\n\n"
            "With the `teelab-sim` kernel the TEE is simulated — the protocol is real, the isolation is not."
        ),
        parameters,
        new_markdown_cell(
            "## 1. The data owner seals, registers and grants\n\n"
            "Owners normally do this on their own machine: "
            "`teelab dataset upload sales.csv --name sales --policy policy.toml --grant alice`. "
            "The same Python API runs here for brevity. The release policy pins **this kernel's "
            "measurement**: no other enclave image will ever receive the key."
        ),
        new_code_cell(
            "from pathlib import Path\n\n"
            "import numpy as np\n"
            "import pandas as pd\n\n"
            "import teelab.session\n\n"
            "services = teelab.session.services()\n"
            "measurement = teelab.session.attestation().measurement\n"
            "release_policy = f'allow_simulation = true\\n[sgx]\\nmrenclave = [\"{measurement}\"]\\n'\n"
            "print(release_policy)"
        ),
        new_code_cell(
            "if admin_token_file:\n"
            "    from teelab.sealed_store.owner import DataOwner\n\n"
            "    rng = np.random.default_rng(7)\n"
            "    sales = pd.DataFrame(\n"
            "        {\n"
            '            "region": rng.choice(["EU", "US", "APAC"], size=50_000),\n'
            '            "amount": rng.gamma(2.0, 40.0, size=50_000).round(2),\n'
            '            "day": pd.Timestamp("2026-01-01") + pd.to_timedelta(rng.integers(0, 365, 50_000), unit="D"),\n'
            "        }\n"
            "    )\n"
            "    with DataOwner.connect(\n"
            '        kbs=services["kbs"], token_file=Path(admin_token_file), store=services["store"], owner="data-owner"\n'
            "    ) as owner:\n"
            "        published = owner.publish(\n"
            "            sales,\n"
            "            name=dataset,\n"
            "            policy_toml=release_policy,\n"
            '            grants=[(analyst or services["user"], None)],\n'
            "        )\n"
            '    print(f"published {published.name} v{published.version}: {published.rows:,} rows in {published.parts} sealed part(s)")\n'
            '    print("granted", ", ".join(g.principal for g in published.grants))\n'
            "else:\n"
            '    print("no admin token given: skipping the owner\'s steps; reading the sample dataset")'
        ),
        new_markdown_cell(
            "## 2. The analyst reads it — inside the attested kernel\n\n"
            "`read_dataset` gets a fresh challenge from the key broker, produces evidence bound to it and to "
            "this session's attested key, and receives the data key sealed to that key. Only the columns and "
            "row groups asked for are decrypted."
        ),
        new_code_cell(
            "from teelab.sealed_store import read_dataset\n\n"
            "df = read_dataset(dataset)\n"
            'print(f"{len(df):,} rows, columns {list(df.columns)}")\n'
            "df.head()"
        ),
        new_code_cell(
            'summary = df.groupby("region")["amount"].agg(["count", "sum", "mean"]).round(2)\nsummary'
        ),
        new_code_cell(
            "# Just one column, just the EU rows: the other columns and row groups stay encrypted.\n"
            'eu = read_dataset(dataset, columns=["amount"], filters=[("region", "==", "EU")])\n'
            'assert list(eu.columns) == ["amount"] and len(eu) == summary.loc["EU", "count"]\n'
            "print(f\"EU revenue {eu['amount'].sum():,.2f} over {len(eu):,} sales\")"
        ),
        new_markdown_cell(
            "A kernel whose measurement is not in the release policy, a user without a grant, a revoked or "
            "expired grant, or a tampered part all stop here with an error that says which — and every "
            "release and refusal is in the key broker's signed, hash-chained audit log "
            "(`teelab audit verify`)."
        ),
    ]
    return new_notebook(cells=cells, metadata={"kernelspec": KERNEL, "language_info": {"name": "python"}})


NOTEBOOKS = {"01-attested-session.ipynb": attested_session, "02-sealed-dataset.ipynb": sealed_dataset}


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
