"""The part of the wheel smoke test (scripts/wheel_smoke.py) that runs with the fresh environment's Python.

It uses teelab the way a notebook user does, through public interfaces only: the installed distribution's
entry points, and the ``teelab-sim`` kernel started through jupyter_client, where it runs a pandas cell,
reads the session's attestation (``teelab.session.attestation()``) and a sealed dataset
(``teelab.sealed_store.read_dataset``). It writes what it saw as JSON; the caller judges it.

Standard library and the installed packages only: this file is copied out of the checkout before it runs.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import traceback
from pathlib import Path
from typing import Any

KERNEL = "teelab-sim"
START_TIMEOUT = 240  # the first start creates the simulated platform and measures the image
CELL_TIMEOUT = 180

PANDAS_CELL = """
import pandas as pd
frame = pd.DataFrame({"x": [1, 2, 3, 4]})
print(int(frame["x"].sum()))
"""
ATTESTATION_CELL = """
import json
import teelab.session
attestation = teelab.session.attestation()
print(json.dumps({"verdict": attestation.verdict, "simulated": attestation.simulated,
                  "measurement": attestation.measurement}))
"""
WHERE_CELL = """
import json, sys
import teelab
print(json.dumps({"teelab": teelab.__file__, "executable": sys.executable, "path": sys.path}))
"""
DATASET_CELL = """
import json
from teelab.sealed_store import read_dataset
frame = read_dataset({name!r})
print(json.dumps({{k: round(float(v), 2) for k, v in frame.groupby("region")["amount"].sum().items()}}))
"""


class CellFailed(Exception):
    pass


def entry_points() -> list[dict[str, Any]]:
    """Every entry point teelab's installed metadata declares, and whether it loads."""
    found: list[dict[str, Any]] = []
    for point in importlib.metadata.distribution("teelab").entry_points:
        error = None
        try:
            point.load()
        except Exception:
            error = traceback.format_exc(limit=3)
        found.append({"group": point.group, "name": point.name, "value": point.value, "error": error})
    return found


def run_cell(client: Any, code: str) -> str:
    """Run ``code`` in the kernel; its stdout, or CellFailed with the kernel's traceback."""
    output: list[str] = []
    errors: list[str] = []

    def collect(message: dict[str, Any]) -> None:
        kind, content = message["msg_type"], message["content"]
        if kind == "stream" and content.get("name") == "stdout":
            output.append(content["text"])
        elif kind == "error":
            errors.append(
                "\n".join(content.get("traceback", [])) or f"{content['ename']}: {content['evalue']}"
            )

    reply = client.execute_interactive(code, timeout=CELL_TIMEOUT, output_hook=collect)
    if reply["content"]["status"] != "ok" or errors:
        raise CellFailed(f"cell failed:\n{code}\n" + "\n".join(errors))
    return "".join(output)


def last_json(text: str) -> Any:
    return json.loads(text.strip().splitlines()[-1])


def kernel_session(dataset: str) -> dict[str, Any]:
    from jupyter_client.manager import KernelManager

    manager = KernelManager(kernel_name=KERNEL)
    manager.start_kernel()
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=START_TIMEOUT)
        return {
            "pandas_sum": run_cell(client, PANDAS_CELL).strip(),
            "attestation": last_json(run_cell(client, ATTESTATION_CELL)),
            "where": last_json(run_cell(client, WHERE_CELL)),
            "dataset": last_json(run_cell(client, DATASET_CELL.format(name=dataset))),
        }
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", required=True, help="the sealed dataset to read in the kernel")
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON result")
    args = parser.parse_args()
    import teelab

    result: dict[str, Any] = {
        "client": {"teelab": teelab.__file__, "executable": sys.executable, "path": sys.path},
        "entry_points": entry_points(),
    }
    try:
        result["kernel"] = kernel_session(args.dataset)
    except Exception:
        result["kernel_error"] = traceback.format_exc()
    args.out.write_text(json.dumps(result, indent=1))
    return 1 if "kernel_error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
