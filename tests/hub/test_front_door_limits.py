"""The front door's evidence limits: a token bucket per client address and a cap on generations in flight.

Three levels, all real parts: the limiter with an injected clock; a front door in this process (real TLS on
loopback, real sim TEE evidence from ``SimRuntime``, the clock injected so no test sleeps); and the front door
launched in the sim TEE with limits from the host's request (a refill so slow that no bucket refills during the
test), which ``teelab hub verify`` meets as a rate-limited line.
"""

from __future__ import annotations

import asyncio
import http.client
import http.server
import json
import os
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from teelab.cli import main as teelab_main
from teelab.enclave_runtime.backends import get_backend
from teelab.enclave_runtime.sim.backend import SimBackend
from teelab.enclave_runtime.sim.identity import SimIdentity
from teelab.enclave_runtime.sim.runtime import SimRuntime
from teelab.enclave_runtime.sim.sgx_structs import ATTRIBUTE_INIT, ATTRIBUTE_MODE64BIT
from teelab.extension.hub.front_door import FrontDoor, FrontDoorRequest
from teelab.extension.hub.front_door_launch import (
    RunningFrontDoor,
    build_front_door_image,
    front_door_policy_text,
    launch_front_door,
)
from teelab.extension.hub.front_door_limits import (
    CONCURRENT,
    PER_CLIENT,
    EvidenceLimiter,
    EvidenceLimits,
    client_key,
)
from teelab.extension.hub.front_door_protocol import (
    ATTESTATION_PATH,
    FrontDoorError,
    FrontDoorEvidence,
    front_door_report_data,
)
from teelab.extension.hub.verify_channel import HubAddress
from teelab.extension.hub.verify_pins import PinFile
from teelab.extension.hub.verify_run import run_verify
from teelab.gateway.policy import AppraisalPolicy, parse_policy
from teelab.gateway.verifier import default_anchors, verify_evidence
from teelab.timeutil import utcnow


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- the limiter --------------------------------------------------------------------------------------------


def test_a_client_gets_its_burst_then_a_refusal_naming_the_wait_and_is_served_after_the_refill() -> None:
    clock = Clock()
    limiter = EvidenceLimiter(EvidenceLimits(burst=3, refill_per_second=0.5), clock)
    for _ in range(3):
        assert limiter.acquire("192.0.2.1") is None
        limiter.release()
    refusal = limiter.acquire("192.0.2.1")
    assert refusal is not None and refusal.limit == PER_CLIENT and refusal.retry_after == 2
    assert "3 evidence requests" in refusal.message
    assert limiter.acquire("192.0.2.2") is None  # another client has a bucket of its own
    limiter.release()
    clock.now += 1.0  # half a token: still refused, one second to go
    refusal = limiter.acquire("192.0.2.1")
    assert refusal is not None and refusal.retry_after == 1
    clock.now += 1.0
    assert limiter.acquire("192.0.2.1") is None
    limiter.release()
    assert limiter.acquire("192.0.2.1") is not None  # one token came back, not the burst


def test_the_concurrent_cap_refuses_everyone_until_a_generation_ends_and_charges_no_token() -> None:
    limiter = EvidenceLimiter(EvidenceLimits(burst=2, concurrent=2), Clock())
    assert limiter.acquire("192.0.2.1") is None
    assert limiter.acquire("192.0.2.2") is None
    refusal = limiter.acquire("192.0.2.3")
    assert refusal is not None and refusal.limit == CONCURRENT and refusal.retry_after == 1
    for _ in range(5):  # refused for the cap, never for its own bucket (burst 2)
        refusal = limiter.acquire("192.0.2.3")
        assert refusal is not None and refusal.limit == CONCURRENT
    limiter.release()
    assert limiter.acquire("192.0.2.3") is None
    assert limiter.in_flight == 2


def test_an_ipv6_client_is_its_64_and_the_table_of_buckets_is_bounded() -> None:
    assert client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    limiter = EvidenceLimiter(EvidenceLimits(burst=1, max_clients=8), Clock())
    for n in range(100):
        assert limiter.acquire(f"10.0.0.{n}") is None
        limiter.release()
    assert len(limiter._buckets) == 8


@pytest.mark.parametrize(
    "data",
    [
        [],
        {"burst": 0},
        {"burst": "10"},
        {"burst": True},
        {"concurrent": 10**9},
        {"refill_per_second": 0},
        {"refill_per_second": float("nan")},
        {"refill_per_second": "inf"},
        {"refill_per_second": []},
        {"rate": 1},
    ],
)
def test_the_hosts_limits_are_parsed_with_the_front_doors_own_error(data: object) -> None:
    with pytest.raises(FrontDoorError):
        EvidenceLimits.from_data(data)
    request = {"listen_host": "127.0.0.1", "listen_port": 0, "upstream_host": "127.0.0.1", "upstream_port": 1}
    with pytest.raises(FrontDoorError):
        FrontDoorRequest.from_data({**request, "hostnames": ["localhost"], "evidence_limits": data})


def test_a_request_without_limits_gets_the_safe_defaults() -> None:
    request = {"listen_host": "127.0.0.1", "listen_port": 0, "upstream_host": "127.0.0.1", "upstream_port": 1}
    parsed = FrontDoorRequest.from_data({**request, "hostnames": ["localhost"]})
    assert parsed.evidence_limits == EvidenceLimits(burst=10, refill_per_second=2.0, concurrent=4)
    given = {"burst": 5, "refill_per_second": 0.25, "concurrent": 1}
    assert FrontDoorRequest.from_data(
        {**request, "hostnames": ["localhost"], "evidence_limits": given}
    ).evidence_limits == EvidenceLimits(**given)


# --- a front door in this process: real TLS, real sim evidence, the clock injected ---------------------------


@dataclass
class LocalDoor:
    door: FrontDoor
    port: int
    upstream_port: int
    runtime: SimRuntime
    backend: SimBackend

    def connect(self, source: str = "127.0.0.1") -> http.client.HTTPSConnection:
        connection = http.client.HTTPSConnection(
            "127.0.0.1",
            self.port,
            context=ssl._create_unverified_context(),
            timeout=30,
            source_address=(source, 0),
        )
        connection.connect()
        return connection


def _upstream() -> http.server.ThreadingHTTPServer:
    class Upstream(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            body = b"proxied"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    return upstream


@pytest.fixture
def local_door(teelab_dirs: Path) -> Iterator[Callable[..., LocalDoor]]:
    backend = get_backend("sim")
    assert isinstance(backend, SimBackend)
    runtime = SimRuntime(
        SimIdentity(
            platform=backend.platform.path,
            mrenclave=bytes.fromhex("fd" * 32),
            mrsigner=bytes(32),
            isv_prod_id=0,
            isv_svn=0,
            attributes=ATTRIBUTE_INIT | ATTRIBUTE_MODE64BIT,
        ),
        backend.platform,
    )
    collateral = str(backend.collateral_path())
    upstream = _upstream()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    servers: list[asyncio.Server] = []

    def start(
        limits: EvidenceLimits, clock: Clock, evidence: Callable[[bytes], object] | None = None
    ) -> LocalDoor:
        request = FrontDoorRequest(
            "127.0.0.1", 0, "127.0.0.1", upstream.server_address[1], ("localhost",), collateral, limits
        )
        door = FrontDoor(request, clock=clock, evidence=evidence or runtime.evidence)  # type: ignore[arg-type]

        async def serve() -> asyncio.Server:
            return await asyncio.start_server(door.handle, "127.0.0.1", 0, ssl=door.context)

        server = asyncio.run_coroutine_threadsafe(serve(), loop).result(30)
        servers.append(server)
        return LocalDoor(
            door, server.sockets[0].getsockname()[1], upstream.server_address[1], runtime, backend
        )

    yield start

    async def stop() -> None:
        for server in servers:
            server.close()

    asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(30)
    loop.close()
    upstream.shutdown()


def _attest(connection: http.client.HTTPSConnection, nonce: bytes) -> tuple[int, bytes, str | None]:
    connection.request("GET", f"{ATTESTATION_PATH}?nonce={nonce.hex()}")
    response = connection.getresponse()
    return response.status, response.read(), response.getheader("Retry-After")


def _verifies(local: LocalDoor, body: bytes, nonce: bytes) -> bool:
    answer = FrontDoorEvidence.from_reply(body)
    result = verify_evidence(
        answer.evidence,
        collateral=answer.collateral,
        at=utcnow(),
        anchors=default_anchors(local.backend.root_pins()),
        policy=AppraisalPolicy(allow_simulation=True),
        expected_report_data=front_door_report_data(local.door.tls_spki_sha256, nonce),
    )
    return result.ok


def test_a_burst_from_one_address_is_refused_while_another_address_gets_evidence_until_time_passes(
    local_door: Callable[..., LocalDoor],
) -> None:
    clock = Clock()
    local = local_door(EvidenceLimits(burst=3, refill_per_second=2.0), clock)
    first = local.connect("127.0.0.1")
    for _ in range(3):
        assert _attest(first, os.urandom(32))[0] == 200
    status, body, retry_after = _attest(first, os.urandom(32))
    assert (status, retry_after) == (429, "1")
    refusal = json.loads(body)
    assert (
        refusal["limit"] == "per-client" and refusal["retry_after"] == 1 and "3 evidence" in refusal["error"]
    )
    other = local.connect("127.0.0.2")
    nonce = os.urandom(32)
    status, body, _ = _attest(other, nonce)
    assert status == 200 and _verifies(local, body, nonce)
    other.close()
    # The refused connection is still open; after half a second (one token at 2/s) it is served again.
    clock.now += 0.5
    nonce = os.urandom(32)
    status, body, _ = _attest(first, nonce)
    assert status == 200 and _verifies(local, body, nonce)
    assert _attest(first, os.urandom(32))[0] == 429
    first.close()


def test_over_the_concurrent_cap_the_endpoint_answers_429_without_making_evidence(
    local_door: Callable[..., LocalDoor],
) -> None:
    gate, entered = threading.Event(), threading.Semaphore(0)
    made: list[bytes] = []
    runtime_evidence: list[Callable[[bytes], object]] = []

    def held(report_data: bytes) -> object:  # the real sim evidence, held open until the test lets it go
        entered.release()
        gate.wait(30)
        made.append(report_data)
        return runtime_evidence[0](report_data)

    local = local_door(EvidenceLimits(burst=10, concurrent=2), Clock(), held)
    runtime_evidence.append(local.runtime.evidence)
    results: list[int] = []

    def ask(source: str) -> None:
        connection = local.connect(source)
        results.append(_attest(connection, os.urandom(32))[0])
        connection.close()

    askers = [threading.Thread(target=ask, args=(f"127.0.0.{n}",)) for n in (1, 2)]
    for asker in askers:
        asker.start()
    assert entered.acquire(timeout=30) and entered.acquire(timeout=30)  # two generations in flight
    third = local.connect("127.0.0.3")
    status, body, retry_after = _attest(third, os.urandom(32))
    assert (status, retry_after, json.loads(body)["limit"]) == (429, "1", "concurrent")
    assert "at most 2 evidence at a time" in json.loads(body)["error"]
    gate.set()
    for asker in askers:
        asker.join(30)
    assert results == [200, 200] and len(made) == 2  # the refused request made none
    assert _attest(third, os.urandom(32))[0] == 200  # once they ended, the same connection is served
    third.close()


def test_a_rate_limited_connection_still_reaches_the_hub(local_door: Callable[..., LocalDoor]) -> None:
    local = local_door(EvidenceLimits(burst=1, refill_per_second=0.01), Clock())
    connection = local.connect()
    assert _attest(connection, os.urandom(32))[0] == 200
    assert _attest(connection, os.urandom(32))[0] == 429
    connection.request("GET", "/hub/login")
    response = connection.getresponse()
    assert (response.status, response.read()) == (200, b"proxied")
    connection.close()


# --- the front door in the sim TEE, limited by the host's request; what `teelab hub verify` prints ------------

SLOW = EvidenceLimits(burst=2, refill_per_second=0.001, concurrent=4)  # no refill within a test run


@dataclass
class Door:
    running: RunningFrontDoor
    policy_text: str
    data: Path


@pytest.fixture(scope="module")
def door(tmp_path_factory: pytest.TempPathFactory, shared_cache_dir: Path) -> Iterator[Door]:
    data = tmp_path_factory.mktemp("front-door-limits")
    upstream = _upstream()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TEELAB_DATA_DIR", str(data))
        patch.setenv("TEELAB_CACHE_DIR", str(shared_cache_dir))
        backend = get_backend("sim")
        assert isinstance(backend, SimBackend)
        image = build_front_door_image(backend)
        running = launch_front_door(
            backend, image, upstream=("127.0.0.1", upstream.server_address[1]), limits=SLOW
        )
        try:
            yield Door(running, front_door_policy_text(image, simulated=True), data)
        finally:
            running.stop()
            upstream.shutdown()


def _connect(door: Door, source: str) -> http.client.HTTPSConnection:
    connection = http.client.HTTPSConnection(
        "127.0.0.1",
        door.running.port,
        context=ssl._create_unverified_context(),
        timeout=30,
        source_address=(source, 0),
    )
    connection.connect()
    return connection


def _exhaust(door: Door, source: str) -> None:
    connection = _connect(door, source)
    for _ in range(SLOW.burst + 1):
        if _attest(connection, os.urandom(32))[0] == 429:
            break
    else:
        pytest.fail("the front door never refused")
    connection.close()


def test_the_launched_front_door_takes_its_limits_from_the_hosts_request(door: Door) -> None:
    _exhaust(door, "127.0.0.1")
    connection = _connect(door, "127.0.0.1")
    status, body, retry_after = _attest(connection, os.urandom(32))
    assert status == 429 and retry_after is not None and 900 <= int(retry_after) <= 1000
    assert json.loads(body)["limit"] == "per-client"
    connection.request("GET", "/hub/api")  # the hub is still reached over this connection
    assert connection.getresponse().read() == b"proxied"
    connection.close()
    other = _connect(door, "127.0.0.2")
    assert _attest(other, os.urandom(32))[0] == 200
    other.close()


def test_teelab_hub_verify_reports_the_rate_limit_as_a_line(
    door: Door, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _exhaust(door, "127.0.0.1")
    address = HubAddress("127.0.0.1", door.running.port)
    report = run_verify(address, parse_policy(door.policy_text), PinFile(tmp_path / "pins.json"))
    failure = report.first_failure
    assert failure is not None and failure.name == "front door evidence"
    assert (
        failure.detail.startswith("rate-limited, retry in ")
        and " s (rate limited: at most 2" in failure.detail
    )
    assert not (tmp_path / "pins.json").exists()
    monkeypatch.setenv("TEELAB_DATA_DIR", str(door.data))
    (tmp_path / "door.toml").write_text(door.policy_text)
    argv = ["hub", "verify", address.origin, "--policy", str(tmp_path / "door.toml")]
    assert teelab_main([*argv, "--pin-file", str(tmp_path / "pins.json")]) == 1
    captured = capsys.readouterr()
    assert "✗ front door evidence: rate-limited, retry in " in captured.out
    assert "NOT VERIFIED — front door evidence: rate-limited" in captured.err
