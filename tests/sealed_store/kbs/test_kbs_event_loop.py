"""Evidence is never judged on the key broker's event loop, so slow evidence cannot stall other calls.

A real broker on loopback; its evidence verification is paused inside the test (the appraiser's ``appraise``
wrapped to wait on a ``threading.Event``), which stands in for evidence that is valid but slow to verify.
While releases are stuck there, challenges, GetInfo and administrative reads and writes must still be
answered; nothing here measures time. On code that verified on the event loop, the first stuck release
stalls the loop and the other calls end with ``timeout`` instead.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from teelab.enclave_runtime.sim.platform import SimPlatform, default_path
from teelab.errors import KeyBrokerError
from teelab.sealed_store.kbs.appraisal import EvidenceAppraiser
from teelab.sealed_store.kbs.audit import verify_audit
from teelab.sealed_store.kbs.auth import ADMIN_TOKEN_FILE, read_token
from teelab.sealed_store.kbs.client import KbsClient
from teelab.sealed_store.kbs.config import KbsConfig
from teelab.sealed_store.kbs.model import ReleasedKey
from teelab.sealed_store.kbs.protocol import release_report_data
from teelab.sealed_store.kbs.server import KbsServer
from teelab.sealed_store.kbs.service import METHODS

from .conftest import UNLIMITED_JUNK, Enclave, FakeClock, Kbs

# A bound on how long a stuck call may wait for the test to let it go: a failure of the test, never a
# measurement (every assertion is about which call finished before which).
PATIENCE = 60.0


class PausedVerification:
    """Wraps the broker's evidence appraisal: each call announces itself, then waits until ``resume``."""

    def __init__(self, appraiser: EvidenceAppraiser) -> None:
        self._appraise = appraiser.appraise
        self.entered = threading.Semaphore(0)
        self.go = threading.Event()
        self.on_an_event_loop: list[bool] = []
        self.threads: set[str] = set()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        self.on_an_event_loop.append(on_loop)
        self.threads.add(threading.current_thread().name)
        self.entered.release()
        if not self.go.wait(PATIENCE):
            raise AssertionError("the test never resumed verification")
        return self._appraise(*args, **kwargs)

    def wait_entered(self, count: int) -> None:
        for _ in range(count):
            assert self.entered.acquire(timeout=PATIENCE), "no release reached evidence verification"


def start(tmp_path: Path, clock: FakeClock, **server: Any) -> Kbs:
    platform = SimPlatform.open(default_path(), now=clock.now - timedelta(hours=1))
    state = tmp_path / "kbs-state"
    workers = server.pop("workers", None)
    kbs_server = KbsServer(
        KbsConfig(state_dir=state, auth=UNLIMITED_JUNK, workers=workers),
        address="127.0.0.1:0",
        clock=clock,
        **server,
    )
    kbs_server.start()
    return Kbs(
        kbs_server,
        state,
        clock,
        platform,
        KbsClient(kbs_server.target, read_token(state / ADMIN_TOKEN_FILE), timeout=20),
        KbsClient(kbs_server.target, timeout=20),
    )


@pytest.fixture
def paused(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Kbs], PausedVerification]]:
    hooks: list[PausedVerification] = []

    def install(kbs: Kbs) -> PausedVerification:
        assert kbs.server.broker is not None
        appraiser = kbs.server.broker.appraiser
        hook = PausedVerification(appraiser)
        monkeypatch.setattr(appraiser, "appraise", hook)
        hooks.append(hook)
        return hook

    yield install
    for hook in hooks:  # never leave a server thread waiting, whatever the test did
        hook.go.set()


def _release_in_thread(
    pool: ThreadPoolExecutor, kbs: Kbs, enclave: Enclave, grant: str
) -> Future[ReleasedKey]:
    def fetch() -> ReleasedKey:
        with KbsClient(kbs.server.target, timeout=PATIENCE * 2) as client:
            return client.fetch_key(
                "sales", enclave_secret=enclave.secret, grant=grant, attest=enclave.attest
            )

    return pool.submit(fetch)


@pytest.mark.parametrize(
    ("workers", "stuck_in_verification"),
    [(None, 1), (2, 2)],
    ids=["sqlite-default-event-loop-server", "worker-threads"],
)
def test_other_calls_answer_while_releases_are_stuck_in_evidence_verification(
    tmp_path: Path,
    clock: FakeClock,
    paused: Callable[[Kbs], PausedVerification],
    workers: int | None,
    stuck_in_verification: int,
) -> None:
    kbs = start(tmp_path, clock, workers=workers)
    try:
        dek = kbs.register("sales")
        kbs.admin.grant("sales", "user:alice")
        enclave = kbs.enclave()
        grant = kbs.session("alice", enclave)
        hook = paused(kbs)
        releases = 6
        with ThreadPoolExecutor(max_workers=releases) as pool:
            pending = [_release_in_thread(pool, kbs, enclave, grant) for _ in range(releases)]
            # Every thread that verifies evidence is now stuck (the default server has one, the
            # threaded one two); the rest of the releases queue behind them.
            hook.wait_entered(stuck_in_verification)

            # Meanwhile: the public calls, an administrative write and administrative reads all answer.
            challenge = kbs.anon.challenge()
            info = kbs.anon.info()
            kbs.admin.grant("sales", "user:bob")
            granted = {g.principal for g in kbs.admin.get_dataset("sales").grants}
            head_while_stuck = kbs.admin.audit(limit=1).head_seq

            assert len(challenge.nonce) == 32 and info.protocol == "teelab/kbs/v1"
            assert granted == {"user:alice", "user:bob"}
            assert not any(f.done() for f in pending), "a release finished while its verification was paused"
            assert not hook.go.is_set()

            hook.go.set()
            released = [f.result(timeout=PATIENCE) for f in pending]
        assert all(r.dek == dek and r.version == 1 for r in released)
        # Verification ran in the evidence threads, never on an event loop.
        assert hook.on_an_event_loop == [False] * releases
        assert all(name.startswith("kbs-evidence") for name in hook.threads), hook.threads

        # The audit log is intact and in commit order: the grant to bob, made while the releases were
        # stuck, comes before every one of them.
        records = list(kbs.admin.iter_audit())
        assert verify_audit(records, kbs.anon.info().signing_public_key).ok
        entries = [r.entry() for r in records]
        assert [(e["event"], e["outcome"]) for e in entries[head_while_stuck - 1 :]] == [("grant", "ok")] + [
            ("release", "released")
        ] * releases
        assert entries[head_while_stuck - 1]["principal"] == "user:bob"
    finally:
        kbs.close()
        kbs.server.stop(grace=0)


def test_releases_beyond_the_bound_are_refused_at_once_and_spend_nothing(
    tmp_path: Path, clock: FakeClock, paused: Callable[[Kbs], PausedVerification]
) -> None:
    kbs = start(tmp_path, clock, max_pending_evidence=2)
    try:
        dek = kbs.register("sales")
        kbs.admin.grant("sales", "user:alice")
        enclave = kbs.enclave()
        grant = kbs.session("alice", enclave)
        hook = paused(kbs)
        service = kbs.server.service
        assert service is not None
        with ThreadPoolExecutor(max_workers=2) as pool:
            pending = [_release_in_thread(pool, kbs, enclave, grant) for _ in range(2)]
            hook.wait_entered(1)  # one verifying, one queued: the bound is reached
            while service.pending_evidence < 2:
                assert not any(f.done() for f in pending)
                threading.Event().wait(0.01)
            head = kbs.admin.audit(limit=1).head_seq

            challenge = kbs.anon.challenge()
            evidence = enclave.attest(
                release_report_data(
                    challenge.nonce, enclave.public, grant.encode(), dataset="sales", version=None
                )
            ).blob

            def release() -> bytes:
                sealed = kbs.anon.release(
                    nonce=challenge.nonce,
                    dataset="sales",
                    enclave_key=enclave.public,
                    grant=grant,
                    evidence=evidence,
                )
                return bytes(sealed.sealed_dek)

            with pytest.raises(KeyBrokerError) as refused:
                release()
            assert refused.value.reason == "rate_limited"
            assert "retry" in refused.value.message
            # Refused before any work: nothing audited, and the nonce is not spent.
            assert kbs.admin.audit(limit=1).head_seq == head

            hook.go.set()
            assert all(f.result(timeout=PATIENCE).dek == dek for f in pending)
        assert release()  # the same nonce and evidence, once there is room
        assert service.pending_evidence == 0
    finally:
        kbs.close()
        kbs.server.stop(grace=0)


def test_every_method_that_carries_evidence_runs_in_the_evidence_lane() -> None:
    carrying = {name for name, m in METHODS.items() if "evidence" in m.request.DESCRIPTOR.fields_by_name}
    assert "Release" in carrying
    assert {name for name, m in METHODS.items() if m.verifies_evidence} == carrying
