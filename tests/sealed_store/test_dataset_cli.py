"""The data owner's commands as a user runs them, against a real `teelab kbs serve` on loopback."""

from __future__ import annotations

import getpass
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

TEELAB = [sys.executable, "-m", "teelab.cli"]
POLICY = "allow_simulation = true\n"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TEELAB, *args], capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture
def broker(teelab_dirs: Path) -> Iterator[Path]:
    process = subprocess.Popen(
        [*TEELAB, "kbs", "serve", "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    endpoint = teelab_dirs / "kbs" / "endpoint"
    deadline = time.monotonic() + 60
    while not endpoint.exists():
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        assert time.monotonic() < deadline, "the key broker did not start"
        time.sleep(0.1)
    yield endpoint
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
    assert not endpoint.exists(), "the broker leaves no stale endpoint behind"


@pytest.fixture
def csv(tmp_path: Path) -> Path:
    path = tmp_path / "sales.csv"
    path.write_text("region,amount\n" + "".join(f"EU,{i}\n" for i in range(100)))
    return path


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "release.toml"
    path.write_text(POLICY)
    return path


def test_publish_list_grant_revoke_delete(broker: Path, csv: Path, policy: Path) -> None:
    result = run(
        "dataset", "upload", str(csv), "--name", "sales", "--policy", str(policy), "--grant", "alice"
    )
    assert result.returncode == 0, result.stderr
    assert "published      sales v1" in result.stdout and "granted        user:alice" in result.stdout

    listing = json.loads(run("dataset", "list", "--json").stdout)
    assert [(d["name"], d["current_version"]) for d in listing] == [("sales", 1)]
    assert listing[0]["versions"][0]["uploaded"] is True
    assert listing[0]["grants"] == [{"principal": "user:alice", "expires_at": None}]

    assert run("dataset", "grant", "sales", "group:analysts", "--expires", "7d").returncode == 0
    shown = json.loads(run("dataset", "show", "sales").stdout)
    expiring = [g for g in shown["grants"] if g["principal"] == "group:analysts"]
    assert expiring and expiring[0]["expires_at"] is not None
    assert "revoked user:alice" in run("dataset", "revoke", "sales", "alice").stdout

    second = run("dataset", "upload", str(csv), "--name", "sales", "--policy", str(policy))
    assert second.returncode == 0 and "published      sales v2" in second.stdout

    refused = run("dataset", "delete", "sales")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    deleted = run("dataset", "delete", "sales", "--yes")
    assert deleted.returncode == 0 and "v1, v2" in deleted.stdout
    gone = run("dataset", "show", "sales")
    assert gone.returncode == 1 and "no dataset named sales" in gone.stderr
    assert run("audit", "verify").returncode == 0


def test_seal_then_upload_a_sealed_folder(broker: Path, csv: Path, policy: Path, tmp_path: Path) -> None:
    out = tmp_path / "sealed"
    sealed = run("dataset", "seal", str(csv), "--name", "events", "--out", str(out), "--policy", str(policy))
    assert sealed.returncode == 0, sealed.stderr
    assert "registered with the key broker" in sealed.stdout
    assert not any(
        b"\x00" in p.read_bytes()[:0] for p in out.iterdir()
    )  # the folder holds parts and a manifest
    uploaded = run("dataset", "upload", str(out))
    assert uploaded.returncode == 0 and "events v1: 1 part(s) uploaded" in uploaded.stdout
    again = run("dataset", "upload", str(out))
    assert again.returncode == 0 and "already there" in again.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("dataset", "upload", "data.csv"), "--name is required"),
        (("dataset", "grant", "sales", "a:b"), "not a user or group"),
        (("dataset", "upload", "x.csv", "--name", "bad name!"), "name"),
        (("dataset", "seal", "x.csv"), "the following arguments are required: --name"),
    ],
)
def test_bad_arguments_exit_2(broker: Path, args: tuple[str, ...], message: str) -> None:
    result = run(*args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_a_broken_release_policy_is_refused_before_anything_is_sealed(
    broker: Path, csv: Path, tmp_path: Path, teelab_dirs: Path
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("allow_simulatoin = true\n")
    result = run("dataset", "upload", str(csv), "--name", "sales", "--policy", str(bad))
    assert result.returncode == 2 and "allow_simulatoin" in result.stderr
    assert not (teelab_dirs / "datasets" / "sales").exists()


def test_without_a_broker_the_commands_say_what_to_do(csv: Path, teelab_dirs: Path) -> None:
    result = run("dataset", "list")
    assert result.returncode == 2
    assert "no key broker credential" in result.stderr and "teelab kbs serve" in result.stderr
    # The user's own token (the broker issues it at users/<login>.token), not the operator's admin token.
    token = teelab_dirs / "kbs" / "users" / f"{getpass.getuser()}.token"
    token.parent.mkdir(parents=True)
    token.write_text("x" * 43)
    token.chmod(0o600)
    env = {**os.environ, "TEELAB_KBS": "127.0.0.1:9"}  # nothing listens on the discard port
    result = run("dataset", "list", env=env)
    assert result.returncode == 1
    assert "connection refused" in result.stderr.lower() and "is the key broker running" not in result.stderr
    assert "check that the key broker is running (teelab kbs serve)" in result.stderr


def test_the_release_policy_is_an_explicit_choice(broker: Path, csv: Path, teelab_dirs: Path) -> None:
    refused = run("dataset", "upload", str(csv), "--name", "open")
    assert refused.returncode == 2
    assert (
        "--policy FILE pins the kernels you trust" in refused.stderr and "--builtin-policy" in refused.stderr
    )
    assert not (teelab_dirs / "datasets" / "open").exists()
    chosen = run("dataset", "upload", str(csv), "--name", "open", "--builtin-policy")
    assert chosen.returncode == 0, chosen.stderr
    assert json.loads(run("dataset", "show", "open").stdout)["policy_id"]
