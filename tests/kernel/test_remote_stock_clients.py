"""Stock Jupyter clients, unchanged, against kernels on remote host agents (issue 15): a real jupyter_server
driven over REST and websocket (what JupyterLab does), and papermill. The agents are real processes on
127.0.0.2 and 127.0.0.3; the server's configuration names them, as an operator's would."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import nbformat
import papermill
import pytest
from traitlets.config import Config

from teelab.enclave_runtime.agent.v1 import host_pb2, host_pb2_grpc
from teelab.kernel.registry import REGISTRY

from . import test_remote_hosts as remote
from .conftest import KernelEnv
from .test_jupyter_server import execute

agents, remote_env = remote.agents, remote.remote_env  # the fixtures, for this module's tests
Agent = remote.Agent


@pytest.fixture
def two_agents(agents: Callable[..., Agent]) -> list[str]:
    return [agents("127.0.0.2")[1], agents("127.0.0.3")[1]]


@pytest.fixture
def jp_server_config(two_agents: list[str], remote_env: Path) -> dict[str, Any]:
    return {
        "ServerApp": {"allow_unauthenticated_access": False},
        "RemoteTeeProvisioner": {
            "hosts": two_agents,
            "host_token_file": str(remote_env / "token"),
            "launch_timeout": 60.0,
        },
    }


@pytest.fixture
def remote_spec(
    kernel_env: KernelEnv,
    remote_env: Path,
    jp_data_dir: Path,
    jp_environ: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The server looks for kernelspecs in pytest-jupyter's data dir; teelab's own dirs stay the session's.
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(jp_data_dir))
    source = kernel_env.jupyter_data / "kernels" / remote.REMOTE
    target = jp_data_dir / "kernels" / remote.REMOTE
    target.mkdir(parents=True)
    for item in source.iterdir():
        (target / item.name).write_bytes(item.read_bytes())


async def test_jupyter_server_runs_remote_kernels_over_rest_and_websocket(
    jp_fetch: Any, jp_ws_fetch: Any, jp_serverapp: Any, remote_spec: None, two_agents: list[str]
) -> None:
    ids = []
    for _ in range(2):
        response = await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": remote.REMOTE}))
        assert response.code == 201
        ids.append(json.loads(response.body)["id"])
    ips = sorted(jp_serverapp.kernel_manager.get_kernel(k).get_connection_info()["ip"] for k in ids)
    assert ips == ["127.0.0.2", "127.0.0.3"]  # one on each agent
    for kernel_id in ids:
        assert await execute(jp_ws_fetch, kernel_id, "print(6 * 7)") == "42\n"
        record = REGISTRY.get(kernel_id)
        assert record is not None and record.ok

    first = ids[0]
    response = await jp_fetch("api", "kernels", first, "interrupt", method="POST", body="")
    assert response.code == 204
    response = await jp_fetch("api", "kernels", first, "restart", method="POST", body="")
    assert response.code == 200
    assert await execute(jp_ws_fetch, first, "print('after restart')") == "after restart\n"

    for kernel_id in ids:
        response = await jp_fetch("api", "kernels", kernel_id, method="DELETE")
        assert response.code == 204
    for target in two_agents:
        async with grpc.aio.insecure_channel(target.removeprefix("grpc://")) as channel:
            listing = await host_pb2_grpc.HostAgentStub(channel).List(
                host_pb2.ListRequest(), metadata=(("authorization", f"Bearer {remote.TOKEN}"),), timeout=10
            )
        assert listing.running == 0  # nothing left behind on either host


def test_papermill_runs_a_notebook_on_a_remote_kernel(
    two_agents: list[str], remote_env: Path, tmp_path: Path
) -> None:
    nb = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell("x = 1")
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [parameters, nbformat.v4.new_code_cell("import socket\nprint(x * 2)")]
    nb.metadata["kernelspec"] = {"name": remote.REMOTE, "display_name": "teelab remote", "language": "python"}
    source, out = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, source)
    config = Config(
        {
            "RemoteTeeProvisioner": {
                "hosts": two_agents,
                "host_token_file": str(remote_env / "token"),
                "launch_timeout": 60.0,
            }
        }
    )
    papermill.execute_notebook(str(source), str(out), parameters={"x": 21}, config=config, progress_bar=False)
    executed = nbformat.read(out, as_version=4)
    assert executed.cells[-1].outputs[0]["text"] == "42\n"
