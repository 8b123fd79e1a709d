"""`teelab doctor --acceptance` on the sim backend: the whole path a hardware user runs, through the user's own
tools, in an isolated folder, ending in a report. On hardware the same command runs against the TEE."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

from teelab.kernel.acceptance.report import AcceptanceReport, CheckFailed, Recorder

CHECKS = [
    "install the kernel (build and measure the image)",
    "start the key broker (teelab kbs serve)",
    "seal and publish a dataset (teelab dataset upload)",
    "launch an attested kernel and verify its evidence",
    "controller binding checked",
    "collateral and TCB",
    "run cells: pandas, a subprocess",
    "read the sealed dataset in the kernel",
    "no plaintext on the host's loopback",
]


def test_acceptance_runs_green_on_the_sim_backend(tmp_path: Path, shared_cache_dir: Path) -> None:
    home = tmp_path / "user-home"
    env = {**os.environ, "TEELAB_CACHE_DIR": str(shared_cache_dir), "HOME": str(home)}
    out, work = tmp_path / "report", tmp_path / "work"
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("teelab")),
            "doctor",
            "--acceptance",
            "--out",
            str(out),
            "--work",
            str(work),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((out / "acceptance.json").read_text())
    assert report["ok"] is True and report["backend"] == "sim"
    assert [c["name"] for c in report["checks"]] == CHECKS
    outcomes = {c["name"]: c["outcome"] for c in report["checks"]}
    loopback = outcomes.pop("no plaintext on the host's loopback")
    assert set(outcomes.values()) == {"pass"}
    assert loopback == ("pass" if os.geteuid() == 0 else "not checked")
    assert all(isinstance(c["seconds"], float) for c in report["checks"])
    assert report["facts"]["simulated"] is True and report["facts"]["verifier checks"]["controller"] == "pass"
    assert len(report["facts"]["MRENCLAVE"]) == 64
    assert report["facts"]["doctor"]["available"] is True  # what `teelab doctor` says of the backend's host
    # Progress on stderr, the summary on stdout and in the text report.
    assert "[4/9] launch an attested kernel and verify its evidence … pass" in result.stderr
    assert result.stdout.startswith((out / "acceptance.txt").read_text())
    assert "result: PASS" in result.stdout
    # Isolated: the user's own HOME was never written, everything lives in the work folder.
    assert not home.exists()
    assert (work / "data" / "kbs").is_dir() and (
        work / "jupyter" / "data" / "kernels" / "teelab-sim"
    ).is_dir()


def test_a_failed_check_is_reported_with_its_reason_and_later_checks_are_not_run() -> None:
    report = AcceptanceReport("sim", "2026-01-01T00:00:00+00:00")
    recorder = Recorder(report, io.StringIO(), total=3)
    ran: list[str] = []

    def fails(note: object) -> None:
        raise CheckFailed("the kernel was refused")

    assert recorder.run("first", lambda note: note("fine")) is True
    assert recorder.run("second", fails) is False
    assert recorder.run("third", lambda note: ran.append("third")) is False
    assert ran == []
    assert [(c.name, c.outcome, c.detail) for c in report.checks] == [
        ("first", "pass", "fine"),
        ("second", "fail", "CheckFailed: the kernel was refused"),
        ("third", "not checked", "an earlier check failed"),
    ]
    assert not report.ok and report.summary().endswith("result: FAIL\n")
