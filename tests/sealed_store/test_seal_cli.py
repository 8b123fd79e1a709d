"""``teelab dataset seal``: the argparse fragment and its handler."""

from __future__ import annotations

import argparse

import pytest

from teelab.errors import UsageError
from teelab.sealed_store.folder import SealedDataset
from teelab.sealed_store.seal_cli import add_seal_arguments, parse_size, seal_command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="teelab dataset seal")
    add_seal_arguments(parser)
    return parser


def test_seal_command_hands_the_key_to_the_sink_and_prints_the_digest(tmp_path, capsys, monkeypatch) -> None:
    source = tmp_path / "people.csv"
    source.write_text("name,age\n" + "".join(f"p{i},{i % 90}\n" for i in range(5000)))
    monkeypatch.chdir(tmp_path)
    keys: list[tuple[str, int, bytes]] = []
    args = _parser().parse_args([str(source), "--name", "people", "--version", "2", "--part-size", "64KiB"])
    assert seal_command(args, key_sink=lambda *key: keys.append(key)) == 0
    sealed = SealedDataset.open(tmp_path / "people-v2.sealed")
    assert [(n, v) for n, v, _ in keys] == [("people", 2)] and len(keys[0][2]) == 32
    out = capsys.readouterr().out
    assert f"manifest sha256: {sealed.manifest_sha256}" in out
    assert str(tmp_path / "people-v2.sealed") in out
    assert keys[0][2].hex() not in out


def test_a_failing_key_sink_removes_the_sealed_folder(tmp_path) -> None:
    source = tmp_path / "t.csv"
    source.write_text("a\n1\n")

    def unreachable_broker(name: str, version: int, dek: bytes) -> None:
        raise ConnectionError("key broker unreachable")

    args = _parser().parse_args([str(source), "--name", "t", "--out", str(tmp_path / "out")])
    with pytest.raises(ConnectionError):
        seal_command(args, key_sink=unreachable_broker)
    assert not (tmp_path / "out").exists(), "a sealed folder whose key was lost is useless"


def test_usage_errors(tmp_path) -> None:
    args = _parser().parse_args(["x.csv", "--name", "bad/name"])
    with pytest.raises(UsageError, match="invalid dataset name"):
        seal_command(args, key_sink=lambda *key: None)
    with pytest.raises(SystemExit):
        _parser().parse_args(["x.csv", "--name", "a", "--part-size", "lots"])
    with pytest.raises(SystemExit):
        _parser().parse_args(["x.csv"])  # --name is required


def test_parse_size() -> None:
    assert parse_size("128MiB") == parse_size("128M") == 128 * 1024**2
    assert parse_size("500MB") == 500 * 1000**2
    assert parse_size("1.5G") == 3 * 1024**3 // 2
    assert parse_size("4096") == 4096
    for bad in ("", "0", "12XB", "-1M", "M"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_size(bad)
