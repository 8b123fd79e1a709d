"""Where a user's own tools find the key broker credential that names them."""

from __future__ import annotations

import getpass
from pathlib import Path

import pytest

from teelab.sealed_store import services


def test_the_local_token_of_this_login_else_the_hub_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEELAB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("TEELAB_KBS_TOKEN_FILE", raising=False)
    monkeypatch.delenv("JUPYTERHUB_API_TOKEN", raising=False)
    mine = tmp_path / "data" / "kbs" / "users" / f"{getpass.getuser()}.token"
    assert services.user_token_file() == mine
    assert services.user_credential() is None  # nothing yet: the caller says how to get one
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "hub-token-of-this-server")
    assert services.user_credential() == "hub-token-of-this-server"
    mine.parent.mkdir(parents=True)
    mine.write_text("local-token\n")
    mine.chmod(0o600)
    assert services.user_credential() == "local-token"  # the broker's own token wins on its machine
    elsewhere = tmp_path / "elsewhere.token"
    elsewhere.write_text("explicit\n")
    elsewhere.chmod(0o600)
    monkeypatch.setenv("TEELAB_KBS_TOKEN_FILE", str(elsewhere))
    assert services.user_credential() == "explicit"
    assert services.gateway_token_file() == elsewhere  # the gateway asks with the user's own credential
