"""A node's Dask configuration comes from code only: what the host puts in Dask's configuration folders or in
``DASK_*`` variables does not reach it (teelab.dask.config, run as the node boot runs it: before and after
Dask is imported, in a fresh interpreter). The sim backend already passes no host variable but the boot request
into a node; this is the second line, for configuration files the host can write."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PROBE = """
import json, sys
from teelab.dask import config
config.isolate_from_host(sys.argv[1])
config.apply(sys.argv[1])
import dask.config
keys = ["distributed.worker.memory.spill", "distributed.scheduler.http.routes", "distributed.p2p.storage.disk",
        "distributed.comm.require-encryption", "distributed.worker.preload", "temporary-directory"]
print(json.dumps({k: dask.config.get(k) for k in keys}))
"""


def test_host_configuration_files_and_variables_do_not_reach_a_node(tmp_path: Path) -> None:
    hostile = tmp_path / "etc-dask"
    hostile.mkdir()
    (hostile / "evil.yaml").write_text(
        "distributed:\n  worker:\n    memory:\n      spill: 0.5\n    preload: ['evil_module']\n"
        "  scheduler:\n    http:\n      routes: ['distributed.http.health']\n"
    )
    scratch = tmp_path / "tee-scratch"
    scratch.mkdir()
    env = {
        **os.environ,
        "DASK_ROOT_CONFIG": str(hostile),
        "DASK_CONFIG": str(hostile),
        "DASK_DISTRIBUTED__P2P__STORAGE__DISK": "True",
        "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "False",
    }
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(scratch)], env=env, capture_output=True, text=True, check=True
    ).stdout
    found = json.loads(out)
    assert found == {
        "distributed.worker.memory.spill": False,
        "distributed.scheduler.http.routes": [],
        "distributed.p2p.storage.disk": False,
        "distributed.comm.require-encryption": True,
        "distributed.worker.preload": [],
        "temporary-directory": str(scratch),
    }
