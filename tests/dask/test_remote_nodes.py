"""Dask nodes on remote TEE hosts: TeeCluster places nodes on host agents (``teelab host serve``) on 127.0.0.2
and 127.0.0.3, real processes, as the gateway places kernels (tests/kernel/test_remote_hosts.py).

The cluster's controller (this test process, standing for the attested notebook kernel) runs every node's
handshake through the agent's relay; the evil agents (tests/dask/evil_dask_agent.py) are the genuine agent
with one dishonest step each, and must be refused before anything is sealed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from teelab.dask import TeeCluster
from teelab.dask.agents import AgentCredentials, AgentPool
from teelab.dask.controller import ClusterController, NodeRefused
from teelab.enclave_runtime.agent.client import HostClient, HostTarget
from teelab.enclave_runtime.agent.kernels import AgentRefusal, KernelTable
from teelab.errors import ConfigError
from teelab.protocols.session import HandshakeError, KeyBrokerSection, read_frame
from teelab.sealed_store import notebook
from teelab.sealed_store.dask import read_dataset
from teelab.sealed_store.kbs.protocol import enclave_key_sha256
from tests.dask.conftest import DaskEnv
from tests.dask.test_key_release import kernel_session  # noqa: F401  (the fixture)
from tests.kernel.operator_ca import OperatorCA
from tests.sealed_store.kbs.conftest import Kbs

TOKEN = "dask-nodes-token-0123456789"
HERE = Path(__file__).resolve().parent
Agent = tuple[subprocess.Popen[str], str]


@pytest.fixture
def tokens(tmp_path: Path) -> Path:
    """The agents' tokens file: the operator issued the controller a token of its own for Dask nodes."""
    path = tmp_path / "gateways"
    path.write_text(f"dask-nodes {TOKEN}\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def agents(dask_env: DaskEnv, tokens: Path) -> Iterator[Callable[..., Agent]]:
    started: list[subprocess.Popen[str]] = []

    def start_agent(host: str, mode: str | None = None, *extra: str) -> Agent:
        argv = ["-m", "teelab.cli", "host", "serve", "--backend", "sim"]
        if mode is not None:
            argv = [str(HERE / "evil_dask_agent.py"), mode]
        auth = [] if "--client-ca" in extra else ["--tokens", str(tokens)]
        process = subprocess.Popen(
            [sys.executable, *argv, "--listen", f"{host}:0", *auth, *extra],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(HERE.parent.parent)},
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


CREDENTIALS = AgentCredentials(token=TOKEN)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def live_nodes(address: str) -> list[str]:
    """The kernel ids of the nodes an agent reports running for our credential."""

    async def ask() -> list[str]:
        client = HostClient(HostTarget.parse(address), TOKEN)
        try:
            listing = await client.list()
        finally:
            await client.close()
        return [k.kernel_id for k in listing.kernels if not k.exited]

    return asyncio.run(ask())


def registered(client: Any) -> list[str]:
    return sorted(str(w["name"]) for w in client.scheduler_info()["workers"].values())


def test_workers_on_two_agents_compute_over_mutual_tls(
    agents: Callable[..., Agent], dask_env: DaskEnv
) -> None:
    (_, first), (_, second) = agents("127.0.0.2"), agents("127.0.0.3")
    with (
        TeeCluster(
            n_workers=2, policy=dask_env.policy, hosts=[first, second], host_credentials=CREDENTIALS
        ) as cluster,
        cluster.get_client() as client,
    ):
        # One worker on each agent, the scheduler here; every node attested with this cluster's controller.
        assert sorted(str(w.where) for w in cluster.workers.values()) == sorted([first, second])
        assert cluster.scheduler.where == "local"
        for name in ("scheduler", "0", "1"):
            record = cluster.attestation[name]
            assert record.accepted and record.controller.startswith("pass"), record
        assert [len(live_nodes(first)), len(live_nodes(second))] == [1, 1]
        workers = client.scheduler_info()["workers"]
        assert registered(client) == ["0", "1"] and all(a.startswith("tls://") for a in workers)
        assert client.submit(lambda x: x * 2, 21).result() == 42
        assert sum(client.gather(client.map(lambda x: x + 1, range(10)))) == 55
    # Closing the cluster ends its nodes on the agents (Kill: process and scratch space gone).
    wait_for(lambda: not live_nodes(first) and not live_nodes(second), "the nodes ended on their agents")


def test_the_scheduler_too_on_an_agent(agents: Callable[..., Agent], dask_env: DaskEnv) -> None:
    (_, first), (_, second) = agents("127.0.0.2"), agents("127.0.0.3")
    with (
        TeeCluster(
            n_workers=1,
            policy=dask_env.policy,
            hosts=[first, second],
            host_credentials=CREDENTIALS,
            remote_scheduler=True,
        ) as cluster,
        cluster.get_client() as client,
    ):
        # It listens at the agent's address we dialled, on a port the agent reported (sealed in every bundle).
        assert cluster.scheduler.where == first and cluster.scheduler_address.startswith("tls://127.0.0.2:")
        assert cluster.workers["0"].where == second
        assert cluster.attestation["scheduler"].accepted
        assert client.submit(sum, [1, 2, 3]).result() == 6
        # Nothing is launched here, so no image folder is needed (as in a kernel in a real TEE).
        assert cluster.controller.image is None


def test_a_worker_lost_with_its_agent_is_replaced_on_another(
    agents: Callable[..., Agent], dask_env: DaskEnv
) -> None:
    (doomed, first), (_, second) = agents("127.0.0.2"), agents("127.0.0.3")
    with (
        TeeCluster(
            n_workers=2, policy=dask_env.policy, hosts=[first, second], host_credentials=CREDENTIALS
        ) as cluster,
        cluster.get_client() as client,
    ):
        lost = next(name for name, worker in cluster.workers.items() if worker.where == first)
        doomed.send_signal(signal.SIGKILL)  # the agent dies; its node ends with its launcher
        wait_for(
            lambda: lost in cluster.workers and cluster.workers[lost].where == second,
            "the lost worker replaced on the other agent",
        )
        wait_for(lambda: registered(client) == ["0", "1"], "the replacement registered")
        starts = [record for record in cluster.attestation_history if record.name == str(lost)]
        assert len(starts) == 2 and all(record.accepted for record in starts)
        assert len(live_nodes(second)) == 2
        assert client.submit(lambda x: x + 1, 41).result() == 42


def node_id(cluster: Any, name: str) -> str | None:
    """The agent's id of a worker's node (None while it is being replaced)."""
    worker = cluster.workers.get(name)
    handle = worker.node.handle if worker is not None and worker.node is not None else None
    return getattr(handle, "kernel_id", None)


def test_a_worker_killed_on_its_agent_is_replaced(agents: Callable[..., Agent], dask_env: DaskEnv) -> None:
    """The host kills a node (here through its agent's Kill, as the host's operator can): attested afresh."""
    _, agent = agents("127.0.0.2")
    with (
        TeeCluster(
            n_workers=1, policy=dask_env.policy, hosts=[agent], host_credentials=CREDENTIALS
        ) as cluster,
        cluster.get_client() as client,
    ):
        victim = node_id(cluster, "0")
        assert victim is not None and live_nodes(agent) == [victim]

        async def kill() -> None:
            host = HostClient(HostTarget.parse(agent), TOKEN)
            try:
                await host.kill(victim)
            finally:
                await host.close()

        asyncio.run(kill())
        wait_for(lambda: node_id(cluster, "0") not in (None, victim), "a new node for worker 0")
        wait_for(lambda: registered(client) == ["0"], "the replacement registered")
        assert [r.accepted for r in cluster.attestation_history if r.name == "0"] == [True, True]
        assert client.submit(lambda x: x + 1, 41).result() == 42


def sent_towards_the_boot(log: Path) -> list[str]:
    """The kinds of the handshake messages the controller sent through the agent."""

    async def read() -> list[str]:
        reader = asyncio.StreamReader()
        reader.feed_data(log.read_bytes() if log.exists() else b"")
        reader.feed_eof()
        kinds = []
        while True:
            try:
                kinds.append(str((await read_frame(reader))["type"]))
            except HandshakeError:
                return kinds

    return asyncio.run(read())


@pytest.mark.parametrize(
    ("mode", "check"),
    [
        ("key", "policy.expected_report_data"),
        ("tls-key", "policy.expected_report_data"),
        ("controller", "controller"),
        ("replay", "policy.expected_report_data"),
    ],
)
def test_an_evil_agent_is_refused_before_anything_is_sealed(
    agents: Callable[..., Agent], dask_env: DaskEnv, tokens: Path, mode: str, check: str
) -> None:
    _, evil = agents("127.0.0.2", mode)
    log = Path(f"{tokens}.to-boot-log")

    async def scenario() -> NodeRefused:
        controller = ClusterController(
            backend="sim",
            policy=dask_env.policy,
            image=None,
            host="127.0.0.1",
            launch_timeout=60.0,
            agents=AgentPool([evil], CREDENTIALS, "sim"),
            remote_scheduler=mode == "replay",
        )
        try:
            if mode == "replay":
                # A genuine first handshake (the scheduler's) gives the agent a hello to replay.
                scheduler = await controller.start_node("scheduler", "scheduler")
                await scheduler.handle.stop(0.0)
                log.unlink()
            with pytest.raises(NodeRefused) as refused:
                await controller.start_node("worker", "0")
            return refused.value
        finally:
            await controller.close()

    refusal = asyncio.run(scenario())
    assert refusal.check == check, refusal
    # Nothing but the check's name went towards the boot (the relay may end before even that is passed on).
    assert set(sent_towards_the_boot(log)) <= {"refused"}
    wait_for(lambda: not live_nodes(evil), "the refused node killed")


def test_a_credential_the_agent_does_not_know_starts_nothing(
    agents: Callable[..., Agent], dask_env: DaskEnv
) -> None:
    _, agent = agents("127.0.0.2")
    with pytest.raises(NodeRefused, match=r"host_agent: .*UNAUTHENTICATED"):
        TeeCluster(
            n_workers=1,
            policy=dask_env.policy,
            hosts=[agent],
            host_credentials=AgentCredentials(token="not-the-operators-token-01234"),
        )
    assert not live_nodes(agent)


def test_credentials_and_addresses_are_checked_before_any_call(dask_env: DaskEnv) -> None:
    with pytest.raises(ConfigError, match="need a credential"):
        AgentCredentials()
    assert TOKEN not in repr(CREDENTIALS)
    with pytest.raises(ConfigError, match="needs host_credentials"):
        TeeCluster(n_workers=1, policy=dask_env.policy, hosts=["grpc://127.0.0.2:1"])
    # The token is a bearer credential: plaintext only on loopback.
    with pytest.raises(ConfigError, match="refusing plaintext"):
        TeeCluster(
            n_workers=1, policy=dask_env.policy, hosts=["grpc://192.0.2.1:7700"], host_credentials=CREDENTIALS
        )


def test_the_agent_launches_only_the_images_boots() -> None:
    table = KernelTable({}, host="127.0.0.1", capacity=1, per_gateway=1)
    table.backends = {"sim": object()}  # type: ignore[dict-item]
    nonce, key = bytes(32), bytes(32)
    assert table.check_request("sim", "kernel", nonce, key, "dask-node") is not None
    assert table.check_request("sim", "kernel", nonce, key) is not None  # an older gateway's request
    with pytest.raises(AgentRefusal) as refused:
        table.check_request("sim", "kernel", nonce, key, "shell")
    assert refused.value.code == "INVALID_ARGUMENT"


def test_nodes_on_an_agent_that_requires_the_controllers_client_certificate(
    agents: Callable[..., Agent], dask_env: DaskEnv, tmp_path: Path
) -> None:
    """The operator's CA issued the controller a client certificate of its own (not the gateway's)."""
    ca = OperatorCA(tmp_path / "ca")
    server_cert, server_key = ca.issue("agent", ip="127.0.0.2", usage="server")
    tls = ("--client-ca", str(ca.path), "--tls-cert", str(server_cert), "--tls-key", str(server_key))
    _, agent = agents("127.0.0.2", None, *tls)
    assert agent.startswith("grpcs://")
    cert, key = ca.issue("dask-nodes", dns="dask-nodes.example")
    credentials = AgentCredentials(
        client_certificate=(cert.read_bytes(), key.read_bytes()), ca=ca.path.read_bytes()
    )
    with (
        TeeCluster(
            n_workers=1, policy=dask_env.policy, hosts=[agent], host_credentials=credentials
        ) as cluster,
        cluster.get_client() as client,
    ):
        assert cluster.workers["0"].where == agent and cluster.attestation["0"].accepted
        assert client.submit(sum, [20, 22]).result() == 42

    # A certificate of another CA (same name) is refused in the TLS handshake: nothing launched.
    other_cert, other_key = OperatorCA(tmp_path / "other", "operator CA").issue("dask-nodes", dns="x.example")
    stranger = AgentCredentials(
        client_certificate=(other_cert.read_bytes(), other_key.read_bytes()), ca=ca.path.read_bytes()
    )
    with pytest.raises(NodeRefused, match=r"host_agent: .*UNAVAILABLE"):
        TeeCluster(n_workers=1, policy=dask_env.policy, hosts=[agent], host_credentials=stranger)


def test_the_agent_limits_the_nodes_one_credential_starts(
    agents: Callable[..., Agent], dask_env: DaskEnv
) -> None:
    """The operator caps what the controller's credential may run on a host (``--per-gateway``), counting
    launches in progress: the two workers start at once, and the agent refuses the second."""
    _, agent = agents("127.0.0.2", None, "--per-gateway", "1")
    with pytest.raises(NodeRefused, match=r"host_agent: .*RESOURCE_EXHAUSTED"):
        TeeCluster(n_workers=2, policy=dask_env.policy, hosts=[agent], host_credentials=CREDENTIALS)
    wait_for(lambda: not live_nodes(agent), "the started worker ended with the refused cluster")


def test_workers_on_agents_release_their_own_keys_and_read_a_sealed_dataset(
    agents: Callable[..., Agent],
    dask_env: DaskEnv,
    kernel_session: tuple[Kbs, KeyBrokerSection, bytes],  # noqa: F811
) -> None:
    """The kernel's session delegates a grant to each remote worker's attested E_w; each worker, on its agent,
    releases the keys of the parts it reads with its own evidence (the key broker is reached from the node)."""
    kbs, section, kernel_key = kernel_session
    (_, first), (_, second) = agents("127.0.0.2"), agents("127.0.0.3")
    with (
        TeeCluster(
            n_workers=2, policy=dask_env.policy, hosts=[first, second], host_credentials=CREDENTIALS
        ) as cluster,
        cluster.get_client() as client,
    ):
        assert sorted(str(w.where) for w in cluster.workers.values()) == sorted([first, second])

        def worker_grant() -> str | None:
            installed = notebook.installed_session()
            assert installed is not None and installed.key_broker is not None
            return installed.key_broker.grant

        grants = client.run(worker_grant)
        assert len(set(grants.values())) == 2 and section.grant not in grants.values()
        assert len(read_dataset("sales", columns=["city", "amount"]).compute()) == 3000
    entries = [r.entry() for r in kbs.admin.audit().records]
    released = {e["ekh"] for e in entries if e["event"] == "release" and e["outcome"] == "released"}
    assert released - {enclave_key_sha256(kernel_key)}  # keys went to the workers' own E_w
