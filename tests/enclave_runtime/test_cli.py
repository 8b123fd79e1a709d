"""The foundation's commands as a user runs them: help that teaches, exit 2 on bad arguments."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from teelab.cli import main

TEELAB = [sys.executable, "-m", "teelab.cli"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TEELAB, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), "teelab doctor"),
        (("enclave", "measure"), "The last line printed is the MRENCLAVE"),
        (("enclave", "build"), "--signing-key"),
        (("sim", "quote"), "teelab evidence verify DIR/quote.bin"),
        (("doctor",), "SEV/TDX guest interfaces"),
    ],
)
def test_help_teaches(args: tuple[str, ...], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*args, "--help"])
    assert exited.value.code == 0
    assert expected in capsys.readouterr().out


def test_a_group_without_a_command_prints_its_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["enclave"]) == 2
    assert "measure" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("sim", "quote", "--report-data", "zz", "--out", "x"), "--report-data is not hex"),
        (("sim", "quote", "--report-data", "00" * 65, "--out", "x"), "at most 64"),
        (("sim", "quote", "--report-data", "00"), "the following arguments are required: --out"),
        (("enclave", "measure", "--backend", "nope"), "unknown TEE backend 'nope'"),
        (("enclave", "measure", "--isv-svn", "70000"), "between 0 and 65535"),
        (("sim", "reset"), "--yes"),
        (("frobnicate",), "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(args: tuple[str, ...], message: str) -> None:
    result = run(*args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_sim_quote_writes_a_quote_and_intel_shaped_collateral(tmp_path: Path) -> None:
    out = tmp_path / "q"
    result = run(
        "sim", "quote", "--report-data", "48656c6c6f", "--out", str(out), "--at", "2026-03-01T00:00:00Z"
    )
    assert result.returncode == 0, result.stderr
    quote = (out / "quote.bin").read_bytes()
    assert quote[:2] == b"\x03\x00" and quote[368:373] == b"Hello" and quote[373:432] == bytes(59)
    assert sorted(p.name for p in (out / "collateral").iterdir()) == [
        "pck_crl.der",
        "pck_crl_issuer_chain.pem",
        "qe_identity.json",
        "root_ca_crl.der",
        "tcb_info.json",
        "tcb_info_issuer_chain.pem",
    ]
    assert "SIMULATED" in result.stdout


def test_measure_is_reproducible_and_ends_with_the_bare_mrenclave() -> None:
    first, second = run("enclave", "measure"), run("enclave", "measure")
    assert first.returncode == 0, first.stderr
    last = first.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"[0-9a-f]{64}", last)
    assert second.stdout.strip().splitlines()[-1] == last
    assert f"MRENCLAVE      {last}" in first.stdout


def test_build_then_quote_over_the_built_image(tmp_path: Path) -> None:
    build = run("enclave", "build", "--out", str(tmp_path / "img"), "--isv-prod-id", "7", "--debug")
    assert build.returncode == 0, build.stderr
    mrenclave = build.stdout.strip().splitlines()[-1]
    quote = run(
        "sim", "quote", "--report-data", "01", "--image", str(tmp_path / "img"), "--out", str(tmp_path / "q")
    )
    assert quote.returncode == 0, quote.stderr
    data = (tmp_path / "q" / "quote.bin").read_bytes()
    assert data[112:144].hex() == mrenclave
    assert data[304:306] == b"\x07\x00"
    assert data[96] & 0x02  # the image is a debug build


def test_quote_over_a_missing_image_is_a_clear_error(tmp_path: Path) -> None:
    result = run(
        "sim", "quote", "--report-data", "01", "--image", str(tmp_path / "none"), "--out", str(tmp_path / "q")
    )
    assert result.returncode == 1
    assert "no enclave image at" in result.stderr and "teelab enclave build" in result.stderr


def test_measure_with_a_controller_pins_it_in_the_measured_image() -> None:
    controller = "ab" * 32
    plain, pinned = run("enclave", "measure", "--json"), run("enclave", "measure", "--controller", controller)
    assert plain.returncode == 0 and pinned.returncode == 0, pinned.stderr
    assert plain.stdout.strip().splitlines()[-1] != pinned.stdout.strip().splitlines()[-1]
    bad = run("enclave", "measure", "--controller", "abcd")
    assert bad.returncode == 2 and "64 hex digits" in bad.stderr
