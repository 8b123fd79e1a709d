"""Tenant isolation on a real key broker (gRPC on loopback), on SQLite and on PostgreSQL.

Three users and two groups, each user with its own local token:

- alice owns ``sales``; bob owns ``payroll``; the group ``finance`` (carol, and bob) owns ``ledger``;
- the group ``analysts`` (alice, carol) holds a grant on ``sales``.

Every cross-user attempt — a session grant for someone else, a release of a dataset granted to someone else,
grant / revoke / delete / re-policy / a new version of a dataset one does not own, reading its details or
its audit entries — is refused with a clear reason and leaves an audit entry naming the caller; every
legitimate action works.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy

from teelab.errors import KeyBrokerError
from teelab.sealed_store.kbs.client import KbsClient

from .conftest import GOOD, OTHER, FakeClock, Kbs, open_kbs, policy_for
from .test_postgres import postgres_url  # noqa: F401  (the throwaway cluster, a module fixture)


@pytest.fixture(params=["sqlite", "postgresql"])
def tenants(request: pytest.FixtureRequest, kbs: Kbs, clock: FakeClock, tmp_path: Any) -> Iterator[Kbs]:
    """The same three tenants on either database."""
    if request.param == "sqlite":
        world = kbs
    else:
        url = request.getfixturevalue("postgres_url")
        engine = sqlalchemy.create_engine(url)
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        engine.dispose()
        state = tmp_path / "pg-tenants"
        world = open_kbs(state, clock, kbs.platform, db_url=url)
    alice, bob, carol = (world.as_user(name) for name in ("alice", "bob", "carol"))
    _register(alice, "sales", 1)
    _register(bob, "payroll", 1)
    for group, user in (
        ("analysts", "alice"),
        ("analysts", "carol"),
        ("finance", "carol"),
        ("finance", "bob"),
    ):
        world.admin.add_member(group, user)
    _register(carol, "ledger", 1, owner="group:finance")
    alice.grant("sales", "group:analysts")
    bob.grant("payroll", "user:bob")
    try:
        yield world
    finally:
        if world is not kbs:
            world.close()
            world.server.stop(grace=0)


def _register(client: KbsClient, name: str, version: int, *, owner: str | None = None) -> None:
    client.register_dataset(
        name,
        version,
        manifest_sha256=hashlib.sha256(f"{name}/{version}".encode()).hexdigest(),
        dek=secrets.token_bytes(32),
        release_policy_toml=policy_for(GOOD),
        owner=owner,
    )


def _refused(kbs: Kbs, call: Callable[[], object], reason: str, actor: str, event: str) -> None:
    """Refused with ``reason`` and a clear message, and recorded: the newest audit entry names the caller."""
    with pytest.raises(KeyBrokerError) as caught:
        call()
    assert caught.value.reason == reason, (caught.value.reason, caught.value.message)
    assert caught.value.message  # a sentence, not a bare code
    entry = kbs.admin.audit().records[-1].entry()
    assert (entry["event"], entry["outcome"], entry["actor"]) == (event, "denied", actor), entry


def test_every_cross_tenant_attempt_is_refused_and_audited(tenants: Kbs) -> None:
    kbs = tenants
    alice, bob, carol = kbs.as_user("alice"), kbs.as_user("bob"), kbs.as_user("carol")
    ekh = "ab" * 32
    # Mint a grant for another user.
    _refused(
        kbs,
        lambda: alice.issue_session_grant("bob", enclave_key_hash=ekh),
        "forbidden",
        "user:alice",
        "session_grant",
    )
    # Administer a dataset one does not own: grant, revoke, re-policy, delete, a new version.
    _refused(kbs, lambda: alice.grant("payroll", "user:alice"), "forbidden", "user:alice", "grant")
    _refused(kbs, lambda: alice.revoke("payroll", "user:bob"), "forbidden", "user:alice", "revoke")
    _refused(
        kbs,
        lambda: alice.set_release_policy("payroll", release_policy_toml=policy_for(OTHER)),
        "forbidden",
        "user:alice",
        "policy",
    )
    _refused(kbs, lambda: alice.delete_dataset("payroll"), "forbidden", "user:alice", "delete")
    _refused(kbs, lambda: _register(alice, "payroll", 2), "forbidden", "user:alice", "register")
    # A group-owned dataset is not administered by a non-member (alice is in analysts, not finance).
    _refused(kbs, lambda: alice.grant("ledger", "user:alice"), "forbidden", "user:alice", "grant")
    # Register a dataset in someone else's name, or a group's one is not in.
    _refused(kbs, lambda: _register(alice, "mine", 1, owner="bob"), "forbidden", "user:alice", "register")
    _refused(
        kbs, lambda: _register(alice, "mine", 1, owner="group:finance"), "forbidden", "user:alice", "register"
    )
    # Read another's dataset details, or its audit entries, or the whole log; manage groups.
    _refused(kbs, lambda: alice.get_dataset("payroll"), "forbidden", "user:alice", "read")
    _refused(kbs, lambda: alice.audit(dataset="payroll"), "forbidden", "user:alice", "read")
    _refused(kbs, lambda: alice.audit(), "forbidden", "user:alice", "audit")
    _refused(kbs, lambda: alice.add_member("finance", "alice"), "forbidden", "user:alice", "member_add")
    _refused(kbs, lambda: alice.list_datasets("bob"), "forbidden", "user:alice", "list")
    # Release another user's dataset: alice's own, genuine session is not granted on payroll.
    enclave = kbs.enclave()
    grant = kbs.session("alice", enclave)
    with pytest.raises(KeyBrokerError) as caught:
        kbs.fetch("payroll", enclave, grant)
    assert caught.value.reason == "not_granted"
    entry = kbs.admin.audit().records[-1].entry()
    assert (entry["event"], entry["outcome"], entry["user"], entry["reason"]) == (
        "release",
        "denied",
        "alice",
        "not_granted",
    )
    # Nothing changed: payroll is still bob's, with bob's grant, one version.
    payroll = bob.get_dataset("payroll")
    assert payroll.owner == "bob" and [g.principal for g in payroll.grants] == ["user:bob"]
    assert [v.version for v in payroll.versions] == [1] and payroll.policy_sha256 != ""
    # And the refusals are all there, each naming alice.
    denied = [r.entry() for r in kbs.admin.audit().records if r.entry().get("outcome") == "denied"]
    assert sum(e["actor"] == "user:alice" for e in denied) == 15
    assert carol.list_datasets("carol")  # carol's own view still works


def test_every_legitimate_action_works(tenants: Kbs) -> None:
    kbs = tenants
    alice, bob, carol = kbs.as_user("alice"), kbs.as_user("bob"), kbs.as_user("carol")
    # Owners administer their own datasets.
    assert alice.grant("sales", "user:bob").principal == "user:bob"
    assert alice.revoke("sales", "user:bob")
    assert alice.set_release_policy("sales", release_policy_toml=policy_for(GOOD, OTHER)).name == "sales"
    _register(alice, "sales", 2)
    assert alice.get_dataset("sales").current_version == 2
    assert {r.entry()["event"] for r in alice.audit(dataset="sales").records} >= {
        "register",
        "grant",
        "revoke",
    }
    assert all(r.entry().get("dataset") == "sales" for r in alice.audit(dataset="sales").records)
    # Members of the owning group administer a group-owned dataset (carol and bob are in finance).
    assert carol.grant("ledger", "user:alice").principal == "user:alice"
    assert bob.revoke("ledger", "user:alice")
    _register(bob, "ledger", 2, owner="group:finance")
    # A group grant reaches its members' own sessions; each user gets a grant only for itself.
    for name in ("alice", "carol"):
        enclave = kbs.enclave()
        session = kbs.as_user(name).issue_session_grant(enclave_key=enclave.public)
        assert kbs.fetch("sales", enclave, session.token).version == 2
    enclave = kbs.enclave()
    assert kbs.fetch("payroll", enclave, kbs.session("bob", enclave)).version == 1
    # Each sees what it owns and what it may read; the admin sees everything.
    assert [d.name for d in alice.list_datasets()] == ["sales"]
    assert [d.name for d in carol.list_datasets()] == ["ledger", "sales"]
    assert [d.name for d in kbs.admin.list_datasets()] == ["ledger", "payroll", "sales"]
    # Deleting one's own dataset works, and only then.
    assert bob.delete_dataset("payroll") == [1]
