"""Key release over real gRPC on loopback with real simulated SGX quotes: who gets which key, and who never does."""

from __future__ import annotations

import base64
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from teelab.enclave_runtime.sim.platform import SimPlatform, default_path
from teelab.errors import KeyBrokerError
from teelab.sealed_store.kbs.auth import ADMIN_TOKEN_FILE, read_token
from teelab.sealed_store.kbs.client import KbsClient, SealedRelease
from teelab.sealed_store.kbs.protocol import open_released_dek, release_report_data

from .conftest import GOOD, OTHER, FakeClock, Kbs, policy_for, start_kbs


class _Refused:
    """``with _Refused("not_granted"):`` — the call fails with exactly that reason code."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.error: KeyBrokerError | None = None

    def __enter__(self) -> _Refused:
        return self

    def __exit__(self, kind: object, error: BaseException | None, tb: object) -> bool:
        assert isinstance(error, KeyBrokerError), f"expected a refusal ({self.reason}), got {error!r}"
        assert error.reason == self.reason, f"expected {self.reason}, got {error.reason}: {error}"
        self.error = error
        return True


def last_denial(kbs: Kbs) -> dict[str, object]:
    entry = kbs.admin.audit().records[-1].entry()
    assert entry["event"] == "release" and entry["outcome"] == "denied"
    return entry


def test_a_granted_user_in_an_attested_kernel_gets_the_key(kbs: Kbs) -> None:
    dek = kbs.register("sales")
    kbs.admin.grant("sales", "user:alice")
    enclave = kbs.enclave()
    key = kbs.fetch("sales", enclave, kbs.session("alice", enclave))
    assert (key.dataset, key.version, key.dek) == ("sales", 1, dek)
    assert key.manifest_sha256 == hashlib.sha256(b"sales/1").hexdigest()
    assert "dek" not in repr(key) and dek.hex() not in repr(key)
    entry = kbs.admin.audit().records[-1].entry()
    assert entry["event"] == "release" and entry["outcome"] == "released"
    assert entry["user"] == "alice" and entry["via"] == "user:alice" and entry["mrenclave"] == GOOD


def test_tenant_isolation_user_a_never_gets_user_bs_key(kbs: Kbs) -> None:
    dek_a = kbs.register("a-data", owner="tenant-a")
    dek_b = kbs.register("b-data", owner="tenant-b")
    kbs.admin.grant("a-data", "user:alice")
    kbs.admin.grant("b-data", "user:bob")
    alice, bob = kbs.enclave(), kbs.enclave()
    grant_a, grant_b = kbs.session("alice", alice), kbs.session("bob", bob)
    with _Refused("not_granted"):
        kbs.fetch("b-data", alice, grant_a)
    with _Refused("not_granted"):
        kbs.fetch("a-data", bob, grant_b)
    assert kbs.fetch("a-data", alice, grant_a).dek == dek_a
    assert kbs.fetch("b-data", bob, grant_b).dek == dek_b
    # A dataset that does not exist looks exactly like one that exists but is not yours.
    with _Refused("not_granted") as missing:
        kbs.fetch("no-such-data", alice, grant_a)
    with _Refused("not_granted") as foreign:
        kbs.fetch("b-data", alice, grant_a)
    assert missing.error is not None and foreign.error is not None
    assert str(missing.error) == str(foreign.error)


def test_revoked_and_expired_grants_stop_the_next_release(kbs: Kbs) -> None:
    kbs.register("sales")
    kbs.admin.grant("sales", "user:alice")
    kbs.admin.grant("sales", "user:carol", expires_at=kbs.clock.now + timedelta(hours=1))
    alice, carol = kbs.enclave(), kbs.enclave()
    grant_a, grant_c = kbs.session("alice", alice), kbs.session("carol", carol)
    kbs.fetch("sales", alice, grant_a)
    kbs.fetch("sales", carol, grant_c)
    assert kbs.admin.revoke("sales", "user:alice") is True
    with _Refused("not_granted"):
        kbs.fetch("sales", alice, grant_a)
    assert "no grant" in str(last_denial(kbs)["detail"])
    kbs.clock.advance(hours=1)
    with _Refused("not_granted"):
        kbs.fetch("sales", carol, grant_c)
    assert "expired" in str(last_denial(kbs)["detail"])
    assert kbs.admin.revoke("sales", "user:alice") is False  # nothing left to revoke


def test_group_grants_follow_membership_at_release_time(kbs: Kbs) -> None:
    dek = kbs.register("sales")
    kbs.admin.grant("sales", "group:analysts")
    dave = kbs.enclave()
    grant = kbs.session("dave", dave)
    with _Refused("not_granted"):
        kbs.fetch("sales", dave, grant)
    assert kbs.admin.add_member("analysts", "dave") is True
    assert kbs.admin.add_member("analysts", "dave") is False
    key = kbs.fetch("sales", dave, grant)
    assert key.dek == dek
    assert kbs.admin.audit().records[-1].entry()["via"] == "group:analysts"
    # Removing the member takes effect at the very next release, with the same session grant.
    assert kbs.admin.remove_member("analysts", "dave") is True
    with _Refused("not_granted"):
        kbs.fetch("sales", dave, grant)
    assert kbs.admin.list_groups() == []


def test_a_kernel_outside_the_release_policy_is_refused_even_with_a_valid_grant(kbs: Kbs) -> None:
    kbs.register("sales", policy=policy_for(GOOD))
    kbs.admin.grant("sales", "user:alice")
    rogue = kbs.enclave(OTHER)
    with _Refused("evidence_rejected") as refusal:
        kbs.fetch("sales", rogue, kbs.session("alice", rogue))
    entry = last_denial(kbs)
    assert "mrenclave" in str(entry["detail"]).lower() and OTHER[:8] in str(entry["detail"])
    assert entry["mrenclave"] == OTHER  # the audit names the kernel that asked
    # The caller learns the rule, never the owner's reference values.
    assert refusal.error is not None and GOOD not in str(refusal.error) and OTHER not in str(refusal.error)
    debug = kbs.enclave(GOOD, debug=True)
    with _Refused("evidence_rejected"):
        kbs.fetch("sales", debug, kbs.session("alice", debug))
    # Simulated evidence is refused by a policy that does not allow simulation.
    kbs.admin.set_release_policy("sales", release_policy_toml=f'[sgx]\nmrenclave = ["{GOOD}"]\n')
    honest = kbs.enclave(GOOD)
    with _Refused("evidence_rejected"):
        kbs.fetch("sales", honest, kbs.session("alice", honest))
    assert "simulat" in str(last_denial(kbs)["detail"]).lower()


def test_a_grant_replayed_from_another_session_fails(kbs: Kbs) -> None:
    kbs.register("sales")
    kbs.admin.grant("sales", "user:alice")
    session_1, session_2 = kbs.enclave(), kbs.enclave()
    grant_1 = kbs.session("alice", session_1)
    # Session 2 (same user, same image, fresh key) presents session 1's grant with its own evidence.
    with _Refused("grant_invalid"):
        kbs.fetch("sales", session_2, grant_1)
    assert "another session" in str(last_denial(kbs)["detail"])


def test_tampered_forged_and_expired_session_grants_fail(kbs: Kbs) -> None:
    kbs.register("sales")
    kbs.admin.grant("sales", "user:alice")
    enclave = kbs.enclave()
    grant = kbs.session("alice", enclave)
    header, payload, signature = grant.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "mallory"
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    for bad in (f"{header}.{forged_payload}.{signature}", grant[:-4] + "AAAA", "not-a-jwt"):
        with _Refused("grant_invalid"):
            kbs.fetch("sales", enclave, bad)
    kbs.clock.advance(hours=12, seconds=1)
    with _Refused("grant_expired"):
        kbs.fetch("sales", enclave, grant)


def test_a_nonce_reused_expired_or_forged_fails(kbs: Kbs) -> None:
    kbs.register("sales")
    kbs.admin.grant("sales", "user:alice")
    enclave = kbs.enclave()
    grant = kbs.session("alice", enclave)
    challenge = kbs.anon.challenge()
    assert challenge.expires_at == kbs.clock.now + timedelta(seconds=60)
    evidence = enclave.attest(
        release_report_data(challenge.nonce, enclave.public, grant.encode(), dataset="sales", version=None)
    )
    request = {
        "nonce": challenge.nonce,
        "dataset": "sales",
        "enclave_key": enclave.public,
        "grant": grant,
        "evidence": evidence.blob,
    }
    sealed = kbs.anon.release(**request)  # type: ignore[arg-type]
    assert len(open_released_dek(enclave.secret, challenge.nonce, sealed.sealed_dek, **_answer(sealed))) == 32
    with _Refused("nonce_invalid"):
        kbs.anon.release(**request)  # type: ignore[arg-type]
    # Expired: a nonce not used within 60 s.
    late = kbs.anon.challenge()
    kbs.clock.advance(seconds=60)
    evidence = enclave.attest(
        release_report_data(late.nonce, enclave.public, grant.encode(), dataset="sales", version=None)
    )
    with _Refused("nonce_expired"):
        kbs.anon.release(**{**request, "nonce": late.nonce, "evidence": evidence.blob})  # type: ignore[arg-type]
    # Forged: 32 bytes the KBS never issued, with evidence properly bound to them.
    forged = bytes(32)
    evidence = enclave.attest(
        release_report_data(forged, enclave.public, grant.encode(), dataset="sales", version=None)
    )
    with _Refused("nonce_invalid"):
        kbs.anon.release(**{**request, "nonce": forged, "evidence": evidence.blob})  # type: ignore[arg-type]
    # Any refusal spends the nonce: one try per challenge.
    fresh = kbs.anon.challenge()
    with _Refused("invalid_argument"):
        kbs.anon.release(**{**request, "nonce": fresh.nonce, "dataset": "bad name!"})  # type: ignore[arg-type]
    evidence = enclave.attest(
        release_report_data(fresh.nonce, enclave.public, grant.encode(), dataset="sales", version=None)
    )
    with _Refused("nonce_invalid"):
        kbs.anon.release(**{**request, "nonce": fresh.nonce, "evidence": evidence.blob})  # type: ignore[arg-type]


def test_the_report_data_binding_covers_nonce_enclave_key_and_grant(kbs: Kbs) -> None:
    kbs.register("sales")
    kbs.admin.grant("sales", "user:alice")
    enclave, other = kbs.enclave(), kbs.enclave()
    grant = kbs.session("alice", enclave)
    other_grant = kbs.session("alice", other)
    wrong_bindings = {
        "another nonce": lambda nonce: release_report_data(
            bytes(32), enclave.public, grant.encode(), dataset="sales", version=None
        ),
        "another key": lambda nonce: release_report_data(
            nonce, other.public, grant.encode(), dataset="sales", version=None
        ),
        "another grant": lambda nonce: release_report_data(
            nonce, enclave.public, other_grant.encode(), dataset="sales", version=None
        ),
        "the session handshake's binding": lambda nonce: hashlib.sha512(
            b"teelab/session/v1" + enclave.public + nonce
        ).digest(),
    }
    for what, binding in wrong_bindings.items():
        challenge = kbs.anon.challenge()
        evidence = enclave.attest(binding(challenge.nonce))
        with _Refused("evidence_rejected"):
            kbs.anon.release(
                nonce=challenge.nonce,
                dataset="sales",
                enclave_key=enclave.public,
                grant=grant,
                evidence=evidence.blob,
            )
        assert "report_data" in str(last_denial(kbs)["detail"]), what


def test_the_released_key_opens_only_with_the_enclave_secret(kbs: Kbs) -> None:
    kbs.register("sales")
    kbs.admin.grant("sales", "user:alice")
    enclave, eavesdropper = kbs.enclave(), kbs.enclave()
    grant = kbs.session("alice", enclave)
    challenge = kbs.anon.challenge()
    evidence = enclave.attest(
        release_report_data(challenge.nonce, enclave.public, grant.encode(), dataset="sales", version=None)
    )
    sealed = kbs.anon.release(
        nonce=challenge.nonce,
        dataset="sales",
        enclave_key=enclave.public,
        grant=grant,
        evidence=evidence.blob,
    )
    with _Refused("protocol_error"):
        open_released_dek(eavesdropper.secret, challenge.nonce, sealed.sealed_dek, **_answer(sealed))
    with _Refused("protocol_error"):
        open_released_dek(enclave.secret, bytes(32), sealed.sealed_dek, **_answer(sealed))


def test_versions_current_explicit_deleted_and_release_expiry(kbs: Kbs) -> None:
    dek1 = kbs.register("sales", 1)
    dek2 = kbs.register("sales", 2)
    kbs.admin.grant("sales", "user:alice")
    enclave = kbs.enclave()
    grant = kbs.session("alice", enclave)
    assert kbs.fetch("sales", enclave, grant).dek == dek2
    assert kbs.fetch("sales", enclave, grant, version=1).dek == dek1
    with _Refused("version_unknown"):
        kbs.fetch("sales", enclave, grant, version=3)
    assert kbs.admin.delete_dataset("sales", 2) == [2]
    key = kbs.fetch("sales", enclave, grant)
    assert (key.version, key.dek) == (1, dek1)
    with _Refused("version_unknown"):
        kbs.fetch("sales", enclave, grant, version=2)
    kbs.admin.set_release_policy("sales", release_expires_at=kbs.clock.now + timedelta(hours=2))
    kbs.fetch("sales", enclave, grant)
    kbs.clock.advance(hours=2)
    with _Refused("release_expired"):
        kbs.fetch("sales", enclave, grant)
    kbs.admin.set_release_policy("sales", release_expires_at=None)
    kbs.fetch("sales", enclave, grant)
    assert kbs.admin.delete_dataset("sales") == [1]
    with _Refused("not_granted"):  # deleting the dataset removed its grants too
        kbs.fetch("sales", enclave, grant)


def test_collateral_can_come_with_the_request(kbs: Kbs) -> None:
    from teelab.enclave_runtime.sim.backend import SimBackend

    kbs.register("sales")
    kbs.admin.grant("sales", "user:alice")
    enclave = kbs.enclave()
    grant = kbs.session("alice", enclave)
    bundle = SimBackend().collateral_path(kbs.clock.now).read_bytes()
    key = kbs.anon.fetch_key(
        "sales", enclave_secret=enclave.secret, grant=grant, attest=enclave.attest, collateral=bundle
    )
    assert len(key.dek) == 32
    with _Refused("evidence_rejected"):
        kbs.anon.fetch_key(
            "sales", enclave_secret=enclave.secret, grant=grant, attest=enclave.attest, collateral=b"{}"
        )


@pytest.mark.parametrize(
    "config",
    [{}, {"workers": 4, "durability": "fsync"}],
    ids=["requests-on-the-event-loop", "worker-threads-with-fsync"],
)
def test_concurrent_releases_each_get_their_key_and_a_raced_nonce_wins_once(
    tmp_path: Path, clock: FakeClock, config: dict[str, object]
) -> None:
    """16 kernels at once, then 8 copies of one request racing: one release, seven nonce_invalid."""
    SimPlatform.open(default_path(), now=clock.now - timedelta(hours=1))
    state = tmp_path / "kbs"
    server = start_kbs(state, clock, **config)
    admin = KbsClient(server.target, read_token(state / ADMIN_TOKEN_FILE), timeout=20)
    anon = KbsClient(server.target, timeout=20)
    kbs = Kbs(server, state, clock, SimPlatform.load(default_path()), admin, anon)
    try:
        assert server.config.threads == (4 if config else 0)
        dek = kbs.register("sales")
        admin.grant("sales", "group:analysts")
        enclaves = [kbs.enclave() for _ in range(16)]
        grants = []
        for i, enclave in enumerate(enclaves):
            admin.add_member("analysts", f"u{i}")
            grants.append(kbs.session(f"u{i}", enclave))
        with ThreadPoolExecutor(16) as pool:
            keys = list(
                pool.map(lambda pair: kbs.fetch("sales", *pair).dek, zip(enclaves, grants, strict=True))
            )
        assert keys == [dek] * 16

        enclave, grant = enclaves[0], grants[0]
        challenge = anon.challenge()
        evidence = enclave.attest(
            release_report_data(
                challenge.nonce, enclave.public, grant.encode(), dataset="sales", version=None
            )
        )

        def attempt(_: int) -> str:
            try:
                anon.release(
                    nonce=challenge.nonce,
                    dataset="sales",
                    enclave_key=enclave.public,
                    grant=grant,
                    evidence=evidence.blob,
                )
            except KeyBrokerError as error:
                return error.reason
            return "released"

        with ThreadPoolExecutor(8) as pool:
            outcomes = sorted(pool.map(attempt, range(8)))
        assert outcomes == ["nonce_invalid"] * 7 + ["released"]
        page = admin.audit()
        released = [r.entry() for r in page.records if r.entry()["event"] == "release"]
        assert sum(e["outcome"] == "released" for e in released) == 17
        assert sum(e["outcome"] == "denied" for e in released) == 7
    finally:
        kbs.close()
        server.stop(grace=0)


def _answer(sealed: SealedRelease) -> dict[str, Any]:
    return {"dataset": sealed.dataset, "version": sealed.version, "manifest_sha256": sealed.manifest_sha256}
