"""TeeKubeSpawner under ``internal_ssl``: the proxy→server hop is TLS with the key made in the pod's TEE.

No Kubernetes API server here. The API server is played at the ``kubernetes_asyncio`` client boundary
(``ApiClient.request``, below every ``CoreV1Api`` call KubeSpawner makes): each request is recorded with its
body as the API server would receive it, so a test sees every Secret, Service and pod KubeSpawner would create.
The hub's internal CAs are JupyterHub's own (``JupyterHub.init_internal_ssl``). The ``_boot`` test runs the
real attested start against a real server boot in the simulated TEE (this machine plays the node, as in
``test_tee_kube_spawner_boot.py``) and then speaks TLS to the served port the way the proxy and the hub do:
the notebooks CA as trust anchor, the Service's DNS name as the expected name, the hub's client certificate.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import socket
import ssl
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from teelab.extension.hub import tee_spawner
from teelab.extension.hub.demo import free_port
from teelab.extension.hub.kube_spawner import TeeKubeSpawner
from teelab.extension.hub.kubernetes import find_secrets
from teelab.extension.hub.spawner_certs import NOTEBOOKS_CA
from teelab.extension.hub.spawner_protocol import ServerHello
from teelab.extension.hub.tee_spawner import AttestationFailed, TeeSpawner
from teelab.protocols.session import encode_frame, read_frame
from tests.hub.test_tee_kube_spawner import HUB_TOKEN, configured, no_cluster, with_reflector
from tests.hub.test_tee_kube_spawner_boot import SimCluster, Tee, cluster_spawner, hub_api, kubelet, tee

__all__ = ["hub_api", "no_cluster", "tee"]  # fixtures: the hub API, a kubeconfig naming nobody, the TEE image

SECRET_VOLUME = "jupyterhub-internal-certs"  # KubeSpawner's (make_pod) volume for its internal_ssl Secret


@dataclasses.dataclass
class Certs:
    location: Path
    trust_bundles: dict[str, str]


@pytest.fixture
def hub_certs(tmp_path: Path) -> Certs:
    """The hub's internal CAs and trust bundles, made by JupyterHub itself as with ``internal_ssl = True``."""
    from jupyterhub.app import JupyterHub

    location = tmp_path / "internal-ssl"

    async def make() -> dict[str, str]:  # JupyterHub's HTTP client wants a running loop
        app = JupyterHub(internal_ssl=True, internal_certs_location=str(location))
        app.init_internal_ssl()
        return dict(app.internal_trust_bundles)

    return Certs(location, asyncio.run(make()))


class ApiServer:
    """The API server at the client's edge: records every request; creates pods (shown running at 127.0.0.1 in
    the reflector, as the watch would), Services and Secrets; deletes pods; anything else is not found."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, Any]] = []
        self.reflector: Any = None

    def paths(self, part: str) -> list[tuple[str, str]]:
        return [(method, path) for method, path, _ in self.requests if part in path]

    def created(self, kind: str) -> list[Any]:
        return [
            body for method, path, body in self.requests if method == "POST" and path.endswith(f"/{kind}")
        ]

    async def request(self, method: str, url: str, body: Any = None, **_: Any) -> Any:
        from kubernetes_asyncio.client.exceptions import ApiException

        path = urlsplit(url).path
        namespace = path.split("/namespaces/", 1)[-1].split("/", 1)[0]
        self.requests.append((method, path, body))
        if method == "POST" and path.endswith("/pods"):
            key = f"{namespace}/{body['metadata']['name']}"
            status = {"name": "notebook", "ready": True, "state": {"running": {}}}
            self.reflector.resources[key] = {
                **body,
                "metadata": {**body["metadata"], "uid": "uid-" + key, "namespace": namespace},
                "status": {"phase": "Running", "podIP": "127.0.0.1", "containerStatuses": [status]},
            }
            return _response(201, body)
        if method == "POST":
            return _response(201, body)
        if method == "DELETE" and "/pods/" in path:
            pod = self.reflector.resources.pop(f"{namespace}/{path.rsplit('/', 1)[1]}", None)
            if pod is not None:
                return _response(200, pod)
        raise ApiException(http_resp=_response(404, {"kind": "Status", "code": 404}))


def _response(status: int, body: Any) -> Any:
    from kubernetes_asyncio.client.rest import RESTResponse

    class Head:
        reason = "OK" if status < 400 else "Not Found"
        headers = {"content-type": "application/json"}

    Head.status = status  # type: ignore[attr-defined]
    return RESTResponse(Head(), json.dumps(body).encode())


@pytest.fixture
def api_server(monkeypatch: pytest.MonkeyPatch) -> ApiServer:
    from kubernetes_asyncio.client import ApiClient

    server = ApiServer()

    async def request(client: Any, method: str, url: str, **kwargs: Any) -> Any:
        return await server.request(method, url, **kwargs)

    monkeypatch.setattr(ApiClient, "request", request)
    return server


@pytest.fixture
def issued(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, list[str]]]:
    """Every certificate the hub's notebooks CA issues (the SPKI and the names), the real function doing it."""
    calls: list[tuple[bytes, list[str]]] = []
    certify = tee_spawner.certify_server_key

    def recording(tls_spki: bytes, **kwargs: Any) -> str:
        calls.append((tls_spki, list(kwargs["alt_names"])))
        return certify(tls_spki, **kwargs)

    monkeypatch.setattr(tee_spawner, "certify_server_key", recording)
    return calls


def service_names(spawner: TeeKubeSpawner) -> list[str]:
    """The names KubeSpawner gives a pod's Service (its ``ssl_alt_names`` default)."""
    name, namespace = spawner.pod_name, spawner.namespace
    return [f"{name}.{namespace}.svc.cluster.local", name, f"{name}.{namespace}", f"{name}.{namespace}.svc"]


def san_names(pem: str | bytes) -> list[str]:
    certificate = x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem)
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return list(san.get_values_for_type(x509.DNSName))


def spki_of(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def test_internal_ssl_makes_the_service_and_never_a_secret_and_the_pod_mounts_no_key_offline(
    tmp_path: Path, hub_certs: Certs, api_server: ApiServer, issued: list[tuple[bytes, list[str]]]
) -> None:
    """no Kubernetes API server here: every request KubeSpawner's internal_ssl path makes is recorded."""
    c = configured(tmp_path)
    c.TeeKubeSpawner.boot_port = free_port()  # nobody listens: the spawn ends at the boot's connection
    c.TeeSpawner.handshake_timeout = 0.5
    # The key would be made where certificates are made; TeeSpawner's create_certs/move_certs win over
    # KubeSpawner's (which ship a Secret).
    assert TeeKubeSpawner.create_certs is TeeSpawner.create_certs
    assert TeeKubeSpawner.move_certs is TeeSpawner.move_certs

    async def spawn() -> tuple[TeeKubeSpawner, dict[str, str]]:
        spawner = TeeKubeSpawner(
            config=c,
            _mock=True,
            api_token=HUB_TOKEN,
            internal_ssl=True,
            internal_trust_bundles=hub_certs.trust_bundles,
            internal_certs_location=str(hub_certs.location),
        )
        api_server.reflector = await with_reflector(spawner)
        # What JupyterHub's User.spawn does under internal_ssl, before start().
        paths = await spawner.move_certs(await spawner.create_certs())
        spawner.cert_paths = paths
        with pytest.raises(AttestationFailed, match="did not answer"):
            await spawner.start()
        return spawner, paths

    spawner, paths = asyncio.run(spawn())
    assert paths == {"keyfile": "", "certfile": "", "cafile": hub_certs.trust_bundles[NOTEBOOKS_CA]}
    assert not list(hub_certs.location.rglob("*mock*"))  # no key or certificate made in the hub
    # No Secret: not created, not read, not deleted (the hub needs no permission on Secrets).
    assert api_server.paths("secrets") == []
    (pod,) = api_server.created("pods")
    (service,) = api_server.created("services")
    # The Service KubeSpawner makes for the pod's DNS name: the pod's name, its server port, its labels.
    assert service["metadata"]["name"] == spawner.pod_name
    assert [port["port"] for port in service["spec"]["ports"]] == [spawner.port]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["metadata"]["ownerReferences"][0]["uid"] == f"uid-{spawner.namespace}/{spawner.pod_name}"
    # The pod: no Secret volume or mount, no JUPYTERHUB_SSL_* (nor any other variable but the boot request).
    spec = pod["spec"]
    assert SECRET_VOLUME not in json.dumps(pod)
    assert not [volume for volume in spec.get("volumes") or [] if "secret" in volume]
    (container,) = spec["containers"]
    assert not [m for m in container.get("volumeMounts") or [] if m["name"] == SECRET_VOLUME]
    assert [entry["name"] for entry in container["env"]] == ["TEELAB_HUB_SERVER_REQUEST"]
    assert "JUPYTERHUB_SSL" not in json.dumps(pod) and find_secrets(pod) == []
    # The URL the hub and the proxy would use: https at the Service's name.
    assert spawner.dns_name == f"{spawner.pod_name}.{spawner.namespace}.svc.cluster.local"
    assert spawner._pod_url == f"https://{spawner.dns_name}:{spawner.port}"
    assert issued == []  # the pod never said hello: nothing certified
    assert spawner.get_state()["teelab_attestation"]["status"] == "failed"
    assert api_server.paths(f"/pods/{spawner.pod_name}") == [
        ("DELETE", f"/api/v1/namespaces/{spawner.namespace}/pods/{spawner.pod_name}")
    ]


def test_the_certificate_for_an_attested_key_names_the_pods_service_offline(
    tmp_path: Path, hub_certs: Certs
) -> None:
    """no Kubernetes API server here: what ``_bundle`` seals to the pod once its evidence passed."""
    c = configured(tmp_path)
    c.KubeSpawner.pod_connect_ip = "{username}.notebooks.example.org"

    async def secrets() -> tuple[TeeKubeSpawner, Any, bytes]:
        spawner = TeeKubeSpawner(
            config=c,
            _mock=True,
            api_token=HUB_TOKEN,
            internal_ssl=True,
            internal_trust_bundles=hub_certs.trust_bundles,
            internal_certs_location=str(hub_certs.location),
        )
        ports = [{"name": "notebook-port", "containerPort": spawner.port}]
        pod = {"status": {"podIP": "10.1.2.3"}, "spec": {"containers": [{"ports": ports}]}}
        spawner._pod_url = str(spawner._get_pod_url(pod))  # what KubeSpawner's start() returned
        key = ec.generate_private_key(ec.SECP256R1())  # T, as the boot makes it in the TEE
        hello = ServerHello(b"E" * 32, spki_of(key), {})
        return spawner, await spawner._server_secrets(hello), spki_of(key)

    spawner, sealed, spki = asyncio.run(secrets())
    certificate = x509.load_pem_x509_certificate(sealed.tls_cert_pem.encode())
    assert certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) == spki
    names = san_names(sealed.tls_cert_pem)
    assert set(service_names(spawner)) <= set(names)
    # pod_connect_ip changes the URL's host: the certificate names it too.
    host = urlsplit(spawner._pod_url).hostname
    assert spawner._pod_url.startswith("https://") and host and host.endswith(".notebooks.example.org")
    assert host in names
    assert "localhost" not in names  # KubeSpawner's default: no local names
    ca = (hub_certs.location / "notebooks-ca" / "notebooks-ca.crt").read_bytes()
    assert certificate.issuer == x509.load_pem_x509_certificate(ca).subject
    assert sealed.tls_ca_pem == Path(hub_certs.trust_bundles[NOTEBOOKS_CA]).read_text()
    assert sealed.api_token == HUB_TOKEN


def _served(host: str, port: int, name: str, certs: Path, deadline: float) -> tuple[x509.Certificate, bytes]:
    """Connect as the proxy and the hub do (the notebooks CA, ``name`` checked, the hub's client certificate)
    to ``host:port``; the certificate served and the answer to ``GET /user/alice/api``."""
    context = ssl.create_default_context(cafile=str(certs / "notebooks-ca" / "notebooks-ca.crt"))
    context.load_cert_chain(
        certs / "hub-internal" / "hub-internal.crt", certs / "hub-internal" / "hub-internal.key"
    )
    while True:
        try:
            raw = socket.create_connection((host, port), timeout=30)
        except OSError:
            assert time.monotonic() < deadline, "the server never listened"
            time.sleep(0.3)
            continue
        with raw, context.wrap_socket(raw, server_hostname=name) as tls:
            der = tls.getpeercert(binary_form=True)
            tls.sendall(f"GET /user/alice/api HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
        assert der is not None
        return x509.load_der_x509_certificate(der), answer


class SslCluster(SimCluster):  # type: ignore[misc]
    """The simulated cluster of ``test_tee_kube_spawner_boot.py``; with ``stale_key``, a host on the pod network
    that puts a key of its own (a previous server's ``T``) into the pod's hello on its way to the hub."""

    stale_key: bytes | None = None

    async def connect_boot(self, process: Any, timeout: float) -> Any:
        channel = await super().connect_boot(process, timeout)
        if channel is None or self.stale_key is None:
            return channel
        reader, writer = channel
        hello = ServerHello.from_json(await read_frame(reader))
        forged = asyncio.StreamReader()
        forged.feed_data(encode_frame(dataclasses.replace(hello, tls_spki=self.stale_key)))

        async def relay() -> None:
            while chunk := await reader.read(65536):
                forged.feed_data(chunk)
            forged.feed_eof()

        self._relay = asyncio.ensure_future(relay())
        return forged, writer


def ssl_spawner(tee: Tee, tmp_path: Path, hub_api: str, certs: Certs) -> SslCluster:
    base = cluster_spawner(tee, tmp_path, hub_api)
    spawner = SslCluster(
        config=base.config,
        _mock=True,
        api_token=HUB_TOKEN,
        hub=base.hub,
        user=base.user,
        internal_ssl=True,
        internal_trust_bundles=certs.trust_bundles,
        internal_certs_location=str(certs.location),
    )
    spawner.server = base.server
    return spawner


@pytest.mark.slow
def test_the_pod_serves_tls_for_its_service_name_with_its_attested_in_tee_key_boot(
    tee: Tee,
    tmp_path: Path,
    hub_api: str,
    hub_certs: Certs,
    api_server: ApiServer,
    issued: list[tuple[bytes, list[str]]],
) -> None:
    """no Kubernetes API server here: the real attested start of a boot in the simulated TEE, then TLS."""

    async def run() -> tuple[SslCluster, str, dict[str, Any], tuple[x509.Certificate, bytes]]:
        spawner = ssl_spawner(tee, tmp_path, hub_api, hub_certs)
        api_server.reflector = await with_reflector(spawner)
        node = asyncio.ensure_future(kubelet(spawner))
        try:
            spawner.cert_paths = await spawner.move_certs(await spawner.create_certs())
            url = str(await spawner.start())
            # The Service's DNS name resolves to the pod's IP in a cluster; here the pod's IP is 127.0.0.1.
            address = urlsplit(url)
            assert address.hostname is not None and address.port is not None
            served = await asyncio.get_running_loop().run_in_executor(
                None,
                lambda: _served(
                    "127.0.0.1", address.port, address.hostname, hub_certs.location, time.monotonic() + 120
                ),
            )
            state = spawner.get_state()
            await spawner.stop(now=True)
            return spawner, url, state, served
        finally:
            node.cancel()
            for key in list(SimCluster.boots):
                await spawner._make_delete_pod_request(key.split("/", 1)[1])

    spawner, url, state, (certificate, answer) = asyncio.run(run())
    verdict = state["teelab_attestation"]
    assert verdict["status"] == "attested"
    assert url == f"https://jupyter-alice.{spawner.namespace}.svc.cluster.local:{spawner.port}"
    spki = certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert hashlib.sha256(spki).hexdigest() == verdict["tls_spki_sha256"]  # T, the key the evidence binds
    assert set(service_names(spawner)) <= set(san_names(certificate.public_bytes(Encoding.PEM)))
    assert [
        (key, set(service_names(spawner)) <= {n.removeprefix("DNS:") for n in names}) for key, names in issued
    ] == [(spki, True)]
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert api_server.paths("secrets") == [] and len(api_server.created("services")) == 1
    assert not list(hub_certs.location.rglob("*alice*"))


@pytest.mark.slow
def test_a_stale_key_put_into_the_pods_hello_gets_no_certificate_boot(
    tee: Tee,
    tmp_path: Path,
    hub_api: str,
    hub_certs: Certs,
    api_server: ApiServer,
    issued: list[tuple[bytes, list[str]]],
) -> None:
    """no Kubernetes API server here: the host on the pod network swaps ``T`` in the hello for a key it holds
    (a previous server's); the evidence binds the real ``T``, so the spawn is refused and nothing certified."""
    stale = ec.generate_private_key(ec.SECP256R1())

    async def run() -> dict[str, Any]:
        spawner = ssl_spawner(tee, tmp_path, hub_api, hub_certs)
        spawner.stale_key = spki_of(stale)
        api_server.reflector = await with_reflector(spawner)
        node = asyncio.ensure_future(kubelet(spawner))
        try:
            spawner.cert_paths = await spawner.move_certs(await spawner.create_certs())
            with pytest.raises(AttestationFailed, match="report_data"):
                await spawner.start()
            return dict(spawner.get_state()["teelab_attestation"])
        finally:
            node.cancel()
            for key in list(SimCluster.boots):
                await spawner._make_delete_pod_request(key.split("/", 1)[1])

    verdict = asyncio.run(run())
    assert verdict["status"] == "refused" and "report_data" in verdict["reason"]
    assert issued == []  # no certificate for the stale key (nor for any other)
    assert api_server.paths("secrets") == []


def test_k8s_values_with_internal_ssl_turn_it_on_for_the_tee_kube_spawner_only_offline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """no Kubernetes API server here: `teelab hub k8s-values --tee-kube-spawner --internal-ssl`."""
    from jupyterhub.app import JupyterHub
    from traitlets.config import Config

    from teelab.cli import main as teelab_main

    c = configured(tmp_path)
    argv = [
        "hub",
        "k8s-values",
        "--runtime-class",
        "kata-qemu-snp",
        "--identity-file",
        c.TeeSpawner.identity_file,
    ]
    argv += ["--server-policy", c.TeeSpawner.policy_for["*"]]
    assert teelab_main([*argv, "--tee-kube-spawner", "--internal-ssl"]) == 0
    config = json.loads(capsys.readouterr().out)["hub"]["config"]
    assert config["JupyterHub"] == {
        "spawner_class": "teelab.extension.hub.kube_spawner.TeeKubeSpawner",
        "internal_ssl": True,
    }
    assert JupyterHub(config=Config(config)).internal_ssl is True  # the chart sets hub.config as traits
    assert teelab_main([*argv, "--tee-kube-spawner"]) == 0
    assert "internal_ssl" not in json.loads(capsys.readouterr().out)["hub"]["config"]["JupyterHub"]
    # Stock KubeSpawner would make the server's key in the hub and ship it as a Secret: refused.
    assert teelab_main([*argv, "--internal-ssl"]) != 0
    assert "--internal-ssl needs --tee-kube-spawner" in capsys.readouterr().err
