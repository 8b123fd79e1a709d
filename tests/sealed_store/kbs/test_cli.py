"""``teelab kbs serve`` and the help of the KBS commands."""

from __future__ import annotations

import argparse
import getpass
import signal
from pathlib import Path

import pytest

from teelab.sealed_store.kbs import cli
from teelab.sealed_store.kbs.auth import ADMIN_TOKEN_FILE, read_token
from teelab.sealed_store.kbs.identity import local_token_file

from .conftest import serve_in_a_process


@pytest.mark.parametrize(
    ("argv", "must_show"),
    [
        (
            ["kbs", "serve", "--help"],
            ["examples:", "teelab kbs serve --db postgresql+psycopg://", "--durability"],
        ),
        (["audit", "show", "--help"], ["examples:", "teelab audit show --since"]),
        (["audit", "verify", "--help"], ["examples:", "--head 5210:", "exit status:"]),
    ],
)
def test_help_has_examples(argv: list[str], must_show: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(argv)
    assert done.value.code == 0
    out = capsys.readouterr().out
    for text in must_show:
        assert text in out


def test_registers_into_the_teelab_command_line() -> None:
    from teelab.cli import DESCRIPTION, HelpFormatter

    parser = argparse.ArgumentParser(prog="teelab", description=DESCRIPTION, formatter_class=HelpFormatter)
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["kbs", "serve", "--listen", "127.0.0.1:0", "--collateral", "none"])
    assert args.handler is cli._serve and args.collateral == "none"
    assert parser.parse_args(["audit"]).group_parser.prog == "teelab audit"
    assert cli.main(["audit"]) == 2  # a group without its command teaches instead of failing silently


def test_serve_prints_where_tokens_are_never_the_tokens(tmp_path: Path) -> None:
    state = tmp_path / "kbs"
    process, lines = serve_in_a_process("--listen", "127.0.0.1:0", "--state", str(state))
    process.send_signal(signal.SIGTERM)
    rest, _ = process.communicate(timeout=30)
    output = "".join(lines) + rest
    assert process.returncode == 0, output
    mine = local_token_file(state, getpass.getuser())
    assert str(state / ADMIN_TOKEN_FILE) in output and str(mine) in output
    for path in (state / ADMIN_TOKEN_FILE, mine):
        assert read_token(path) not in output
    assert "NOT confidential" in output  # the sim collateral source says what it is


def test_serve_refuses_an_address_it_cannot_bind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["kbs", "serve", "--listen", "256.1.1.1:1", "--state", str(tmp_path / "s")]) == 2
    assert "cannot listen" in capsys.readouterr().err
