"""Secrets made or carried by the hub's new parts are never in a repr (a log line, a traceback, a notebook's
display of the object shows it)."""

from __future__ import annotations

from teelab.dask.agents import AgentCredentials
from teelab.extension.hub.hub_pod_config import PodSettings


def test_the_hub_pods_settings_show_their_ports_not_their_secrets() -> None:
    settings = PodSettings.make("/scratch", (41001, 41002, 41003, 41004, 41005))
    shown = repr(settings) + str(settings)
    for secret in (settings.cookie_secret, settings.proxy_token, settings.crypt_key, settings.service_token):
        assert len(secret) == 64 and secret not in shown
    assert "41001" in shown and "/scratch" in shown
    assert PodSettings.from_bytes(settings.to_bytes()) == settings  # still carried whole through the pipe


def test_the_agents_credentials_show_no_token_or_key() -> None:
    credentials = AgentCredentials(token="s3cr3t-bearer", client_certificate=(b"CHAIN", b"PRIVATE-KEY-PEM"))
    shown = repr(credentials) + str(credentials)
    assert "s3cr3t-bearer" not in shown and "PRIVATE-KEY-PEM" not in shown
