"""The REST API through a real jupyter_server (pytest-jupyter): kernels' attestation, policy, health."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError, HTTPResponse

from teelab.kernel.registry import REGISTRY

from .conftest import KERNEL, KernelEnv, copy_kernelspec


def body(response: HTTPResponse) -> Any:
    assert response.headers["Content-Type"].startswith("application/json")
    return json.loads(response.body)


async def fails(jp_fetch: Any, *parts: str, code: int, **kwargs: Any) -> str:
    """Assert the request fails with ``code`` and a JSON body with a message; return the message."""
    with pytest.raises(HTTPClientError) as failed:
        await jp_fetch(*parts, **kwargs)
    assert failed.value.code == code, failed.value
    assert failed.value.response is not None
    message = json.loads(failed.value.response.body)["message"]
    assert isinstance(message, str) and message
    return message


# -- kernels -------------------------------------------------------------------------------------------


async def test_no_kernels_no_records(jp_fetch: Any) -> None:
    assert body(await jp_fetch("teelab", "api", "kernels")) == {"kernels": []}


@pytest.mark.slow
async def test_a_simulated_kernel_is_reported_with_every_check(jp_fetch: Any, spec: KernelEnv) -> None:
    started = await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": KERNEL}))
    kernel_id = json.loads(started.body)["id"]

    listing = body(await jp_fetch("teelab", "api", "kernels"))["kernels"]
    assert [k["kernel_id"] for k in listing] == [kernel_id]
    assert listing[0]["badge"]["level"] == "simulated"
    assert listing[0]["badge"]["text"] == "Simulated TEE — not confidential"
    assert listing[0]["kernel_name"] == KERNEL and listing[0]["running"] is True

    record = body(await jp_fetch("teelab", "api", "kernels", kernel_id, "attestation"))
    assert record["ok"] is True and record["simulated"] is True and record["failure"] is None
    assert record["measurement"] == {"name": "MRENCLAVE", "claim": "mrenclave", "value": spec.mrenclave}
    attestation = record["attestation"]
    assert attestation["tee"] == "sgx" and attestation["policy_id"] == KERNEL
    assert attestation["policy_digest"] == hashlib.sha256(spec.policy.read_bytes()).hexdigest()
    assert "simulated TEE — not confidential" in attestation["warnings"]
    checks = {check["name"]: check for check in attestation["checks"]}
    assert len(checks) >= 5 and all(check["passed"] for check in checks.values())
    assert all(set(check) == {"name", "passed", "detail"} for check in attestation["checks"])
    assert "policy.expected_report_data" in checks  # the session binding

    # A restart re-attests: the record is the new handshake's.
    await jp_fetch("api", "kernels", kernel_id, "restart", method="POST", body="")
    restarted = body(await jp_fetch("teelab", "api", "kernels", kernel_id, "attestation"))
    assert restarted["started_at"] > record["started_at"]
    assert restarted["attestation"]["verified_at"] >= attestation["verified_at"]

    await jp_fetch("api", "kernels", kernel_id, method="DELETE")
    await fails(jp_fetch, "teelab", "api", "kernels", kernel_id, "attestation", code=404)
    assert body(await jp_fetch("teelab", "api", "kernels")) == {"kernels": []}


async def test_a_refused_kernel_record_names_the_failed_check(jp_fetch: Any) -> None:
    kernel_id = str(uuid.uuid4())
    REGISTRY.record(
        kernel_id,
        kernel_name="teelab-strict",
        backend="sim",
        result=None,
        failure=("policy.simulation", "simulated evidence; the policy does not allow it"),
    )
    try:
        record = body(await jp_fetch("teelab", "api", "kernels", kernel_id, "attestation"))
    finally:
        REGISTRY.forget(kernel_id)
    assert record["ok"] is False and record["running"] is False
    assert record["badge"] == {
        "level": "failed",
        "text": "Attestation failed: policy.simulation",
        "detail": "simulated evidence; the policy does not allow it",
    }
    # Not running, so not in the status-bar listing.
    assert body(await jp_fetch("teelab", "api", "kernels")) == {"kernels": []}


async def test_an_unknown_kernel_is_404(jp_fetch: Any) -> None:
    unknown = str(uuid.uuid4())
    message = await fails(jp_fetch, "teelab", "api", "kernels", unknown, "attestation", code=404)
    assert unknown in message


@pytest.mark.parametrize("bad", ["not-a-kernel", "1234", "..", "x" * 300, "<script>"])
async def test_a_malformed_kernel_id_is_400(jp_fetch: Any, bad: str) -> None:
    message = await fails(jp_fetch, "teelab", "api", "kernels", bad, "attestation", code=400)
    assert "malformed kernel id" in message


# -- policy --------------------------------------------------------------------------------------------


async def test_the_policy_in_force_for_the_simulated_kernel(jp_fetch: Any, spec: KernelEnv) -> None:
    policy = body(await jp_fetch("teelab", "api", "policy", params={"kernel": KERNEL}))
    assert policy["kernel"] == KERNEL
    assert Path(policy["path"]) == spec.policy and policy["source"] == "policy-folder"
    assert policy["id"] == KERNEL
    assert policy["digest"] == hashlib.sha256(spec.policy.read_bytes()).hexdigest()
    settings = policy["settings"]
    assert settings["allow_simulation"] is True and settings["allow_debug"] is False
    assert settings["sgx"]["mrenclave"] == [spec.mrenclave]
    assert settings["accepted_tcb_statuses"] == ["UpToDate"]
    assert "id" not in settings and "digest" not in settings


async def test_the_policy_query_is_validated(jp_fetch: Any, spec: KernelEnv) -> None:
    assert "missing query parameter 'kernel'" in await fails(jp_fetch, "teelab", "api", "policy", code=400)
    assert "malformed kernelspec name" in await fails(
        jp_fetch, "teelab", "api", "policy", params={"kernel": "../../etc/passwd"}, code=400
    )
    assert "no kernelspec named 'nope'" in await fails(
        jp_fetch, "teelab", "api", "policy", params={"kernel": "nope"}, code=404
    )


async def test_a_kernel_that_is_not_teelab_has_no_policy(
    jp_fetch: Any, spec: KernelEnv, jp_data_dir: Path
) -> None:
    plain = jp_data_dir / "kernels" / "plain"
    plain.mkdir(parents=True)
    (plain / "kernel.json").write_text(
        json.dumps({"argv": ["python", "-m", "ipykernel"], "display_name": "plain", "language": "python"})
    )
    message = await fails(jp_fetch, "teelab", "api", "policy", params={"kernel": "plain"}, code=404)
    assert "not a teelab kernel" in message


async def test_a_teelab_kernel_without_a_policy_file_is_404(
    jp_fetch: Any, spec: KernelEnv, jp_data_dir: Path
) -> None:
    copy_kernelspec(spec, jp_data_dir, name="teelab-orphan")
    message = await fails(jp_fetch, "teelab", "api", "policy", params={"kernel": "teelab-orphan"}, code=404)
    assert "no attestation policy for kernel 'teelab-orphan'" in message and "teelab-orphan.toml" in message


# -- health --------------------------------------------------------------------------------------------


async def test_health_lists_the_backends(jp_fetch: Any) -> None:
    import teelab

    health = body(await jp_fetch("teelab", "api", "health"))
    assert health["version"] == teelab.__version__
    backends = {backend["name"]: backend for backend in health["backends"]}
    assert backends["sim"]["available"] is True
    assert {"gramine", "occlum", "cvm"} <= set(backends)
    assert all({"name", "available", "summary", "found", "missing"} <= set(b) for b in backends.values())


async def test_health_reports_an_unreachable_key_broker_with_what_to_do(
    jp_fetch: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEELAB_KBS", "127.0.0.1:9")  # nothing listens on the discard port
    broker = body(await jp_fetch("teelab", "api", "health"))["key_broker"]
    assert broker["address"] == "127.0.0.1:9" and broker["reachable"] is False
    assert "teelab kbs serve" in broker["hint"]


async def test_health_reports_a_running_key_broker(jp_fetch: Any, spec: KernelEnv, broker: object) -> None:
    health = body(await jp_fetch("teelab", "api", "health"))
    assert health["key_broker"]["reachable"] is True
    assert health["key_broker"]["address"] == broker.target  # type: ignore[attr-defined]
