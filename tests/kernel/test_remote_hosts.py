"""Remote TEE hosts (issue 15): kernels launched by host agents on other loopback addresses, real processes.

The agents (``teelab host serve``) run as their own processes on 127.0.0.2 and 127.0.0.3; the gateway is
this test's jupyter_client KernelManager with the ``teelab-remote`` provisioner. Evil agents
(tests/kernel/evil_agent.py) are the genuine agent with one dishonest step each.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from importlib.metadata import EntryPoint
from pathlib import Path

import grpc
import nbformat
import pytest
from jupyter_client.manager import KernelManager
from jupyter_client.provisioning.factory import KernelProvisionerFactory
from nbclient import NotebookClient
from traitlets.config import Config

from teelab.enclave_runtime.agent.auth import GatewayTokens
from teelab.enclave_runtime.agent.server import AgentConfig, start
from teelab.enclave_runtime.agent.v1 import host_pb2, host_pb2_grpc
from teelab.errors import AttestationFailed, ConfigError
from teelab.sealed_store import services
from teelab.sealed_store.kbs.identity import issue_local_token
from teelab.sealed_store.owner import DataOwner

from .conftest import KernelEnv, copy_kernelspec
from .test_datasets import publish, read_in_kernel
from .test_kernel_manager import run

REMOTE = "teelab-remote"
TOKEN = "gateway-one-token-0123456789"
OTHER_TOKEN = "gateway-two-token-0123456789"
HERE = Path(__file__).resolve().parent


@pytest.fixture
def remote_env(kernel_env: KernelEnv, tmp_path: Path) -> Iterator[Path]:
    """The session's kernelspec under the teelab-remote provisioner, and the agents' token file."""
    # Until the editable install is refreshed with pyproject's new entry point, register it as it would.
    KernelProvisionerFactory.instance().provisioners.setdefault(
        REMOTE,
        EntryPoint(
            REMOTE,
            "teelab.kernel.remote_provisioner:RemoteTeeProvisioner",
            KernelProvisionerFactory.GROUP_NAME,
        ),
    )
    spec_dir = copy_kernelspec(kernel_env, kernel_env.jupyter_data, REMOTE)
    spec = json.loads((spec_dir / "kernel.json").read_text())
    spec["metadata"]["kernel_provisioner"]["provisioner_name"] = REMOTE
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    policy = kernel_env.policy.parent / f"{REMOTE}.toml"  # the same operator policy judges remote kernels
    shutil.copyfile(kernel_env.policy, policy)
    tokens = tmp_path / "gateways"
    tokens.write_text(f"one {TOKEN}\ntwo {OTHER_TOKEN}\n")
    tokens.chmod(0o600)
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "token").chmod(0o600)
    yield tmp_path
    policy.unlink()
    shutil.rmtree(spec_dir)


Agent = tuple[subprocess.Popen[str], str]


@pytest.fixture
def agents(remote_env: Path) -> Iterator[Callable[..., Agent]]:
    started: list[subprocess.Popen[str]] = []

    def start_agent(host: str, mode: str | None = None, *extra: str) -> Agent:
        tokens = str(remote_env / "gateways")
        if mode is None:
            argv = ["-m", "teelab.cli", "host", "serve", "--backend", "sim"]
        else:
            argv = [str(HERE / "evil_agent.py"), mode]
        # Gateways authenticate by token unless the test chose client certificates or a config file.
        auth = [] if {"--client-ca", "--config"} & set(extra) else ["--tokens", tokens]
        process = subprocess.Popen(
            [sys.executable, *argv, "--listen", f"{host}:0", *auth, *extra],
            stdout=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
        )
        started.append(process)
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "listening on" in line, line
        return process, line.split()[-1]

    yield start_agent
    for process in started:
        process.kill()
        process.wait()


def manager(remote_env: Path, *hosts: str, kernel_name: str = REMOTE, **settings: object) -> KernelManager:
    config = Config(
        {
            "RemoteTeeProvisioner": {
                "hosts": list(hosts),
                "host_token_file": str(remote_env / "token"),
                "launch_timeout": 60.0,
                **settings,
            }
        }
    )
    return KernelManager(kernel_name=kernel_name, config=config)


def run_cell(km: KernelManager, code: str) -> str:
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        content, out = run(kc, code)
        assert content["status"] == "ok", out
        return out
    finally:
        kc.stop_channels()


def test_kernels_run_on_remote_agents_and_spread_over_them(
    agents: Callable[..., Agent], remote_env: Path
) -> None:
    (_, first), (_, second) = agents("127.0.0.2"), agents("127.0.0.3")
    managers = [manager(remote_env, first, second) for _ in range(2)]
    try:
        for km in managers:
            km.start_kernel()
        ips = sorted(km.get_connection_info()["ip"] for km in managers)
        assert ips == ["127.0.0.2", "127.0.0.3"]  # least loaded: one on each
        for km in managers:
            assert run_cell(km, "print(6 * 7)").strip() == "42"
            assert km.get_connection_info()["transport"] == "tcp"
    finally:
        for km in managers:
            km.shutdown_kernel(now=True)


@pytest.mark.parametrize(
    ("mode", "check"),
    [
        ("key", "policy.expected_report_data"),
        ("controller", "controller"),
    ],
)
def test_an_evil_agent_is_refused_before_anything_is_sealed(
    agents: Callable[..., Agent], remote_env: Path, mode: str, check: str
) -> None:
    _, target = agents("127.0.0.2", mode)
    km = manager(remote_env, target)
    with pytest.raises(AttestationFailed) as refused:
        km.start_kernel()
    assert refused.value.check == check
    assert km.provisioner is None or not km.provisioner.has_process


def test_a_replayed_hello_is_refused(agents: Callable[..., Agent], remote_env: Path) -> None:
    _, target = agents("127.0.0.2", "replay")
    genuine = manager(remote_env, target)
    genuine.start_kernel()  # the first session passes, and the agent keeps its hello
    try:
        replayed = manager(remote_env, target)
        with pytest.raises(AttestationFailed) as refused:
            replayed.start_kernel()
        assert refused.value.check == "policy.expected_report_data"
    finally:
        genuine.shutdown_kernel(now=True)


def test_an_agent_that_reorders_frames_is_refused_before_anything_is_sealed(
    agents: Callable[..., Agent], remote_env: Path
) -> None:
    _, target = agents("127.0.0.2", "ready-first")  # a readiness message before the hello it holds back
    km = manager(remote_env, target)
    with pytest.raises(AttestationFailed) as refused:
        km.start_kernel()
    assert refused.value.check == "handshake"
    assert "expected a hello message, got 'ready'" in refused.value.detail
    sent = remote_env / "gateways.to-boot-log"
    assert not sent.exists() or sent.read_bytes() == b""  # no bundle went towards the boot
    listing = _call(target, "List", host_pb2.ListRequest())
    assert isinstance(listing, host_pb2.ListReply) and listing.running == 0  # the gateway killed it


def test_an_agent_that_repeats_the_hello_for_the_ready_is_refused(
    agents: Callable[..., Agent], remote_env: Path
) -> None:
    _, target = agents("127.0.0.2", "hello-twice")  # the hello again where the kernel's readiness belongs
    km = manager(remote_env, target)
    with pytest.raises(AttestationFailed) as refused:
        km.start_kernel()
    assert refused.value.check == "handshake"
    assert "expected a ready or failed message, got 'hello'" in refused.value.detail
    # The one frame the gateway sent is the bundle sealed to the attested enclave key (only that kernel can
    # open it; the agent sees no session key in it), and that kernel is killed.
    sent = (remote_env / "gateways.to-boot-log").read_bytes()
    assert b'"bundle"' in sent and km.session.key not in sent
    listing = _call(target, "List", host_pb2.ListRequest())
    assert isinstance(listing, host_pb2.ListReply) and listing.running == 0


def test_the_boots_last_words_reach_the_gateway_as_the_agent_reports_them(
    agents: Callable[..., Agent], remote_env: Path
) -> None:
    _, target = agents("127.0.0.3", "garble")  # the boot gets a malformed request and exits saying so
    km = manager(remote_env, target)
    with pytest.raises(AttestationFailed) as refused:
        km.start_kernel()
    assert refused.value.check == "handshake"
    assert "the TEE closed the handshake channel" in refused.value.detail
    assert (
        "the kernel boot said: teelab boot: malformed boot request: controller_key must be 32 bytes "
        "(as host agent grpc://127.0.0.3:"
    ) in refused.value.detail


def test_a_port_taken_on_the_host_before_the_kernel_binds_it_starts_a_new_session(
    agents: Callable[..., Agent], remote_env: Path
) -> None:
    _, target = agents("127.0.0.2", "squat")  # another process takes a promised port, once
    km = manager(remote_env, target)
    km.start_kernel()
    try:
        launches = (remote_env / "gateways.launches").read_text().splitlines()
        assert len(launches) == 2  # the first kernel could not bind; the second session is the one running
        assert run_cell(km, "print('rebound')").strip() == "rebound"
        listing = _call(target, "List", host_pb2.ListRequest())
        assert isinstance(listing, host_pb2.ListReply)
        assert [k.kernel_id for k in listing.kernels if not k.exited] == [launches[1]]
    finally:
        km.shutdown_kernel(now=True)


def test_wrong_ports_reach_nothing_of_the_session(agents: Callable[..., Agent], remote_env: Path) -> None:
    _, target = agents("127.0.0.2", "ports")
    km = manager(remote_env, target)
    with pytest.raises(AttestationFailed) as refused:
        km.start_kernel()
    # The genuine kernel cannot bind the agent's ports, and says so over the sealed session's channel.
    assert refused.value.check == "handshake"
    assert "failed to start" in refused.value.detail
    log = remote_env / "gateways.ports-log"
    assert not log.exists() or log.read_bytes() == b""


def test_a_killed_agent_takes_its_kernel_and_a_restart_lands_elsewhere(
    agents: Callable[..., Agent], remote_env: Path
) -> None:
    (doomed, first) = agents("127.0.0.2")
    km = manager(remote_env, first)
    km.start_kernel()
    try:
        assert km.get_connection_info()["ip"] == "127.0.0.2"
        doomed.send_signal(signal.SIGKILL)
        doomed.wait()
        assert not km.is_alive()
        (_, second) = agents("127.0.0.3")
        assert km.provisioner is not None
        km.provisioner.hosts = [first, second]  # type: ignore[attr-defined]
        km.restart_kernel(now=True)
        assert km.get_connection_info()["ip"] == "127.0.0.3"
        assert run_cell(km, "print('moved')").strip() == "moved"
    finally:
        km.shutdown_kernel(now=True)


def _call(target: str, method: str, request: object, token: str | None = TOKEN) -> object:
    async def go() -> object:
        async with grpc.aio.insecure_channel(target.removeprefix("grpc://")) as channel:
            stub = host_pb2_grpc.HostAgentStub(channel)
            metadata = (("authorization", f"Bearer {token}"),) if token else ()
            return await getattr(stub, method)(request, metadata=metadata, timeout=10)

    return asyncio.run(go())


def _code(target: str, method: str, request: object, token: str | None = TOKEN) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        _call(target, method, request, token)
    return failed.value.code()  # type: ignore[no-any-return]


def test_bad_input_at_the_agent_starts_nothing(agents: Callable[..., Agent]) -> None:
    _, target = agents("127.0.0.2")
    good = host_pb2.LaunchRequest(
        backend="sim", image="python-kernel", nonce=b"n" * 32, controller_key=b"g" * 32
    )
    assert _code(target, "Launch", good, token=None) == grpc.StatusCode.UNAUTHENTICATED
    assert _code(target, "Launch", good, token="not-a-known-token-000000") == grpc.StatusCode.UNAUTHENTICATED
    assert _code(target, "List", host_pb2.ListRequest(), token=None) == grpc.StatusCode.UNAUTHENTICATED
    huge = host_pb2.LaunchRequest(
        backend="sim", image="python-kernel", nonce=b"n" * (2 << 20), controller_key=b"g" * 32
    )
    assert _code(target, "Launch", huge) == grpc.StatusCode.RESOURCE_EXHAUSTED
    short = host_pb2.LaunchRequest(backend="sim", image="python-kernel", nonce=b"n", controller_key=b"g" * 32)
    assert _code(target, "Launch", short) == grpc.StatusCode.INVALID_ARGUMENT
    other = host_pb2.LaunchRequest(
        backend="gramine", image="python-kernel", nonce=b"n" * 32, controller_key=b"g" * 32
    )
    assert _code(target, "Launch", other) == grpc.StatusCode.FAILED_PRECONDITION
    path = host_pb2.LaunchRequest(backend="sim", image="../kernel", nonce=b"n" * 32, controller_key=b"g" * 32)
    assert _code(target, "Launch", path) == grpc.StatusCode.INVALID_ARGUMENT
    listing = _call(target, "List", host_pb2.ListRequest())
    assert isinstance(listing, host_pb2.ListReply)
    assert listing.running == 0 and not listing.kernels and list(listing.backends) == ["sim"]


def test_fuzzed_requests_get_clear_errors_and_start_nothing(agents: Callable[..., Agent]) -> None:
    agent, target = agents("127.0.0.2")
    rng = random.Random(15)  # the same bytes every run
    seen: dict[tuple[str, str], int] = {}

    async def go() -> None:
        async with grpc.aio.insecure_channel(target.removeprefix("grpc://")) as channel:
            for method in ("Launch", "Status", "Kill", "List", "Relay"):
                path = f"/teelab.host.v1.HostAgent/{method}"
                for _ in range(40):
                    payload = rng.randbytes(rng.randrange(0, 300))
                    metadata = (("authorization", f"Bearer {TOKEN}"),)
                    try:
                        if method == "Relay":
                            call = channel.stream_stream(path)(iter([payload]), metadata=metadata, timeout=10)
                            _ = [frame async for frame in call]
                        else:
                            await channel.unary_unary(path)(payload, metadata=metadata, timeout=10)
                        code = "OK"
                    except grpc.aio.AioRpcError as error:
                        code = error.code().name
                    seen[(method, code)] = seen.get((method, code), 0) + 1

    asyncio.run(go())
    # Every answer is a deliberate one: no UNKNOWN (an unhandled exception in a handler), no INTERNAL.
    clear = {"OK", "INVALID_ARGUMENT", "FAILED_PRECONDITION", "NOT_FOUND"}
    assert {code for _, code in seen} <= clear, seen
    assert {method for method, code in seen if code == "INVALID_ARGUMENT"} == {
        "Launch",
        "Status",
        "Kill",
        "List",
        "Relay",
    }, seen  # bytes that are not the method's message are named as such
    listing = _call(target, "List", host_pb2.ListRequest())
    assert isinstance(listing, host_pb2.ListReply) and listing.running == 0 and not listing.kernels
    assert not _children(agent.pid)  # nothing was launched


def test_a_token_removed_from_the_file_is_refused_at_once(
    agents: Callable[..., Agent], remote_env: Path
) -> None:
    _, target = agents("127.0.0.2")
    tokens = remote_env / "gateways"
    assert isinstance(_call(target, "List", host_pb2.ListRequest(), token=OTHER_TOKEN), host_pb2.ListReply)
    tokens.write_text(f"one {TOKEN}\n")  # the operator revokes gateway "two": no restart
    assert _code(target, "List", host_pb2.ListRequest(), token=OTHER_TOKEN) == grpc.StatusCode.UNAUTHENTICATED
    assert isinstance(_call(target, "List", host_pb2.ListRequest()), host_pb2.ListReply)
    tokens.write_text("one\n")  # a half-edited file admits nobody rather than an old token
    assert _code(target, "List", host_pb2.ListRequest()) == grpc.StatusCode.UNAUTHENTICATED
    tokens.write_text(f"one {TOKEN}\n")
    assert isinstance(_call(target, "List", host_pb2.ListRequest()), host_pb2.ListReply)


def test_a_gateway_reaches_only_its_own_kernels(agents: Callable[..., Agent]) -> None:
    _, target = agents("127.0.0.2")
    launch = host_pb2.LaunchRequest(
        backend="sim", image="python-kernel", nonce=b"n" * 32, controller_key=b"g" * 32
    )
    reply = _call(target, "Launch", launch)
    assert isinstance(reply, host_pb2.LaunchReply)
    ref = host_pb2.KernelRef(kernel_id=reply.kernel_id)
    assert _code(target, "Status", ref, token=OTHER_TOKEN) == grpc.StatusCode.NOT_FOUND
    assert _code(target, "Kill", ref, token=OTHER_TOKEN) == grpc.StatusCode.NOT_FOUND
    theirs = _call(target, "List", host_pb2.ListRequest(), token=OTHER_TOKEN)
    assert isinstance(theirs, host_pb2.ListReply) and not theirs.kernels and theirs.running == 1
    assert _relay_code(target, reply.kernel_id, token=None) == grpc.StatusCode.UNAUTHENTICATED
    assert _relay_code(target, reply.kernel_id, token=OTHER_TOKEN) == grpc.StatusCode.NOT_FOUND
    killed = _call(target, "Kill", ref)
    assert isinstance(killed, host_pb2.KernelStatus) and killed.exited


def _relay_code(target: str, kernel_id: str, token: str | None) -> grpc.StatusCode:
    """The status a Relay call for ``kernel_id`` ends with (no frames are expected to come back)."""

    async def go() -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(target.removeprefix("grpc://")) as channel:
            stub = host_pb2_grpc.HostAgentStub(channel)

            async def frames() -> AsyncIterator[host_pb2.RelayFrame]:
                yield host_pb2.RelayFrame(kernel_id=kernel_id)

            metadata = (("authorization", f"Bearer {token}"),) if token else ()
            call = stub.Relay(frames(), metadata=metadata, timeout=10)
            received = [frame async for frame in call]
            assert not received
            return await call.code()  # type: ignore[no-any-return]

    try:
        return asyncio.run(go())
    except grpc.aio.AioRpcError as error:
        return error.code()  # type: ignore[no-any-return]


def test_the_agent_refuses_plaintext_beyond_loopback(tmp_path: Path) -> None:
    tokens = tmp_path / "gateways"
    tokens.write_text(f"one {TOKEN}\n")
    tokens.chmod(0o600)
    config = AgentConfig(listen="0.0.0.0:0", tokens=GatewayTokens.load(tokens), backends={})
    with pytest.raises(ConfigError, match="plaintext"):
        asyncio.run(start(config))
    tokens.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        GatewayTokens.load(tokens)


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _gone(pids: set[int], within: float = 30.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in pids):
            return True
        time.sleep(0.1)
    return False


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return "Z"


def test_an_agent_that_drops_the_hello_times_out(agents: Callable[..., Agent], remote_env: Path) -> None:
    _, target = agents("127.0.0.2", "drop")
    km = manager(remote_env, target, launch_timeout=3.0)
    with pytest.raises(AttestationFailed) as refused:
        km.start_kernel()
    assert refused.value.check == "timeout"
    listing = _call(target, "List", host_pb2.ListRequest())
    assert isinstance(listing, host_pb2.ListReply) and listing.running == 0  # the gateway killed it


def test_an_agent_killed_while_its_kernel_starts(agents: Callable[..., Agent], remote_env: Path) -> None:
    agent, target = agents("127.0.0.2", "drop")  # holds the kernel in its handshake
    km = manager(remote_env, target)
    outcome: list[BaseException] = []

    def start() -> None:
        try:
            km.start_kernel()
        except BaseException as error:
            outcome.append(error)

    starter = threading.Thread(target=start)
    starter.start()
    dropped = remote_env / "gateways.dropped"
    while not dropped.exists() and starter.is_alive():
        time.sleep(0.05)
    kernels = _children(agent.pid)
    assert kernels, "the agent launched no kernel"
    listing = _call(target, "List", host_pb2.ListRequest())
    assert isinstance(listing, host_pb2.ListReply) and len(listing.kernels) == 1
    agent.send_signal(signal.SIGKILL)
    agent.wait()
    starter.join(timeout=60)
    assert not starter.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], AttestationFailed)
    assert outcome[0].check == "handshake"  # the relay ended: the user is told at once
    assert _gone(kernels)  # the kernel ended with its agent


def test_a_killed_agent_leaves_no_kernel_process(agents: Callable[..., Agent], remote_env: Path) -> None:
    agent, target = agents("127.0.0.2")
    km = manager(remote_env, target)
    km.start_kernel()
    try:
        kernels = _children(agent.pid)
        assert kernels
        agent.send_signal(signal.SIGKILL)
        agent.wait()
        assert _gone(kernels)
        assert not km.is_alive()
    finally:
        km.shutdown_kernel(now=True)


def _tls_files(folder: Path, ip: str) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for ``ip`` signed by it."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "operator CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.pem", folder / "host.pem", folder / "host.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    paths[2].chmod(0o600)
    return paths


def test_a_kernel_through_a_tls_agent(agents: Callable[..., Agent], remote_env: Path) -> None:
    ca, cert, key = _tls_files(remote_env, "127.0.0.2")
    _, target = agents("127.0.0.2", None, "--tls-cert", str(cert), "--tls-key", str(key))
    assert target.startswith("grpcs://")
    km = manager(remote_env, target, host_ca_file=str(ca))
    km.start_kernel()
    try:
        assert run_cell(km, "print(2 ** 10)").strip() == "1024"
    finally:
        km.shutdown_kernel(now=True)
    # Without the operator's CA the gateway does not trust the agent, and starts nothing.
    untrusting = manager(remote_env, target)
    with pytest.raises(AttestationFailed) as refused:
        untrusting.start_kernel()
    assert refused.value.check == "host_agent"


def test_the_agent_limits_kernels_per_gateway_and_per_host(agents: Callable[..., Agent]) -> None:
    _, target = agents("127.0.0.2", None, "--capacity", "3", "--per-gateway", "2")

    def launch(token: str) -> host_pb2.LaunchReply:
        request = host_pb2.LaunchRequest(
            backend="sim", image="python-kernel", nonce=os.urandom(32), controller_key=os.urandom(32)
        )
        reply = _call(target, "Launch", request, token=token)
        assert isinstance(reply, host_pb2.LaunchReply)
        return reply

    def refused(token: str) -> str:
        request = host_pb2.LaunchRequest(
            backend="sim", image="python-kernel", nonce=os.urandom(32), controller_key=os.urandom(32)
        )
        with pytest.raises(grpc.aio.AioRpcError) as error:
            _call(target, "Launch", request, token=token)
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        return str(error.value.details())

    mine = [launch(TOKEN), launch(TOKEN)]
    assert "this gateway runs its 2" in refused(TOKEN)
    theirs = launch(OTHER_TOKEN)
    assert "this host runs its 3" in refused(OTHER_TOKEN)
    listing = _call(target, "List", host_pb2.ListRequest())
    assert isinstance(listing, host_pb2.ListReply) and listing.running == 3 and len(listing.kernels) == 2
    _call(target, "Kill", host_pb2.KernelRef(kernel_id=mine[0].kernel_id))
    again = launch(OTHER_TOKEN)  # a killed kernel frees its place
    for reply, token in ((mine[1], TOKEN), (theirs, OTHER_TOKEN), (again, OTHER_TOKEN)):
        _call(target, "Kill", host_pb2.KernelRef(kernel_id=reply.kernel_id), token=token)


def test_nbclient_runs_a_notebook_on_a_remote_kernel(agents: Callable[..., Agent], remote_env: Path) -> None:
    _, target = agents("127.0.0.3")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import socket\nx = 21"), nbformat.v4.new_code_cell("print(x * 2)")]
    km = manager(remote_env, target)
    try:
        NotebookClient(nb, km=km, timeout=120).execute()
    finally:
        km.shutdown_kernel(now=True)
    assert nb.cells[1].outputs[0]["text"] == "42\n"


@pytest.fixture
def data_owner(broker: object, kernel_env: KernelEnv) -> Iterator[DataOwner]:
    with DataOwner.connect(token_file=services.admin_token_file(), owner="dana") as owner:
        yield owner


def test_a_remote_kernel_reads_a_dataset_through_the_key_broker(
    agents: Callable[..., Agent], remote_env: Path, data_owner: DataOwner, kernel_env: KernelEnv
) -> None:
    publish(data_owner, kernel_env, "sales", "user:alice")
    _, target = agents("127.0.0.2")
    token = issue_local_token(services.kbs_state_dir(), "alice")
    km = manager(remote_env, target, kbs_user="alice", kbs_token_file=str(token))
    km.start_kernel()
    try:
        assert km.get_connection_info()["ip"] == "127.0.0.2"
        content, out = read_in_kernel(km, "print(read_dataset('sales').shape)")
    finally:
        km.shutdown_kernel(now=True)
    assert content["status"] == "ok", out
    assert out == "(200, 3)\n"
