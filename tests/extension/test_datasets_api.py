"""The dataset API through jupyter_server, with a real key broker on loopback and a real store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError

from teelab.sealed_store.owner import DataOwner
from teelab.sealed_store.services import admin_token_file, session_user

from .conftest import KernelEnv, server_config
from .test_auth import DenyTeelab

# A long, distinctive plaintext token: ciphertext can contain any short byte string by chance.
MARKER = b"plaintext-marker-7f3a9c"
CSV = b"region,amount\n" + b"".join(MARKER + b",%d\n" % i for i in range(500))


async def upload(
    jp_fetch: Any, name: str, body: bytes = CSV, content_type: str = "text/csv", policy: str = "teelab-sim"
) -> Any:
    return await jp_fetch(
        "teelab",
        "api",
        "datasets",
        method="POST",
        params={"name": name, "policy": policy},
        body=body,
        headers={"Content-Type": content_type},
    )


async def refused(jp_fetch: Any, *parts: str, **kwargs: Any) -> tuple[int, str]:
    with pytest.raises(HTTPClientError) as failed:
        await jp_fetch(*parts, **kwargs)
    assert failed.value.response is not None
    return failed.value.code, json.loads(failed.value.response.body)["message"]


async def test_upload_list_grant_revoke(jp_fetch: Any, spec: KernelEnv, broker: object) -> None:
    response = await upload(jp_fetch, "api-sales")
    assert response.code == 201
    created = json.loads(response.body)
    assert created["name"] == "api-sales" and created["version"] == 1 and created["rows"] == 500
    assert len(created["manifest_sha256"]) == 64
    # Only ciphertext in the store; the release policy is the sim kernel's (what this server's kernels pass).
    parts = list((spec.data / "datasets" / "api-sales" / "v1").glob("part-*.parquet"))
    assert parts and all(MARKER not in p.read_bytes() for p in parts)
    with DataOwner.connect() as owner:
        assert owner.kbs.get_dataset("api-sales").release_policy_toml == spec.policy.read_text()

    listing = json.loads((await jp_fetch("teelab", "api", "datasets")).body)
    me = session_user()
    assert listing["user"] == me
    (sales,) = [d for d in listing["datasets"] if d["name"] == "api-sales"]
    assert sales["can_admin"] and not sales["can_read"] and sales["versions"] == [1]

    body = json.dumps({"principal": f"user:{me}", "expires_at": "2031-01-01T00:00:00Z"})
    granted = await jp_fetch("teelab", "api", "datasets", "api-sales", "grants", method="POST", body=body)
    assert granted.code == 201 and json.loads(granted.body)["expires_at"].startswith("2031-01-01")
    (sales,) = [
        d
        for d in json.loads((await jp_fetch("teelab", "api", "datasets")).body)["datasets"]
        if d["name"] == "api-sales"
    ]
    assert sales["can_read"] and sales["grants"][0]["principal"] == f"user:{me}"

    deleted = await jp_fetch(
        "teelab", "api", "datasets", "api-sales", "grants", f"user:{me}", method="DELETE"
    )
    assert deleted.code == 204
    (sales,) = [
        d
        for d in json.loads((await jp_fetch("teelab", "api", "datasets")).body)["datasets"]
        if d["name"] == "api-sales"
    ]
    assert not sales["can_read"] and sales["grants"] == []
    assert (await upload(jp_fetch, "api-sales")).code == 201  # the next version
    (sales,) = [
        d
        for d in json.loads((await jp_fetch("teelab", "api", "datasets")).body)["datasets"]
        if d["name"] == "api-sales"
    ]
    assert sales["current_version"] == 2


@pytest.mark.parametrize(
    ("params", "body", "content_type", "code", "message"),
    [
        ({}, CSV, "text/csv", 400, "give the dataset a name"),
        ({"name": "api-x"}, CSV, "application/json", 415, "upload a CSV"),
        ({"name": "api-x"}, b"", "text/csv", 400, "the upload is empty"),
        ({"name": "bad name!"}, CSV, "text/csv", 400, "name"),
        (
            {"name": "api-x", "policy": "teelab-sim"},
            b"\x00\x01not,a\ncsv\xff",
            "application/vnd.apache.parquet",
            422,
            "parquet",
        ),
        ({"name": "api-x"}, CSV, "text/csv", 400, "choose the release policy"),
        (
            {"name": "api-x", "policy": "nobody-published-this"},
            CSV,
            "text/csv",
            400,
            "no published release policy",
        ),
        ({"name": "api-x", "policy": "../etc/passwd"}, CSV, "text/csv", 400, "no published release policy"),
    ],
)
async def test_malformed_uploads_get_4xx_json(
    jp_fetch: Any,
    spec: KernelEnv,
    broker: object,
    params: dict[str, str],
    body: bytes,
    content_type: str,
    code: int,
    message: str,
) -> None:
    status, text = await refused(
        jp_fetch,
        "teelab",
        "api",
        "datasets",
        method="POST",
        params=params,
        body=body,
        headers={"Content-Type": content_type},
    )
    assert status == code and message.lower() in text.lower()
    assert not (spec.data / "datasets" / "api-x").exists()


@pytest.mark.parametrize(
    "jp_server_config", [{**server_config(), "TeelabExtensionApp": {"max_upload_bytes": 1000}}]
)
async def test_an_upload_over_the_limit_is_refused_and_leaves_nothing(
    jp_fetch: Any, spec: KernelEnv, broker: object, tmp_path: Path
) -> None:
    spool = spec.data / "staging" / "uploads"
    before = set(spool.glob("*")) if spool.exists() else set()
    status, text = await refused(
        jp_fetch,
        "teelab",
        "api",
        "datasets",
        method="POST",
        params={"name": "api-big"},
        body=CSV,
        headers={"Content-Type": "text/csv"},
    )
    assert status == 413 and "1,000" in text
    assert not (spec.data / "datasets" / "api-big").exists()
    assert (set(spool.glob("*")) if spool.exists() else set()) == before


async def test_only_the_owner_manages_grants(
    jp_fetch: Any, spec: KernelEnv, broker: object, tmp_path: Path
) -> None:
    # Another user's dataset (registered by the operator on their behalf: this server's user cannot).
    with DataOwner.connect(token_file=admin_token_file(), owner="someone-else") as other:
        other.publish(
            tmp_path / "x.csv" if (tmp_path / "x.csv").write_bytes(CSV) else None,
            name="api-theirs",
            policy_toml="",
        )
    body = json.dumps({"principal": "user:me", "expires_at": None})
    status, text = await refused(
        jp_fetch, "teelab", "api", "datasets", "api-theirs", "grants", method="POST", body=body
    )
    assert status == 403 and "only the owner" in text
    listing = json.loads((await jp_fetch("teelab", "api", "datasets")).body)
    assert "api-theirs" not in [
        d["name"] for d in listing["datasets"]
    ]  # not yours and not granted: not shown


async def test_malformed_grants_get_400(jp_fetch: Any, spec: KernelEnv, broker: object) -> None:
    await upload(jp_fetch, "api-g")
    for body in (
        "not json",
        json.dumps({"who": "x"}),
        json.dumps({"principal": "user:a", "expires_at": "soon"}),
    ):
        status, _ = await refused(
            jp_fetch, "teelab", "api", "datasets", "api-g", "grants", method="POST", body=body
        )
        assert status == 400
    status, text = await refused(
        jp_fetch,
        "teelab",
        "api",
        "datasets",
        "api-g",
        "grants",
        method="POST",
        body=json.dumps({"principal": "nobody:x", "expires_at": None}),
    )
    assert status == 400 and "user or group" in text


async def test_without_a_key_broker_datasets_say_so(jp_fetch: Any, spec: KernelEnv) -> None:
    status, text = await refused(jp_fetch, "teelab", "api", "datasets")
    assert status == 503 and "teelab kbs serve" in text


@pytest.mark.parametrize("authorization", ["", "token not-the-token"], ids=["no-token", "wrong-token"])
async def test_unauthenticated_dataset_requests_are_refused(
    jp_fetch: Any, spec: KernelEnv, broker: object, authorization: str
) -> None:
    for method, parts, body in (
        ("GET", ("teelab", "api", "datasets"), None),
        ("POST", ("teelab", "api", "datasets"), CSV),
        ("POST", ("teelab", "api", "datasets", "x", "grants"), b"{}"),
        ("DELETE", ("teelab", "api", "datasets", "x", "grants", "user:a"), None),
    ):
        with pytest.raises(HTTPClientError) as failed:
            await jp_fetch(
                *parts,
                method=method,
                body=body,
                params={"name": "api-x"},
                headers={"Authorization": authorization, "Content-Type": "text/csv"},
            )
        assert failed.value.code in (401, 403)
    assert not (spec.data / "datasets" / "api-x").exists()


@pytest.mark.parametrize("jp_server_config", [server_config(authorizer_class=DenyTeelab)])
async def test_an_authorizer_that_denies_teelab_blocks_datasets(
    jp_fetch: Any, spec: KernelEnv, broker: object
) -> None:
    assert (await refused(jp_fetch, "teelab", "api", "datasets"))[0] == 403
    status, _ = await refused(
        jp_fetch,
        "teelab",
        "api",
        "datasets",
        method="POST",
        params={"name": "api-x"},
        body=CSV,
        headers={"Content-Type": "text/csv"},
    )
    assert status == 403
    assert not (spec.data / "datasets" / "api-x").exists()


@pytest.mark.parametrize("name", ["bad/name", "../../escape", "..", "a" * 200])
async def test_path_like_names_are_refused_before_anything_is_written(
    jp_fetch: Any, spec: KernelEnv, broker: object, name: str, tmp_path: Path
) -> None:
    status, text = await refused(
        jp_fetch,
        "teelab",
        "api",
        "datasets",
        method="POST",
        params={"name": name},
        body=CSV,
        headers={"Content-Type": "text/csv"},
    )
    assert status == 400 and "not a dataset name" in text
    staging = spec.data / "staging"
    assert not staging.exists() or not [p for p in staging.rglob("*") if p.is_file()]


async def test_a_mistyped_expiry_is_refused_not_made_permanent(
    jp_fetch: Any, spec: KernelEnv, broker: object
) -> None:
    await upload(jp_fetch, "api-expiry")
    for expires in (12, ["2030"], {"at": "2030"}):
        status, text = await refused(
            jp_fetch,
            "teelab",
            "api",
            "datasets",
            "api-expiry",
            "grants",
            method="POST",
            body=json.dumps({"principal": "user:bob", "expires_at": expires}),
        )
        assert status == 400 and "expires_at" in text
    with DataOwner.connect() as owner:
        assert owner.kbs.get_dataset("api-expiry").grants == ()


async def test_an_upload_names_a_published_policy_and_the_page_can_show_what_it_admits(
    jp_fetch: Any, spec: KernelEnv, broker: object
) -> None:
    listing = json.loads((await jp_fetch("teelab", "api", "datasets", "policies")).body)
    (sim,) = [p for p in listing["policies"] if p["name"] == "teelab-sim"]
    assert sim["text"] == spec.policy.read_text()
    assert sim["allow_simulation"] is True and sim["pins"]["sgx"] and not sim["pins_nothing"]
    assert listing["suggested"] == "teelab-sim"
    created = json.loads((await upload(jp_fetch, "api-chosen")).body)
    assert created["policy"]["id"] == sim["id"]
    (entry,) = [
        d
        for d in json.loads((await jp_fetch("teelab", "api", "datasets")).body)["datasets"]
        if d["name"] == "api-chosen"
    ]
    assert entry["policy_id"] == sim["id"]


def test_the_servers_own_policy_file_is_published(tmp_path: Path) -> None:
    """A JupyterHub single-user server names its operator policy with c.TeeProvisioner.policy_file and turns
    user policies off: that file is what a browser upload may choose."""
    from types import SimpleNamespace

    from traitlets.config import Config

    from teelab.extension.datasets import published_policies

    own = tmp_path / "org-sgx.toml"
    own.write_text('[sgx]\nmrenclave = ["' + "ab" * 32 + '"]\n')
    config = Config()
    config.TeeProvisioner.policy_file = str(own)
    config.TeeProvisioner.allow_user_policies = False
    found = published_policies(SimpleNamespace(config=config))  # type: ignore[arg-type]
    assert found["org-sgx"] == own
