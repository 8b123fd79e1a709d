"""The whole chain a user checks, with the hub inside the pod: a real JupyterHub with TeeSpawner and
configurable-http-proxy in the hub pod (sim TEE), alice signing in and spawning through the pod's front door, and
`teelab hub verify --user alice` verifying the pod (hub and proxy in its measurement) and then her own server,
over the one verified TLS connection. With TeeSpawner the pod runs JupyterHub's internal_ssl: the proxy reaches
alice's server only over TLS with the key attested in her server's TEE, and refuses a server whose certificate
the pod's notebooks CA did not issue."""

from __future__ import annotations

import datetime
import functools
import hashlib
import ipaddress
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
import requests
import urllib3
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from teelab.cli import main as teelab_main
from teelab.enclave_runtime.backends import get_backend
from teelab.extension.hub.deploy import hub_pod_config_text, write_demo_root
from teelab.extension.hub.front_door_launch import RunningFrontDoor, front_door_policy_text
from teelab.extension.hub.hub_pod_config import SPAWNER_IDENTITY
from teelab.extension.hub.hub_pod_image import build_hub_pod_image, launch_hub_pod
from teelab.extension.hub.spawner_certs import NOTEBOOKS_CA
from teelab.gateway.identity import GatewayIdentity

pytestmark = pytest.mark.slow

PASSWORD = "teelab-pod-demo"
SPAWN_SECONDS = 180.0
SECRET_NAMES = {
    b"CONFIGPROXY_AUTH_TOKEN",
    b"JPY_COOKIE_SECRET",
    b"JUPYTERHUB_CRYPT_KEY",
    b"JUPYTERHUB_API_TOKEN",
}
# Test only: alice may read the proxy's routing table (GET /hub/api/proxy, which the hub asks the proxy's
# TLS-only API for). Appended to the measured config before the image is built.
ROUTES_ROLE = """
c.JupyterHub.load_roles.append({"name": "test-route-reader", "users": ["alice"], "scopes": ["proxy"]})
"""


def _run(argv: list[str], root: Path) -> None:
    done = subprocess.run(
        argv,
        env={**os.environ, "TEELAB_DATA_DIR": str(root / "data")},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr or done.stdout


@dataclass
class AlicesPod:
    """The pod with alice signed in (through its front door) and her attested server ready."""

    root: Path
    running: RunningFrontDoor
    policy: Path
    session: requests.Session
    token: str

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.running.port}"

    def get(self, path: str) -> requests.Response:
        return self.session.get(
            f"{self.url}{path}", headers={"Authorization": f"token {self.token}"}, timeout=60
        )

    def processes(self) -> list[psutil.Process]:
        return list(psutil.Process(self.running.process.popen.pid).children(recursive=True))


@pytest.fixture(scope="module")
def alices_pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AlicesPod]:
    tmp_path = tmp_path_factory.mktemp("hub-pod-tee")
    root = tmp_path / "root"
    write_demo_root(root, PASSWORD)
    teelab = str(Path(sys.executable).with_name("teelab"))
    _run([teelab, "hub", "setup", "--root", str(root)], root)  # the kernel's image, policy and kernelspec
    _run([sys.executable, "-m", "teelab.extension.hub.spawner_image", str(root)], root)  # the server's image
    config = root / "jupyterhub_config.py"
    config.write_text(hub_pod_config_text(root, tee_spawner=True) + ROUTES_ROLE)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TEELAB_DATA_DIR", str(root / "data"))
        backend = get_backend("sim")
        image = build_hub_pod_image(backend, config, out=root / "pod-image")
        policy = tmp_path / "hub-pod.toml"
        policy.write_text(front_door_policy_text(image, simulated=True))
        running = launch_hub_pod(backend, image)
    try:
        yield AlicesPod(root, running, policy, *_sign_in_and_spawn(f"https://127.0.0.1:{running.port}"))
    finally:
        running.stop()


def _sign_in_and_spawn(url: str) -> tuple[requests.Session, str]:
    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    session = requests.Session()
    # Self-signed: `teelab hub verify` below is what checks this key. Per request: requests prefers
    # REQUESTS_CA_BUNDLE from the environment over a session's own verify.
    session.request = functools.partial(session.request, verify=False)  # type: ignore[method-assign]
    session.get(f"{url}/hub/login", timeout=30)
    xsrf = session.cookies.get("_xsrf", path="/hub/") or ""
    login = session.post(
        f"{url}/hub/login",
        data={"username": "alice", "password": PASSWORD, "_xsrf": xsrf},
        allow_redirects=False,
        timeout=30,
    )
    assert login.status_code == 302, login.text
    api = {"X-XSRFToken": xsrf}
    session.get(f"{url}/hub/spawn", timeout=60)
    deadline = time.monotonic() + SPAWN_SECONDS
    while time.monotonic() < deadline:
        server = (
            session.get(f"{url}/hub/api/user", headers=api, timeout=30).json().get("servers") or {}
        ).get("")
        if server and server.get("ready"):
            break
        time.sleep(0.5)
    else:
        raise AssertionError("alice's attested server did not become ready")
    # The hub set a new XSRF cookie for the signed-in user: the token request carries that one.
    session.get(f"{url}/hub/token", timeout=30)
    fresh = {"X-XSRFToken": session.cookies.get("_xsrf", path="/hub/") or ""}
    minted = session.post(
        f"{url}/hub/api/users/alice/tokens",
        headers=fresh,
        json={"note": "teelab hub verify", "expires_in": 3600},
        timeout=30,
    )
    assert minted.status_code == 201, minted.text
    return session, str(minted.json()["token"])


def test_alice_verifies_the_hub_pod_and_her_attested_server_through_it(
    alices_pod: AlicesPod, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = alices_pod.root
    monkeypatch.setenv("TEELAB_DATA_DIR", str(root / "data"))
    # With TeeSpawner no process of the pod — alice's attested server included — has a secret in its
    # environment: the server's token is sealed to it (the simple spawner's test must leave its server out).
    pod_processes = alices_pod.processes()
    assert any(b"server_boot" in Path(f"/proc/{p.pid}/cmdline").read_bytes() for p in pod_processes)
    for process in pod_processes:
        environ = Path(f"/proc/{process.pid}/environ").read_bytes()
        names = {entry.split(b"=", 1)[0] for entry in environ.split(b"\0") if entry}
        assert not names & SECRET_NAMES, (process.cmdline(), names & SECRET_NAMES)
    token = tmp_path / "alice-token"
    token.write_text(alices_pod.token)
    argv = [
        "hub", "verify", alices_pod.url, "--policy", str(alices_pod.policy),
        "--user", "alice", "--token-file", str(token),
        "--server-policy", str(root / "policies" / "hub-server.toml"),
        "--pin-file", str(tmp_path / "pins.json"),
    ]  # fmt: skip
    status = teelab_main(argv)
    captured = capsys.readouterr()
    assert status == 0, captured.out + captured.err
    lines = captured.out.splitlines()
    assert all(line.startswith("✓ ") for line in lines[:-1]), captured.out
    assert any(line.startswith("✓ hub pod: hub, proxy and service measured") for line in lines), captured.out
    assert any(line.startswith("✓ server binding:") and "'alice/'" in line for line in lines), captured.out
    assert any(line.startswith("✓ server controller:") for line in lines), captured.out
    assert alices_pod.token not in captured.out + captured.err


def _pod_scratch(pod: AlicesPod) -> Path:
    """The pod's TEE-private scratch: its ``TMPDIR``, placed by the launch in a fresh 0700 folder."""
    environ = Path(f"/proc/{pod.running.process.popen.pid}/environ").read_bytes()
    (scratch,) = [e.split(b"=", 1)[1] for e in environ.split(b"\0") if e.startswith(b"TMPDIR=")]
    return Path(os.fsdecode(scratch))


_PEM_PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----\s+[A-Za-z0-9+/=\s]{40,}-----END")
# Private keys under root that are not the spawner's, each on purpose: the image signing key (a build-time key of
# the operator's: policies pin the measurement, not the signer) and the key broker's state (on hardware the
# pod's encrypted disk, "Where the state lives"). The simulated platform's own keys model the CPU's.
_OTHER_KEYS = {"data/enclave-signing-key.pem", "kbs/signing.key"}


def _private_key_files(folder: Path) -> list[str]:
    """Files under ``folder`` holding a PEM private key (a whole block: not code that names the header)."""
    return sorted(
        str(path.relative_to(folder))
        for path in folder.rglob("*")
        if path.is_file() and not path.is_symlink() and _PEM_PRIVATE_KEY.search(path.read_bytes())
    )


def test_the_spawner_key_lives_in_the_pods_scratch_and_is_the_controller_of_alices_server(
    alices_pod: AlicesPod,
) -> None:
    """G_s (whoever holds it signs bundles a genuine server image accepts) is made in the pod's TEE-private
    scratch at its start, never under the host-visible root; alice's server obeys exactly that key."""
    scratch = _pod_scratch(alices_pod)
    identity = scratch / SPAWNER_IDENTITY
    assert identity.is_file() and identity.stat().st_mode & 0o777 == 0o600
    assert not identity.resolve().is_relative_to(alices_pod.root.resolve())
    # The hub's config names that file (the hub process's TeeSpawner reads it), not one under root.
    config = (alices_pod.root / "jupyterhub_config.py").read_text()
    assert "spawner-identity.pem" not in config
    under_root = [p for p in _private_key_files(alices_pod.root) if not p.startswith("data/sim-platform/")]
    assert set(under_root) <= _OTHER_KEYS, under_root
    assert SPAWNER_IDENTITY in {Path(p).name for p in _private_key_files(scratch)}
    public = GatewayIdentity.load_or_create(identity).public
    verdicts = alices_pod.get("/services/teelab-kbs/api/servers/alice")
    assert verdicts.status_code == 200, verdicts.text
    ((verdict,),) = [verdicts.json()["servers"]]
    assert verdict["status"] == "attested"
    assert verdict["controller"] == hashlib.sha256(public).hexdigest()
    assert verdict["controller_key"] == public.hex()


def _alices_target(pod: AlicesPod) -> tuple[str, int]:
    """Where the proxy sends /user/alice/ (its routing table, read through the hub's API)."""
    routes = pod.get("/hub/api/proxy")
    assert routes.status_code == 200, routes.text
    (target,) = [r["target"] for spec, r in routes.json().items() if spec.rstrip("/") == "/user/alice"]
    url = urlsplit(target)
    assert url.scheme == "https", target
    assert url.hostname is not None and url.port is not None
    return url.hostname, url.port


def _presented_certificate(host: str, port: int) -> x509.Certificate:
    """The certificate a TLS server on ``host:port`` presents (read without trusting it)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=30) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def _argv(process: psutil.Process) -> list[str]:
    try:
        return list(process.cmdline())
    except psutil.NoSuchProcess:
        return []  # a short-lived child gone since the listing


def _proxy_api_port(pod: AlicesPod) -> int:
    (argv,) = [a for a in map(_argv, pod.processes()) if "configurable-http-proxy" in " ".join(a)]
    return int(argv[argv.index("--api-port") + 1])


def test_the_proxy_reaches_alices_server_over_tls_with_the_key_attested_in_her_tee(
    alices_pod: AlicesPod,
) -> None:
    host, port = _alices_target(alices_pod)  # https: the hub's API asked the proxy's API over TLS for this
    verdicts = alices_pod.get("/services/teelab-kbs/api/servers/alice")
    assert verdicts.status_code == 200, verdicts.text
    ((verdict,),) = [verdicts.json()["servers"]]
    assert verdict["status"] == "attested"
    served = _presented_certificate(host, port)
    spki = served.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert hashlib.sha256(spki).hexdigest() == verdict["tls_spki_sha256"]  # the key her evidence binds
    assert served.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == NOTEBOOKS_CA
    # Her server speaks nothing but TLS: a plain request to its port gets no answer.
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://{host}:{port}/user/alice/api/status", timeout=30)
    # The proxy's API, too, takes TLS with a client certificate from the pod's CAs only.
    api_port = _proxy_api_port(alices_pod)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{api_port}/api/routes", timeout=30)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"https://127.0.0.1:{api_port}/api/routes", timeout=30, verify=False)
    # And through the front door and the proxy (over that TLS hop), alice's server answers her.
    status = alices_pod.get("/user/alice/api/status")
    assert status.status_code == 200, status.text


def _impostor_certificate(host: str) -> tuple[bytes, bytes]:
    """A key and certificate for ``host`` from a CA that calls itself notebooks-ca but is not the pod's."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NOTEBOOKS_CA)])
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "impostor")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, certificate.public_bytes(serialization.Encoding.PEM)


@dataclass
class Impostor:
    """A TLS server that keeps whatever request bytes reach it; ``tried`` is set once a handshake was tried."""

    listener: socket.socket
    context: ssl.SSLContext
    received: list[bytes] = field(default_factory=list)
    tried: threading.Event = field(default_factory=threading.Event)

    def serve(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return  # closed: the test is over
            try:
                with self.context.wrap_socket(raw, server_side=True) as tls:
                    tls.settimeout(10)
                    self.received.append(tls.recv(65536))
                    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            except (OSError, ssl.SSLError):
                raw.close()
            finally:
                self.tried.set()


def _listens(process: psutil.Process, port: int) -> bool:
    try:
        return any(c.laddr.port == port and c.status == psutil.CONN_LISTEN for c in process.net_connections())
    except psutil.NoSuchProcess:
        return False


def _bind_when_free(host: str, port: int) -> socket.socket:
    """``host:port`` once the killed server's socket is gone (the kernel frees it when the process dies)."""
    for _ in range(300):
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((host, port))
        except OSError:
            listener.close()
            time.sleep(0.1)
            continue
        listener.listen()
        return listener
    raise AssertionError(f"{host}:{port} stayed taken after alice's server was killed")


def test_the_proxy_refuses_a_server_whose_certificate_the_pod_did_not_issue(
    alices_pod: AlicesPod, tmp_path: Path
) -> None:
    """The host swaps alice's server for one of its own on the same port (last in this module: it ends her
    server). The proxy's request never reaches it: its certificate is not from the pod's notebooks CA (though
    its issuer carries that name)."""
    host, port = _alices_target(alices_pod)
    (listening,) = [p for p in alices_pod.processes() if _listens(p, port)]
    (hub,) = [p for p in alices_pod.processes() if _argv(p)[1:4] == ["-s", "-m", "jupyterhub"]]
    key_pem, cert_pem = _impostor_certificate(host)
    (tmp_path / "impostor.key").write_bytes(key_pem)
    (tmp_path / "impostor.crt").write_bytes(cert_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "impostor.crt", tmp_path / "impostor.key")
    pool = ThreadPoolExecutor(1)
    # The host freezes the hub while it swaps the server: otherwise the hub could notice its server's exit
    # and take the route away before the proxy ever tries the impostor.
    hub.suspend()
    try:
        listening.kill()
        impostor = Impostor(_bind_when_free(host, port), context)
        thread = threading.Thread(target=impostor.serve, daemon=True)
        thread.start()
        pending = pool.submit(alices_pod.get, "/user/alice/api/status")
        tried = impostor.tried.wait(60)
    finally:
        hub.resume()
    answer = pending.result(timeout=120)
    pool.shutdown()
    impostor.listener.shutdown(socket.SHUT_RDWR)  # wakes its accept(); close() alone would not
    impostor.listener.close()
    thread.join(30)
    assert tried  # the proxy did try the route's target ...
    assert not any(impostor.received), impostor.received  # ... and sent it nothing: the handshake failed
    assert answer.status_code != 200, answer.text
