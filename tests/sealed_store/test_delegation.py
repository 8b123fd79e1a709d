"""Grant delegation over real gRPC on loopback with real simulated SGX quotes (docs/protocols/kbs.md §4a).

A notebook kernel (the parent session, launched by gateway controller C) admits a Dask worker (enclave key
E_w, launched by the kernel's cluster controller C_w) and asks the key broker for a child grant for it. The
child is the worker's alone, never wider than the parent, and every refusal is the broker's own reason code.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from teelab.enclave_runtime.sim.platform import SimPlatform, default_path
from teelab.errors import KeyBrokerError
from teelab.sealed_store.kbs.client import DelegatedGrant
from teelab.sealed_store.kbs.protocol import (
    delegation_report_data,
    delegation_request_digest,
    enclave_key_sha256,
    seal_grant_for_kbs,
)
from teelab.sealed_store.kbs.v1 import kbs_pb2 as pb
from tests.sealed_store.kbs.conftest import OTHER, Enclave, FakeClock, Kbs, open_kbs

GATEWAY = hashlib.sha256(b"the gateway's identity key").digest()
CLUSTER = hashlib.sha256(b"the kernel's cluster controller key").digest()
STRANGER = hashlib.sha256(b"a host's own controller key").digest()


@pytest.fixture
def kbs(tmp_path: Path, clock: FakeClock) -> Iterator[Kbs]:
    platform = SimPlatform.open(default_path(), now=clock.now - timedelta(hours=1))
    kbs = open_kbs(tmp_path / "kbs-state", clock, platform)
    try:
        yield kbs
    finally:
        kbs.close()
        kbs.server.stop(grace=0)


@pytest.fixture
def clock() -> FakeClock:
    from datetime import UTC, datetime

    return FakeClock(datetime.now(UTC).replace(microsecond=0))


class Refused:
    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __enter__(self) -> Refused:
        return self

    def __exit__(self, kind: object, error: BaseException | None, tb: object) -> bool:
        assert isinstance(error, KeyBrokerError), f"expected a refusal ({self.reason}), got {error!r}"
        assert error.reason == self.reason, f"expected {self.reason}, got {error.reason}: {error}"
        return True


def kernel_session(kbs: Kbs, user: str = "alice", controller: bytes | None = GATEWAY) -> tuple[Enclave, str]:
    """A kernel launched by ``controller`` and its session grant (what the gateway obtains)."""
    kernel = kbs.enclave(controller=controller)
    return kernel, kbs.session(user, kernel, controller=controller)


def delegate(
    kbs: Kbs, parent: Enclave, grant: str, child: Enclave, controller: bytes = CLUSTER, **options: object
) -> DelegatedGrant:
    return kbs.anon.delegate_grant(
        enclave_secret=parent.secret,
        grant=grant,
        attest=parent.attest,
        child_enclave_key=child.public,
        child_controller=controller,
        **options,  # type: ignore[arg-type]
    )


def audit(kbs: Kbs, event: str) -> list[dict[str, object]]:
    return [e for e in (r.entry() for r in kbs.admin.audit().records) if e["event"] == event]


def setup_sales(kbs: Kbs) -> bytes:
    dek = kbs.register("sales")
    kbs.admin.grant("sales", "user:alice")
    return dek


def test_a_worker_gets_the_key_with_its_child_grant_and_the_audit_names_parent_child_user(kbs: Kbs) -> None:
    dek = setup_sales(kbs)
    kernel, grant = kernel_session(kbs)
    worker = kbs.enclave(controller=CLUSTER)
    child = delegate(kbs, kernel, grant, worker)
    key = kbs.fetch("sales", worker, child.token)
    assert key.dek == dek
    assert child.token not in repr(child)
    issued = audit(kbs, "delegate")[-1]
    parent_id = audit(kbs, "session_grant")[-1]["grant_id"]
    assert issued["outcome"] == "issued" and issued["user"] == "alice"
    assert issued["parent_grant_id"] == parent_id and issued["grant_id"] == child.grant_id
    assert issued["ekh"] == enclave_key_sha256(worker.public) and issued["controller"] == CLUSTER.hex()
    assert issued["parent_ekh"] == enclave_key_sha256(kernel.public)
    released = audit(kbs, "release")[-1]
    assert released["outcome"] == "released" and released["grant_id"] == child.grant_id
    assert released["ekh"] == enclave_key_sha256(worker.public)


def test_the_child_grant_is_bound_to_the_workers_key_and_controller(kbs: Kbs) -> None:
    setup_sales(kbs)
    kernel, grant = kernel_session(kbs)
    worker = kbs.enclave(controller=CLUSTER)
    child = delegate(kbs, kernel, grant, worker)
    # Another enclave (the kernel itself, or a second worker) cannot use the worker's grant.
    with Refused("grant_invalid"):
        kbs.fetch("sales", kernel, child.token)
    with Refused("grant_invalid"):
        kbs.fetch("sales", kbs.enclave(controller=CLUSTER), child.token)
    # The worker's key in an enclave that a host launched itself (another controller): an oracle, refused.
    impostor = kbs.enclave(controller=STRANGER)
    impostor.secret = worker.secret
    with Refused("evidence_rejected"):
        kbs.fetch("sales", impostor, child.token)
    # The child's releases are judged by the dataset's policy: the worker must run an accepted image too.
    foreign_image = kbs.enclave(OTHER, controller=CLUSTER)
    foreign_child = delegate(kbs, kernel, grant, foreign_image)
    with Refused("evidence_rejected"):
        kbs.fetch("sales", foreign_image, foreign_child.token)


def test_the_child_never_outlives_the_parent(kbs: Kbs) -> None:
    setup_sales(kbs)
    kernel = kbs.enclave(controller=GATEWAY)
    parent = kbs.as_user("alice").issue_session_grant(
        enclave_key=kernel.public, controller=GATEWAY, ttl=timedelta(minutes=10)
    )
    worker = kbs.enclave(controller=CLUSTER)
    child = delegate(kbs, kernel, parent.token, worker, ttl=timedelta(hours=5))
    assert child.expires_at <= parent.expires_at
    short = delegate(kbs, kernel, parent.token, kbs.enclave(controller=CLUSTER), ttl=timedelta(minutes=1))
    assert short.expires_at < parent.expires_at
    kbs.clock.advance(minutes=11)
    with Refused("grant_expired"):
        kbs.fetch("sales", worker, child.token)
    with Refused("grant_expired"):
        delegate(kbs, kernel, parent.token, kbs.enclave(controller=CLUSTER))
    assert audit(kbs, "delegate")[-1]["outcome"] == "denied"


def test_a_narrowed_child_releases_only_its_datasets(kbs: Kbs) -> None:
    setup_sales(kbs)
    kbs.register("claims")
    kbs.admin.grant("claims", "user:alice")
    kernel, grant = kernel_session(kbs)
    worker = kbs.enclave(controller=CLUSTER)
    child = delegate(kbs, kernel, grant, worker, datasets=["claims"])
    assert kbs.fetch("claims", worker, child.token).dataset == "claims"
    with Refused("not_granted"):
        kbs.fetch("sales", worker, child.token)
    # The user's own access still decides: narrowing to a dataset the user has no grant on gives nothing.
    kbs.register("secret", owner="olivia")
    secret_worker = kbs.enclave(controller=CLUSTER)
    secret_child = delegate(kbs, kernel, grant, secret_worker, datasets=["secret"])
    with Refused("not_granted"):
        kbs.fetch("secret", secret_worker, secret_child.token)


def test_no_chains_a_child_grant_cannot_be_delegated(kbs: Kbs) -> None:
    setup_sales(kbs)
    kernel, grant = kernel_session(kbs)
    worker = kbs.enclave(controller=CLUSTER)
    child = delegate(kbs, kernel, grant, worker)
    with Refused("forbidden"):
        delegate(kbs, worker, child.token, kbs.enclave(controller=CLUSTER))
    denial = audit(kbs, "delegate")[-1]
    assert denial["outcome"] == "denied" and "cannot be delegated further" in str(denial["detail"])


def test_the_parents_evidence_must_carry_the_parents_controller(kbs: Kbs) -> None:
    setup_sales(kbs)
    kernel, grant = kernel_session(kbs)
    # An oracle: the genuine image, launched by the host itself with its own controller, holding E.
    oracle = kbs.enclave(controller=STRANGER)
    oracle.secret = kernel.secret
    with Refused("evidence_rejected"):
        delegate(kbs, oracle, grant, kbs.enclave(controller=CLUSTER))
    assert "oracle evidence" in str(audit(kbs, "delegate")[-1]["detail"])
    # A session grant without a controller (no controller rule at the gateway) may not delegate at all.
    bare_kernel, bare_grant = kernel_session(kbs, controller=None)
    with Refused("forbidden"):
        delegate(kbs, bare_kernel, bare_grant, kbs.enclave(controller=CLUSTER))


def test_a_foreign_or_forged_parent_is_refused(kbs: Kbs, tmp_path: Path) -> None:
    setup_sales(kbs)
    kernel, _ = kernel_session(kbs)
    bob_kernel, bob_grant = kernel_session(kbs, "bob")
    # Bob's grant presented from alice's session (another E): replayed from another session.
    with Refused("grant_invalid"):
        delegate(kbs, kernel, bob_grant, kbs.enclave(controller=CLUSTER))
    # A grant another key broker signed is junk (not audited).
    other = open_kbs(tmp_path / "other-kbs", kbs.clock, kbs.platform)
    try:
        foreign = other.as_user("alice").issue_session_grant(enclave_key=kernel.public, controller=GATEWAY)
        before = len(kbs.admin.audit().records)
        with Refused("grant_invalid"):
            delegate(kbs, kernel, foreign.token, kbs.enclave(controller=CLUSTER))
        assert len(kbs.admin.audit().records) == before
    finally:
        other.close()
        other.server.stop(grace=0)
    assert bob_kernel.public != kernel.public


def _request(
    kbs: Kbs, parent: Enclave, grant: str, child_ekh: str, **fields: object
) -> pb.DelegateGrantRequest:
    """A request made by hand (as a host in the middle would), with evidence for ``child_ekh``."""
    nonce = kbs.anon.challenge().nonce
    digest = delegation_request_digest(child_ekh, CLUSTER.hex(), (), 0)
    evidence = parent.attest(delegation_report_data(nonce, parent.public, grant.encode(), digest))
    request = pb.DelegateGrantRequest(
        nonce=nonce,
        enclave_key=parent.public,
        sealed_grant=seal_grant_for_kbs(kbs.anon.kbs_public_key(), nonce, grant),
        child_enclave_key_sha256=child_ekh,
        child_controller_sha256=CLUSTER.hex(),
        evidence=evidence.blob,
    )
    for name, value in fields.items():
        setattr(request, name, value)
    return request


def test_a_man_in_the_middle_cannot_redirect_or_widen_the_child_nor_replay(kbs: Kbs) -> None:
    setup_sales(kbs)
    kernel, grant = kernel_session(kbs)
    worker = kbs.enclave(controller=CLUSTER)
    ekh = enclave_key_sha256(worker.public)
    mine = enclave_key_sha256(kbs.enclave(controller=CLUSTER).public)
    with Refused("evidence_rejected"):  # the host swaps in its own enclave's key
        kbs.anon._call(
            "DelegateGrant",
            _request(kbs, kernel, grant, ekh, child_enclave_key_sha256=mine),
            pb.DelegateGrantResponse,
        )
    with Refused("evidence_rejected"):  # the host swaps in its own controller
        kbs.anon._call(
            "DelegateGrant",
            _request(kbs, kernel, grant, ekh, child_controller_sha256=STRANGER.hex()),
            pb.DelegateGrantResponse,
        )
    with Refused("evidence_rejected"):  # the host asks for a longer life than the kernel did
        kbs.anon._call(
            "DelegateGrant", _request(kbs, kernel, grant, ekh, ttl_seconds=60), pb.DelegateGrantResponse
        )
    request = _request(kbs, kernel, grant, ekh)
    response = kbs.anon._call("DelegateGrant", request, pb.DelegateGrantResponse)
    assert response.grant_id and grant.encode() not in response.sealed_grant
    with Refused("nonce_invalid"):  # the same request again
        kbs.anon._call("DelegateGrant", request, pb.DelegateGrantResponse)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("child_enclave_key_sha256", "zz" * 32),
        ("child_controller_sha256", ""),
        ("nonce", b"short"),
        ("enclave_key", bytes(32)),  # a low-order point
        ("sealed_grant", b"\x00" * 80),
        ("evidence", b""),
        ("ttl_seconds", 10**7),
    ],
)
def test_junk_is_invalid_argument(kbs: Kbs, field: str, value: object) -> None:
    setup_sales(kbs)
    kernel, grant = kernel_session(kbs)
    request = _request(kbs, kernel, grant, enclave_key_sha256(kbs.enclave().public), **{field: value})
    with Refused("invalid_argument"):
        kbs.anon._call("DelegateGrant", request, pb.DelegateGrantResponse)


def test_junk_dataset_names_and_bytes_are_invalid_argument(kbs: Kbs) -> None:
    kernel, grant = kernel_session(kbs)
    request = _request(kbs, kernel, grant, enclave_key_sha256(kbs.enclave().public))
    request.datasets.extend(["../etc", "sales"])
    with Refused("invalid_argument"):
        kbs.anon._call("DelegateGrant", request, pb.DelegateGrantResponse)
    request = _request(kbs, kernel, grant, enclave_key_sha256(kbs.enclave().public))
    request.datasets.extend(["sales", "sales"])
    with Refused("invalid_argument"):
        kbs.anon._call("DelegateGrant", request, pb.DelegateGrantResponse)
    with Refused("invalid_argument"):
        kbs.anon._call(
            "DelegateGrant",
            pb.GetAuditRequest(since_seq=1 << 60, dataset="x" * 500),
            pb.DelegateGrantResponse,
        )
