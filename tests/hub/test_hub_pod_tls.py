"""The hub pod's configuration under internal_ssl, without starting a pod: with TeeSpawner the measured config turns
on JupyterHub's internal TLS with its store in the pod's scratch, the pod makes the CAs and the proxy's flags with
JupyterHub's own code (and the hub's start reuses them), and a TeeSpawner config with internal_ssl turned off
is refused. The end-to-end behaviour on a running pod: tests/hub/test_hub_pod_tee_spawner.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from traitlets.config import Config

from teelab.errors import ConfigError
from teelab.extension.hub.deploy import hub_pod_config_text, write_demo_root
from teelab.extension.hub.hub_pod_config import PodSettings, load_hub_config, service_environment
from teelab.extension.hub.hub_pod_tls import make_internal_tls, require_internal_ssl


def _load(tmp_path: Path, text: str) -> tuple[PodSettings, Config]:
    root = tmp_path / "root"
    write_demo_root(root, "pw")
    config = root / "jupyterhub_config.py"
    config.write_text(text)
    settings = PodSettings.make(str(tmp_path / "scratch"), (40001, 40002, 40003, 40004, 40005))
    return settings, load_hub_config(str(config), settings)


def test_a_tee_spawner_pod_runs_internal_ssl_with_its_certificates_made_in_the_scratch(
    tmp_path: Path,
) -> None:
    settings, loaded = _load(tmp_path, hub_pod_config_text(tmp_path / "root", tee_spawner=True))
    hub = loaded.JupyterHub
    assert hub.internal_ssl is True
    assert hub.internal_certs_location == f"{settings.scratch}/internal-ssl"
    assert hub.hub_bind_url == f"https://127.0.0.1:{settings.hub_port}"
    assert loaded.ConfigurableHTTPProxy.api_url == f"https://127.0.0.1:{settings.proxy_api_port}"
    assert require_internal_ssl(loaded)
    # The pod-started service asks the hub through the proxy (which holds a client certificate for the hub).
    assert service_environment(loaded, settings)["JUPYTERHUB_API_URL"] == f"{settings.proxy_url}/hub/api"

    tls = make_internal_tls(loaded)
    flags = list(tls.proxy_flags)
    for required in (
        "--api-ssl-request-cert",
        "--api-ssl-reject-unauthorized",
        "--client-ssl-request-cert",
        "--client-ssl-reject-unauthorized",
    ):
        assert required in flags
    files = [value for value in flags if not value.startswith("--")]  # the values of the key, cert, ca flags
    assert len(files) == 6
    assert all(f.startswith(f"{settings.scratch}/internal-ssl/") and Path(f).is_file() for f in files)
    # The proxy's key and the CAs' keys are readable by the pod's own user only.
    assert all(p.stat().st_mode & 0o077 == 0 for p in Path(settings.scratch, "internal-ssl").rglob("*.key"))
    # The hub's start with the same config reuses the store: the running proxy's certificates stay valid.
    ca = Path(settings.scratch, "internal-ssl", "notebooks-ca", "notebooks-ca.crt").read_bytes()
    proxy_cert = Path(flags[flags.index("--client-ssl-cert") + 1]).read_bytes()
    again = make_internal_tls(loaded)
    assert again.proxy_flags == tls.proxy_flags
    assert Path(settings.scratch, "internal-ssl", "notebooks-ca", "notebooks-ca.crt").read_bytes() == ca
    assert Path(flags[flags.index("--client-ssl-cert") + 1]).read_bytes() == proxy_cert


def test_the_pod_refuses_tee_spawner_with_internal_ssl_turned_off(tmp_path: Path) -> None:
    text = hub_pod_config_text(tmp_path / "root", tee_spawner=True) + "\nc.JupyterHub.internal_ssl = False\n"
    _, loaded = _load(tmp_path, text)
    with pytest.raises(ConfigError, match="refuses TeeSpawner without internal_ssl"):
        require_internal_ssl(loaded)


def test_the_simple_spawner_pod_keeps_its_plain_loopback_configuration(tmp_path: Path) -> None:
    settings, loaded = _load(tmp_path, hub_pod_config_text(tmp_path / "root"))
    assert not require_internal_ssl(loaded)
    assert loaded.JupyterHub.hub_bind_url == f"http://127.0.0.1:{settings.hub_port}"
    assert service_environment(loaded, settings)["JUPYTERHUB_API_URL"] == settings.hub_api_url
