"""The hub pod (sim TEE): the front door, a real JupyterHub, configurable-http-proxy and the teelab-kbs service in
one measured image. `teelab hub verify` names the hub and the proxy as part of the front door's measurement, a
user signs in and spawns through the attested front door, nothing but the front door listens off loopback, no
secret is in the host-visible argv or environment of the pod's processes, and a changed hub config or proxy file
is another measurement that fails the user's pinned policy."""

from __future__ import annotations

import functools
import ipaddress
import json
import re
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests
import urllib3

from teelab.cli import main as teelab_main
from teelab.enclave_runtime.backends import get_backend
from teelab.errors import ConfigError, EnclaveError
from teelab.extension.hub.deploy import hub_pod_config_text, write_demo_root
from teelab.extension.hub.front_door import REQUEST_ENV
from teelab.extension.hub.front_door_launch import RunningFrontDoor, front_door_policy_text
from teelab.extension.hub.front_door_protocol import FrontDoorError, FrontDoorEvidence
from teelab.extension.hub.hub_pod import pod_request
from teelab.extension.hub.hub_pod_config import PodSettings
from teelab.extension.hub.hub_pod_image import ProxyFiles, build_hub_pod_image, hub_pod_spec, launch_hub_pod
from teelab.extension.hub.hub_pod_verify import pod_line

pytestmark = pytest.mark.slow

PASSWORD = "teelab-pod-demo"
SPAWN_SECONDS = 180.0
# Names under which JupyterHub and configurable-http-proxy would take their secrets from the environment.
SECRET_NAMES = (
    b"CONFIGPROXY_AUTH_TOKEN",
    b"JPY_COOKIE_SECRET",
    b"JUPYTERHUB_CRYPT_KEY",
    b"JUPYTERHUB_API_TOKEN",
)
# Every secret the pod makes is 32 random bytes in hex (PodSettings.make).
HEX_SECRET = re.compile(rb"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")


@dataclass
class Pod:
    root: Path
    running: RunningFrontDoor
    policy: Path
    layout: dict[str, str]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.running.port}"

    def pids(self) -> list[int]:
        root = psutil.Process(self.running.process.popen.pid)
        return [root.pid, *(child.pid for child in root.children(recursive=True))]


def _prepare(root: Path) -> Path:
    write_demo_root(root, PASSWORD)
    config = root / "jupyterhub_config.py"
    config.write_text(hub_pod_config_text(root))
    return config


def _verify(pod_url: str, policy: Path, pins: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    status = teelab_main(["hub", "verify", pod_url, "--policy", str(policy), "--pin-file", str(pins)])
    captured = capsys.readouterr()
    return status, captured.out + captured.err


@pytest.fixture(scope="module")
def pod(tmp_path_factory: pytest.TempPathFactory, shared_cache_dir: Path) -> Iterator[Pod]:
    root = tmp_path_factory.mktemp("hub-pod")
    config = _prepare(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TEELAB_DATA_DIR", str(root / "data"))
        patch.setenv("TEELAB_CACHE_DIR", str(shared_cache_dir))
        backend = get_backend("sim")
        image = build_hub_pod_image(backend, config, out=root / "image")
        policy = root / "hub-pod.toml"
        policy.write_text(front_door_policy_text(image, simulated=True))
        # Listening on every address: the test then shows the front door is the only socket off loopback.
        running = launch_hub_pod(backend, image, listen=("0.0.0.0", 0))
    try:
        layout = json.loads(dict(image.manifest.env)["TEELAB_HUB_POD_LAYOUT"])
        yield Pod(root, running, policy, layout)
    finally:
        running.stop()


def test_teelab_hub_verify_passes_and_names_the_hub_and_proxy_in_the_measurement(
    pod: Pod, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TEELAB_DATA_DIR", str(pod.root / "data"))
    status, output = _verify(pod.url, pod.policy, tmp_path / "pins.json", capsys)
    assert status == 0, output
    lines = output.splitlines()
    assert all(line.startswith("✓ ") for line in lines[:-1]), output
    (line,) = [line for line in lines if line.startswith("✓ hub pod:")]
    assert "hub, proxy and service measured in the front door's image" in line
    assert pod.layout["hub_config_sha256"][:16] in line and pod.layout["proxy_sha256"][:16] in line


def test_a_user_signs_in_and_spawns_through_the_attested_front_door(pod: Pod) -> None:
    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    session = requests.Session()
    # The certificate is self-signed: what vouches for its key is the evidence (the test above). Per request:
    # requests prefers REQUESTS_CA_BUNDLE from the environment over a session's own verify.
    session.request = functools.partial(session.request, verify=False)  # type: ignore[method-assign]
    page = session.get(f"{pod.url}/hub/login", timeout=30)
    assert page.status_code == 200
    xsrf = session.cookies.get("_xsrf", path="/hub/")
    login = session.post(
        f"{pod.url}/hub/login",
        data={"username": "alice", "password": PASSWORD, "_xsrf": xsrf},
        allow_redirects=False,
        timeout=30,
    )
    assert login.status_code == 302, login.text
    session.get(f"{pod.url}/hub/spawn", timeout=60)
    deadline = time.monotonic() + SPAWN_SECONDS
    while time.monotonic() < deadline:
        model = session.get(f"{pod.url}/hub/api/user", headers={"X-XSRFToken": xsrf or ""}, timeout=30).json()
        server = (model.get("servers") or {}).get("")
        if server and server.get("ready"):
            break
        time.sleep(0.5)
    else:
        raise AssertionError("alice's server did not become ready through the front door")
    # Opening the server as a browser does: the OAuth redirects through the hub, then the server's own page.
    landing = session.get(f"{pod.url}/user/alice/lab", timeout=60)
    assert landing.status_code == 200 and landing.url == f"{pod.url}/user/alice/lab", landing.url
    server_xsrf = session.cookies.get("_xsrf", path="/user/alice/") or ""
    status = session.get(f"{pod.url}/user/alice/api/status", headers={"X-XSRFToken": server_xsrf}, timeout=60)
    assert status.status_code == 200, status.text
    assert "started" in status.json()
    # The hub's own API answers through the door too, and the teelab-kbs service is routed (its page asks
    # alice to be an operator: 403, from the service itself, not the proxy's 404/503).
    service = session.get(f"{pod.url}/services/teelab-kbs/", timeout=60)
    assert service.status_code == 403, service.text


def test_nothing_but_the_front_door_listens_off_loopback(pod: Pod) -> None:
    listening: list[tuple[int, str, int]] = []
    for pid in pod.pids():
        try:
            connections = psutil.Process(pid).net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue
        listening += [(pid, c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN]
    names = {pid: " ".join(psutil.Process(pid).cmdline()[:4]) for pid, _, _ in listening}
    # The pod, node (proxy and its API), the hub, the service, the key broker, alice's server: all listening.
    assert len({pid for pid, _, _ in listening}) >= 5, names
    outside = [(pid, ip, port) for pid, ip, port in listening if not _loopback(ip)]
    assert outside == [(pod.running.process.popen.pid, "0.0.0.0", pod.running.port)], names


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)  # gRPC listens on [::ffff:127.0.0.1]
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def test_no_secret_in_the_argv_or_environment_of_the_pods_processes(pod: Pod) -> None:
    public = {pod.layout["hub_config_sha256"].encode(), pod.layout["proxy_sha256"].encode()}
    seen = 0
    for pid in pod.pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if b"jupyterhub.singleuser" in cmdline:
            continue  # alice's server: the spawner's business (TeeSpawner seals its token; here the simple one)
        seen += 1
        names = [entry.split(b"=", 1)[0] for entry in environ.split(b"\0") if entry]
        assert not set(names) & set(SECRET_NAMES), (cmdline, names)
        assert not [t for t in HEX_SECRET.findall(cmdline + b"\0" + environ) if t not in public], cmdline
    assert seen >= 5  # the pod, node, the hub, the service, the key broker
    # And yet the proxy has a token (made inside, taken from the pod's pipe): its API refuses a caller without.
    api = [
        c.laddr.port
        for pid in pod.pids()
        if b"configurable-http-proxy" in Path(f"/proc/{pid}/cmdline").read_bytes()
        for c in psutil.Process(pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    refusals = []
    for port in api:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/routes", timeout=10)
        except urllib.error.HTTPError as error:
            refusals.append(error.code)
    assert 403 in refusals, api


def test_a_changed_hub_config_or_proxy_file_is_another_measurement(tmp_path: Path) -> None:
    config = _prepare(tmp_path / "root")
    real = ProxyFiles.find()
    proxy = ProxyFiles(real.node, tmp_path / "node_modules")
    shutil.copytree(real.node_modules, proxy.node_modules, symlinks=True)
    backend = get_backend("sim")
    before = backend.measure(hub_pod_spec(config, proxy)).mrenclave
    config.write_text(config.read_text() + "c.JupyterHub.admin_access = True\n")
    after_config = backend.measure(hub_pod_spec(config, proxy)).mrenclave
    with proxy.chp.open("a") as script:
        script.write("\n// not the proxy the user pinned\n")
    after_proxy = backend.measure(hub_pod_spec(config, proxy)).mrenclave
    assert len({before, after_config, after_proxy}) == 3


def test_a_tampered_proxy_file_is_refused_at_launch_and_fails_verify_against_the_pinned_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "root"
    config = _prepare(root)
    monkeypatch.setenv("TEELAB_DATA_DIR", str(root / "data"))
    real = ProxyFiles.find()
    proxy = ProxyFiles(real.node, tmp_path / "node_modules")
    shutil.copytree(real.node_modules, proxy.node_modules, symlinks=True)
    backend = get_backend("sim")
    pinned = build_hub_pod_image(backend, config, proxy, out=tmp_path / "pinned")
    policy = tmp_path / "pinned.toml"
    policy.write_text(front_door_policy_text(pinned, simulated=True))
    proxy_lib = proxy.node_modules / "configurable-http-proxy" / "lib" / "configproxy.js"
    proxy_lib.write_text(proxy_lib.read_text() + "\n// a proxy that also copies every request elsewhere\n")
    # The pinned image over the changed file: the loader refuses it (the enclave gets no identity).
    with pytest.raises(EnclaveError, match="changed since the enclave image was built"):
        launch_hub_pod(backend, pinned)
    # The changed proxy built into an image of its own runs, but is not what the user pinned.
    tampered = build_hub_pod_image(backend, config, proxy, out=tmp_path / "tampered")
    assert tampered.mrenclave != pinned.mrenclave
    running = launch_hub_pod(backend, tampered)
    try:
        status, output = _verify(f"https://127.0.0.1:{running.port}", policy, tmp_path / "pins.json", capsys)
    finally:
        running.stop()
    assert status == 1
    assert "✗ front door policy" in output, output
    assert "✗ hub pod: not trusted" in output, output
    assert not (tmp_path / "pins.json").exists()


def test_the_pod_settings_carry_every_secret_and_survive_their_pipe_format() -> None:
    settings = PodSettings.make("/scratch", (1, 2, 3, 4, 5))
    again = PodSettings.from_bytes(settings.to_bytes())
    assert again == settings
    secrets = {settings.cookie_secret, settings.proxy_token, settings.crypt_key, settings.service_token}
    assert len(secrets) == 4 and all(HEX_SECRET.fullmatch(s.encode()) for s in secrets)


def test_malformed_pod_settings_are_a_config_error() -> None:
    for data in (b"", b"[]", b'{"scratch": "/x"}', b"\xff"):
        with pytest.raises(ConfigError, match="malformed hub pod settings"):
            PodSettings.from_bytes(data)


def test_the_pod_description_travels_in_the_answer_and_a_malformed_one_is_refused() -> None:
    answer = FrontDoorEvidence(b"quote", "sgx", b"\1" * 32, b"\2" * 32, None, {"image": "hub-pod"})
    assert FrontDoorEvidence.from_reply(json.dumps(answer.to_json()).encode()) == answer
    plain = FrontDoorEvidence(b"quote", "sgx", b"\1" * 32, b"\2" * 32)
    assert "pod" not in plain.to_json()  # a front door alone answers exactly as before
    hostile_pods: list[object] = [[], {"image": 1}, "hub-pod", {str(i): "x" for i in range(100)}]
    for pod in hostile_pods:
        hostile = json.dumps({**plain.to_json(), "pod": pod}).encode()
        with pytest.raises(FrontDoorError, match="malformed attestation reply"):
            FrontDoorEvidence.from_reply(hostile)


def test_the_hub_pod_line_passes_only_over_a_verified_front_door() -> None:
    pod = {"image": "hub-pod", "hub_config_sha256": "a" * 64, "proxy_sha256": "b" * 64}
    assert pod_line(pod, verified=True).passed
    assert not pod_line(pod, verified=False).passed
    assert not pod_line({**pod, "proxy_sha256": "short"}, verified=True).passed


def test_pod_measure_writes_the_policy_that_pins_the_pods_measurement(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _prepare(tmp_path / "root")
    policy = tmp_path / "hub-pod.toml"
    status = teelab_main(["hub", "pod-measure", "--config", str(config), "--policy-out", str(policy)])
    output = capsys.readouterr().out
    assert status == 0, output
    expected = get_backend("sim").measure(hub_pod_spec(config)).mrenclave.hex()
    assert f"mrenclave    {expected}" in output
    assert f'mrenclave = ["{expected}"]' in policy.read_text()
    assert teelab_main(["hub", "pod-measure", "--config", str(tmp_path / "missing.py")]) != 0


def test_the_host_cannot_point_the_pods_front_door_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = PodSettings.make("/scratch", (41001, 41002, 41003, 41004, 41005))
    hostile = {
        "listen_host": "0.0.0.0",
        "listen_port": 443,
        "hostnames": ["hub.example.org"],
        "collateral": None,
        "upstream_host": "203.0.113.7",  # a hub of the host's own
        "upstream_port": 8000,
    }
    monkeypatch.setenv(REQUEST_ENV, json.dumps(hostile))
    request = pod_request(settings)
    assert (request.upstream_host, request.upstream_port) == ("127.0.0.1", settings.proxy_port)
    for text in ("", "[]", "{", json.dumps({"listen_host": "0.0.0.0"})):
        monkeypatch.setenv(REQUEST_ENV, text)
        with pytest.raises(FrontDoorError):
            pod_request(settings)
