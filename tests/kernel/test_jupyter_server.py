"""jupyter_server drives the attested kernel unchanged: REST to start/interrupt/restart/stop it, websockets
to execute code (what JupyterLab does)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError

from teelab.kernel.registry import REGISTRY

from .conftest import KERNEL, KernelEnv, copy_kernelspec, write_policy


@pytest.fixture
def jp_server_config() -> dict[str, Any]:
    return {"ServerApp": {"allow_unauthenticated_access": False}}


@pytest.fixture
def spec(
    kernel_env: KernelEnv, jp_data_dir: Path, jp_environ: None, monkeypatch: pytest.MonkeyPatch
) -> KernelEnv:
    # The server looks for kernelspecs in pytest-jupyter's data dir; teelab's own dirs stay the session's.
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(jp_data_dir))
    copy_kernelspec(kernel_env, jp_data_dir)
    return kernel_env


async def execute(jp_ws_fetch: Any, kernel_id: str, code: str) -> str:
    ws = await jp_ws_fetch("api", "kernels", kernel_id, "channels")
    msg_id = uuid.uuid4().hex
    ws.write_message(
        json.dumps(
            {
                "channel": "shell",
                "header": {
                    "msg_id": msg_id,
                    "msg_type": "execute_request",
                    "username": "u",
                    "session": "s",
                    "version": "5.3",
                    "date": "",
                },
                "parent_header": {},
                "metadata": {},
                "content": {
                    "code": code,
                    "silent": False,
                    "store_history": True,
                    "user_expressions": {},
                    "allow_stdin": False,
                    "stop_on_error": True,
                },
                "buffers": [],
            }
        )
    )
    out = []
    while True:
        message = json.loads(await ws.read_message())
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        if message["msg_type"] == "stream":
            out.append(message["content"]["text"])
        if message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
            break
    ws.close()
    return "".join(out)


async def test_rest_and_websocket_lifecycle(jp_fetch: Any, jp_ws_fetch: Any, spec: KernelEnv) -> None:
    response = await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": KERNEL}))
    assert response.code == 201
    kernel_id = json.loads(response.body)["id"]
    assert await execute(jp_ws_fetch, kernel_id, "print(6 * 7)") == "42\n"
    record = REGISTRY.get(kernel_id)
    assert record is not None and record.ok and record.result is not None
    assert record.result.claims["mrenclave"] == spec.mrenclave

    response = await jp_fetch("api", "kernels", kernel_id, "interrupt", method="POST", body="")
    assert response.code == 204

    response = await jp_fetch("api", "kernels", kernel_id, "restart", method="POST", body="")
    assert response.code == 200
    restarted = REGISTRY.get(kernel_id)
    assert restarted is not None and restarted.started_at > record.started_at
    assert await execute(jp_ws_fetch, kernel_id, "print('after restart')") == "after restart\n"

    response = await jp_fetch("api", "kernels", kernel_id, method="DELETE")
    assert response.code == 204
    assert REGISTRY.get(kernel_id) is None


async def test_a_refused_kernel_is_not_created_and_the_reason_is_given(
    jp_fetch: Any, spec: KernelEnv, jp_data_dir: Path
) -> None:
    write_policy(
        spec, "teelab-strict", f'allow_simulation = false\n[sgx]\nmrenclave = ["{spec.mrenclave}"]\n'
    )
    copy_kernelspec(spec, jp_data_dir, name="teelab-strict")
    with pytest.raises(HTTPClientError) as failed:
        await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": "teelab-strict"}))
    assert failed.value.code == 403
    assert failed.value.response is not None
    body = json.loads(failed.value.response.body)
    assert "attestation failed at policy.simulation" in body["message"]
    assert body["reason"] == "Kernel not attested"
    response = await jp_fetch("api", "kernels", method="GET")
    assert json.loads(response.body) == []


async def test_kernelspec_metadata_cannot_carry_a_policy(
    jp_fetch: Any, spec: KernelEnv, jp_data_dir: Path
) -> None:
    copy_kernelspec(spec, jp_data_dir, name="teelab-sneaky", policy_file="/tmp/permissive.toml")
    with pytest.raises(HTTPClientError) as failed:
        await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": "teelab-sneaky"}))
    assert failed.value.code == 500 and failed.value.response is not None
    message = json.loads(failed.value.response.body)["message"]
    assert "refusing policy_file" in message and "teelab kernel install --policy" in message
