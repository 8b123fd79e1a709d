"""The administration API over real gRPC: credentials, registration rules, listings, state on disk."""

from __future__ import annotations

import hashlib
import secrets
import stat
from datetime import timedelta

import grpc
import pytest

from teelab.errors import KeyBrokerError
from teelab.sealed_store.kbs.auth import ADMIN_TOKEN_FILE, read_token
from teelab.sealed_store.kbs.client import KbsClient
from teelab.sealed_store.kbs.protocol import SERVICE_NAME, seal_dek_for_kbs
from teelab.sealed_store.kbs.reasons import REASON_METADATA_KEY
from teelab.sealed_store.kbs.v1 import kbs_pb2 as pb

from .conftest import GOOD, Kbs, policy_for

MANIFEST = hashlib.sha256(b"manifest").hexdigest()


def reason_of(call: object) -> str:
    with pytest.raises(KeyBrokerError) as caught:
        call()  # type: ignore[operator]
    return caught.value.reason


def test_state_folder_keys_and_tokens_are_private(kbs: Kbs) -> None:
    assert stat.S_IMODE(kbs.state.stat().st_mode) == 0o700
    alice = kbs.as_user("alice")  # issues users/alice.token
    for name in ("master.key", "hpke.key", "signing.key", ADMIN_TOKEN_FILE, "users/alice.token"):
        assert stat.S_IMODE((kbs.state / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE((kbs.state / "users").stat().st_mode) == 0o700
    info = kbs.anon.info()
    assert info.protocol == "teelab/kbs/v1" and len(info.hpke_public_key) == 32
    assert (kbs.state / "signing.pub").read_text().strip() == info.signing_public_key.hex()
    assert read_token(kbs.state / ADMIN_TOKEN_FILE) != read_token(kbs.state / "users/alice.token")
    assert alice.list_datasets() == []
    # The database holds data keys only wrapped: the plaintext key appears nowhere in it.
    dek = kbs.register("sales")
    for file in kbs.state.glob("kbs.sqlite3*"):
        assert dek not in file.read_bytes()


def test_calls_need_the_right_token(kbs: Kbs) -> None:
    kbs.register("sales")
    wrong = KbsClient(kbs.server.target, "not-the-token")
    assert reason_of(lambda: kbs.anon.grant("sales", "user:alice")) == "unauthenticated"
    assert reason_of(lambda: wrong.grant("sales", "user:alice")) == "unauthenticated"
    # A user may ask for its own session grants and manage its own datasets, not olivia's.
    alice = kbs.as_user("alice")
    assert reason_of(lambda: alice.grant("sales", "user:alice")) == "forbidden"
    assert reason_of(lambda: alice.audit()) == "forbidden"
    assert reason_of(lambda: alice.get_dataset("sales")) == "forbidden"
    assert reason_of(lambda: alice.add_member("analysts", "alice")) == "forbidden"
    # And the admin does not issue session grants: it is no user, and a grant is only for yourself.
    assert reason_of(lambda: kbs.admin.issue_session_grant("alice", enclave_key_hash="0" * 64)) == "forbidden"
    assert reason_of(lambda: kbs.anon.issue_session_grant("alice", enclave_key_hash="0" * 64)) == (
        "unauthenticated"
    )
    wrong.close()
    # The status code carries the same meaning for generic gRPC clients.
    channel = grpc.insecure_channel(kbs.server.target)
    call = channel.unary_unary(
        f"/{SERVICE_NAME}/Grant",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=pb.GrantResponse.FromString,
    )
    with pytest.raises(grpc.RpcError) as caught:
        call(pb.GrantRequest(dataset="sales", principal="user:x"), metadata=(("authorization", "Bearer x"),))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert (REASON_METADATA_KEY, "unauthenticated") in tuple(caught.value.trailing_metadata())
    channel.close()


def test_registration_rules(kbs: Kbs) -> None:
    kbs.register("sales", 2, owner="olivia")
    assert reason_of(lambda: kbs.register("sales", 2)) == "version_exists"
    assert reason_of(lambda: kbs.register("sales", 1)) == "version_not_newer"
    assert reason_of(lambda: kbs.register("sales", 3, owner="mallory")) == "owner_mismatch"
    assert reason_of(lambda: kbs.register("bad/name")) == "invalid_argument"
    assert reason_of(lambda: kbs.register("x", 0)) == "invalid_argument"
    assert reason_of(lambda: kbs.register("x", policy="allow_simulation = maybe")) == "policy_invalid"
    assert reason_of(lambda: kbs.register("x", policy="alow_debug = true")) == "policy_invalid"
    # report_data is the protocol's to bind; a policy may not pin it.
    assert reason_of(lambda: kbs.register("x", policy='report_data = "00"\n')) == "policy_invalid"
    # A data key sealed for another dataset or version does not register.
    info = kbs.anon.info()
    sealed = seal_dek_for_kbs(info.hpke_public_key, "other", 1, secrets.token_bytes(32))
    request = pb.RegisterDatasetRequest(
        dataset="sales",
        version=3,
        manifest_sha256=MANIFEST,
        sealed_dek=sealed,
        release_policy_toml="",
        owner="olivia",
    )
    raw = grpc.insecure_channel(kbs.server.target)
    call = raw.unary_unary(
        f"/{SERVICE_NAME}/RegisterDataset",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=pb.RegisterDatasetResponse.FromString,
    )
    token = read_token(kbs.state / ADMIN_TOKEN_FILE)
    with pytest.raises(grpc.RpcError) as caught:
        call(request, metadata=(("authorization", f"Bearer {token}"),))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (REASON_METADATA_KEY, "dek_invalid") in tuple(caught.value.trailing_metadata())
    raw.close()
    # A rejected registration changed nothing.
    assert [v.version for v in kbs.admin.get_dataset("sales").versions] == [2]


def test_dataset_details_listing_and_user_scoped_listing(kbs: Kbs) -> None:
    policy = policy_for(GOOD)
    kbs.register("sales", 1, policy=policy)
    kbs.register("sales", 2, policy=policy)
    kbs.register("hr", owner="henry")
    kbs.admin.grant("sales", "group:analysts", expires_at=kbs.clock.now + timedelta(days=30))
    kbs.admin.grant("hr", "user:henry")
    kbs.admin.grant("hr", "user:alice", expires_at=kbs.clock.now + timedelta(hours=1))
    kbs.admin.add_member("analysts", "alice")
    detail = kbs.admin.get_dataset("sales")
    assert detail.current_version == 2 and [v.version for v in detail.versions] == [1, 2]
    assert detail.release_policy_toml == policy and detail.policy_id == "sales-release"
    assert detail.policy_sha256 == hashlib.sha256(policy.encode()).hexdigest()
    assert [g.principal for g in detail.grants] == ["group:analysts"]
    assert [d.name for d in kbs.admin.list_datasets()] == ["hr", "sales"]
    # What the JupyterLab dataset browser asks as alice: only what she may read, with only her grants.
    alice = kbs.as_user("alice")
    mine = {d.name: d for d in alice.list_datasets()}
    assert set(mine) == {"hr", "sales"}
    assert [g.principal for g in mine["hr"].grants] == ["user:alice"]
    assert [g.principal for g in mine["sales"].grants] == ["group:analysts"]
    assert mine["hr"].release_policy_toml is None
    kbs.clock.advance(hours=1)
    assert [d.name for d in alice.list_datasets()] == ["sales"]
    assert [d.name for d in kbs.admin.list_datasets("alice")] == ["sales"]
    assert kbs.admin.list_datasets("nobody") == []
    assert reason_of(lambda: alice.list_datasets("henry")) == "forbidden"
    # The owner sees its dataset in full.
    assert [g.principal for g in kbs.as_user("henry").list_datasets()[0].grants] == [
        "user:alice",
        "user:henry",
    ]
    assert kbs.admin.list_groups() == kbs.admin.list_groups("analysts")
    assert kbs.admin.list_groups()[0].members == ("alice",)


def test_grant_and_delete_rules(kbs: Kbs) -> None:
    assert reason_of(lambda: kbs.admin.grant("nothing", "user:alice")) == "dataset_unknown"
    kbs.register("sales")
    assert reason_of(lambda: kbs.admin.grant("sales", "alice")) == "invalid_argument"
    assert reason_of(lambda: kbs.admin.grant("sales", "role:alice")) == "invalid_argument"
    past = kbs.clock.now - timedelta(seconds=1)
    assert reason_of(lambda: kbs.admin.grant("sales", "user:alice", expires_at=past)) == "invalid_argument"
    first = kbs.admin.grant("sales", "user:alice")
    assert first.expires_at is None
    later = kbs.clock.now + timedelta(days=2)
    again = kbs.admin.grant("sales", "user:alice", expires_at=later)  # re-granting replaces
    assert again.expires_at == later
    assert [g.expires_at for g in kbs.admin.get_dataset("sales").grants] == [later]
    assert reason_of(lambda: kbs.admin.delete_dataset("sales", 5)) == "version_unknown"
    assert kbs.admin.delete_dataset("sales") == [1]
    assert reason_of(lambda: kbs.admin.get_dataset("sales")) == "dataset_unknown"
    # The name can be used again; version numbers continue (never reused), and no old grant survives.
    assert reason_of(lambda: kbs.register("sales", 1)) == "version_exists"
    kbs.register("sales", 2, owner="someone-else")
    fresh = kbs.admin.get_dataset("sales")
    assert fresh.owner == "someone-else" and fresh.grants == () and fresh.current_version == 2


def test_session_grants_are_audited_and_bounded(kbs: Kbs) -> None:
    alice = kbs.as_user("alice")
    grant = alice.issue_session_grant(enclave_key_hash="ab" * 32, ttl=timedelta(minutes=5))
    assert grant.expires_at == kbs.clock.now + timedelta(minutes=5)
    entry = kbs.admin.audit().records[-1].entry()
    assert entry["event"] == "session_grant" and entry["grant_id"] == grant.grant_id
    assert grant.token not in kbs.admin.audit().records[-1].body  # the log never holds a usable grant
    assert (
        reason_of(lambda: alice.issue_session_grant(enclave_key_hash="ab" * 32, ttl=timedelta(days=2)))
        == "invalid_argument"
    )
    assert reason_of(lambda: alice.issue_session_grant(enclave_key_hash="xyz")) == "invalid_argument"
    assert reason_of(lambda: alice.issue_session_grant("al ice", enclave_key_hash="ab" * 32)) == (
        "invalid_argument"
    )
    # Naming yourself is fine; naming anyone else is refused, and recorded.
    assert alice.issue_session_grant("alice", enclave_key_hash="ab" * 32).grant_id
    assert reason_of(lambda: alice.issue_session_grant("bob", enclave_key_hash="ab" * 32)) == "forbidden"
    refused = kbs.admin.audit().records[-1].entry()
    assert (refused["event"], refused["outcome"], refused["actor"]) == (
        "session_grant",
        "denied",
        "user:alice",
    )


def test_an_unreachable_kbs_is_a_typed_error() -> None:
    client = KbsClient("127.0.0.1:1", timeout=2)
    with pytest.raises(KeyBrokerError) as caught:
        client.info()
    assert caught.value.reason == "unavailable" and caught.value.hint
    client.close()
