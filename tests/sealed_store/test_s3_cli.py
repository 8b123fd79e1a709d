"""The data owner's commands with an S3 store, as docs/datasets.md tells a user to run them: the URL names the
bucket and endpoint, the credentials come from AWS's usual chain (here its environment variables), never argv."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from teelab.sealed_store.storage import DatasetStore, DatasetVersion

from .test_dataset_cli import broker, csv, policy, run  # noqa: F401 — fixtures
from .test_s3 import KEY, SECRET, bucket_keys, new_bucket, s3_endpoint, s3_store_url  # noqa: F401 — fixtures

pytestmark = pytest.mark.slow


def test_seal_upload_and_list_with_an_s3_store(
    broker: Path,  # noqa: F811
    csv: Path,  # noqa: F811
    policy: Path,  # noqa: F811
    s3_endpoint: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    bucket = new_bucket(s3_endpoint)
    store = f"s3://{bucket}/teams/risk?endpoint_url={s3_endpoint}&region=us-east-1"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        "AWS_ACCESS_KEY_ID": KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    out = tmp_path / "sealed"
    sealed = run("dataset", "seal", str(csv), "--name", "events", "--out", str(out), "--policy", str(policy))
    assert sealed.returncode == 0, sealed.stderr

    uploaded = run("dataset", "upload", str(out), "--store", store, env=env)
    assert uploaded.returncode == 0, uploaded.stderr
    assert "events v1: 1 part(s) uploaded" in uploaded.stdout
    assert bucket_keys(s3_endpoint, bucket) == [
        "teams/risk/events/v1/manifest.json",
        "teams/risk/events/v1/part-00001.parquet",
    ]
    listing = json.loads(run("dataset", "list", "--json", "--store", store, env=env).stdout)
    assert [(d["name"], d["versions"][0]["uploaded"]) for d in listing] == [("events", True)]
    assert run("dataset", "upload", str(out), "--store", store, env=env).stdout.count("already there") == 1
    assert DatasetStore(s3_store_url(s3_endpoint, bucket, prefix="teams/risk")).list() == [
        DatasetVersion("events", 1)
    ]

    # Without credentials the command fails with the store's error, not a traceback.
    anonymous = {k: v for k, v in env.items() if not k.startswith("AWS_ACCESS") and "SECRET" not in k}
    refused = run("dataset", "upload", str(out), "--store", store.replace("risk", "ops"), env=anonymous)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr, refused.stderr
    assert "Unable to locate credentials" in refused.stderr
