"""TeeSpawner under ``internal_ssl``: the proxy and the hub reach the server over TLS with the key the server made
inside its TEE — the one its evidence binds — certified by the hub's notebooks CA after attestation. No server
key is ever made in the hub or written where the host reads it."""

from __future__ import annotations

import hashlib
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from teelab.extension.hub.demo import HubProcess
from tests.hub.test_tee_spawner import TeeHub

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ssl_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TeeHub]:
    root = tmp_path_factory.mktemp("tee-hub-ssl")
    hub = HubProcess(root)
    hub.prepare()
    with (root / "jupyterhub_config.py").open("a") as config:
        config.write(f"""
from teelab.extension.hub.spawner_config import configure_tee_spawner
configure_tee_spawner(c, root={str(root)!r})
c.JupyterHub.internal_ssl = True  # hub, proxy API and servers speak TLS with the hub's internal CAs
c.ConfigurableHTTPProxy.api_url = c.ConfigurableHTTPProxy.api_url.replace("http://", "https://")
c.JupyterHub.hub_bind_url = c.JupyterHub.hub_bind_url.replace("http://", "https://")
c.JupyterHub.internal_certs_location = {str(root / "internal-ssl")!r}
c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 0}}
c.JupyterHub.load_roles.append({{"name": "teelab-tee-test", "services": ["teelab-demo-setup"],
    "scopes": ["servers", "admin:server_state", "read:users", "proxy"]}})
""")
    hub.start()
    try:
        yield TeeHub(hub, "", "")
    finally:
        hub.stop()


def _served_certificate(target: str, certs: Path) -> x509.Certificate:
    """The certificate the server presents to a client holding the hub's own internal certificate."""
    url = urlsplit(target)
    context = ssl.create_default_context(cafile=str(certs / "notebooks-ca" / "notebooks-ca.crt"))
    context.load_cert_chain(
        certs / "hub-internal" / "hub-internal.crt", certs / "hub-internal" / "hub-internal.key"
    )
    with socket.create_connection((url.hostname, url.port), timeout=30) as raw:
        with context.wrap_socket(raw, server_hostname=url.hostname) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_the_server_serves_tls_with_its_attested_in_tee_key(ssl_hub: TeeHub) -> None:
    events = ssl_hub.spawn_and_follow("alice")
    try:
        assert events[-1].get("ready") is True, events
        verdict = ssl_hub.verdict("alice")
        assert verdict["status"] == "attested"
        routes = ssl_hub.hub.api("GET", "proxy")
        (route,) = [r for spec, r in routes.items() if spec.rstrip("/") == "/user/alice"]
        assert route["target"].startswith("https://"), route
        certs = ssl_hub.hub.root / "internal-ssl"
        served = _served_certificate(route["target"], certs)
        spki = served.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        assert hashlib.sha256(spki).hexdigest() == verdict["tls_spki_sha256"]
        assert (
            served.issuer
            == x509.load_pem_x509_certificate(
                (certs / "notebooks-ca" / "notebooks-ca.crt").read_bytes()
            ).subject
        )
        # The hub made no key for alice's server (stock create_certs would have: user-alice.key).
        assert not list(certs.rglob("user-alice*"))
        # Through the proxy (which holds its own client certificate), alice's server answers.
        token = ssl_hub.hub.user_token("alice", "test: through the proxy over internal TLS")
        import requests

        status = requests.get(
            f"{ssl_hub.hub.url}/user/alice/api/status",
            headers={"Authorization": f"token {token}"},
            timeout=60,
        )
        assert status.status_code == 200, status.text
    finally:
        ssl_hub.stop("alice")
