"""The adversaries of docs/protocols/kbs.md §7, each a test that fails on the key broker before issue 13:

- the host in the middle rolls a reader back to an old version (request or answer rewritten);
- the host launches the genuine kernel image itself and uses it as an attestation oracle;
- anyone floods the broker with junk that once cost a signed audit entry each;
- someone with write access to the database deletes the log's tail, rewrites its head, reorders entries,
  or rolls the whole database back.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from teelab.errors import KeyBrokerError
from teelab.sealed_store.kbs import cli
from teelab.sealed_store.kbs.auth import ADMIN_TOKEN_FILE, read_token
from teelab.sealed_store.kbs.auth_config import AuthConfig
from teelab.sealed_store.kbs.client import KbsClient, SealedRelease
from teelab.sealed_store.kbs.protocol import SERVICE_NAME
from teelab.sealed_store.kbs.reasons import REASON_METADATA_KEY

from .conftest import FakeClock, Kbs, start_kbs


def _reason(call: Callable[[], object]) -> str:
    with pytest.raises(KeyBrokerError) as caught:
        call()
    return caught.value.reason


class HostInTheMiddle(KbsClient):
    """The kernel's connection to the broker crosses the TEE host, which can rewrite any byte of it."""

    def __init__(
        self,
        *args: Any,
        request: Callable[[dict[str, Any]], dict[str, Any]] = lambda r: r,
        answer: Callable[[SealedRelease], SealedRelease] = lambda a: a,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.rewrite_request, self.rewrite_answer = request, answer

    def release(self, **request: Any) -> SealedRelease:  # type: ignore[override]
        return self.rewrite_answer(super().release(**self.rewrite_request(request)))


def _two_versions(kbs: Kbs) -> None:
    kbs.register("sales", 1)
    kbs.register("sales", 2)
    kbs.admin.grant("sales", "user:alice")


# -- rollback ------------------------------------------------------------------------------------------


def test_a_host_cannot_turn_a_request_for_the_current_version_into_an_old_one(kbs: Kbs) -> None:
    _two_versions(kbs)
    enclave = kbs.enclave()
    grant = kbs.session("alice", enclave)
    with HostInTheMiddle(kbs.server.target, request=lambda r: {**r, "version": 1}) as host:
        refused = _reason(
            lambda: host.fetch_key("sales", enclave_secret=enclave.secret, grant=grant, attest=enclave.attest)
        )
    assert refused == "evidence_rejected"  # the evidence binds "current", not v1
    entry = kbs.admin.audit().records[-1].entry()
    assert (entry["event"], entry["outcome"], entry["requested_version"]) == ("release", "denied", 1)
    # Untouched, the same kernel gets the current version.
    assert kbs.fetch("sales", enclave, grant).version == 2


def test_a_rewritten_answer_does_not_open_and_another_version_is_refused(kbs: Kbs) -> None:
    _two_versions(kbs)
    enclave = kbs.enclave()
    grant = kbs.session("alice", enclave)
    old_manifest = kbs.admin.get_dataset("sales").version(1)
    assert old_manifest is not None

    def as_v1(answer: SealedRelease) -> SealedRelease:
        return replace(answer, version=1, manifest_sha256=old_manifest.manifest_sha256)

    with HostInTheMiddle(kbs.server.target, answer=as_v1) as host:
        refused = _reason(
            lambda: host.fetch_key("sales", enclave_secret=enclave.secret, grant=grant, attest=enclave.attest)
        )
    assert refused == "protocol_error"  # the answer is in the HPKE info of the sealed key
    # Asked for v2 explicitly, an answer for v1 is refused before anything is opened.
    with HostInTheMiddle(kbs.server.target, answer=as_v1) as host:
        with pytest.raises(KeyBrokerError) as caught:
            host.fetch_key(
                "sales", enclave_secret=enclave.secret, grant=grant, attest=enclave.attest, version=2
            )
    assert "asked for sales v2" in caught.value.message


# -- the attestation oracle --------------------------------------------------------------------------------


def test_a_grant_bound_to_a_controller_releases_only_into_kernels_it_launched(kbs: Kbs) -> None:
    kbs.register("sales")
    kbs.admin.grant("sales", "user:alice")
    gateway = hashlib.sha256(b"alice's gateway identity key").digest()
    ours = kbs.enclave(controller=gateway)
    assert kbs.fetch("sales", ours, kbs.session("alice", ours, controller=gateway)).version == 1
    # The host launched the same genuine image itself (another or no controller) and obtained a grant
    # naming that enclave's key from alice's gateway: evidence from an oracle, refused and audited.
    for launcher in (hashlib.sha256(b"the host").digest(), None):
        oracle = kbs.enclave(controller=launcher)
        grant = kbs.session("alice", oracle, controller=gateway)
        assert _reason(lambda: kbs.fetch("sales", oracle, grant)) == "evidence_rejected"  # noqa: B023
        entry = kbs.admin.audit().records[-1].entry()
        assert entry["outcome"] == "denied" and str(entry["detail"]).startswith("oracle evidence")
    # A grant without a controller keeps today's behaviour (a gateway that has no identity key yet).
    plain = kbs.enclave()
    assert kbs.fetch("sales", plain, kbs.session("alice", plain)).version == 1


# -- junk ------------------------------------------------------------------------------------------------


def test_junk_costs_a_counter_not_a_signed_entry(tmp_path: Path, clock: FakeClock, kbs: Kbs) -> None:
    state = tmp_path / "junk-kbs"
    server = start_kbs(state, clock, auth=AuthConfig(junk_burst=20, junk_per_second=5))
    admin = KbsClient(server.target, read_token(state / ADMIN_TOKEN_FILE))
    channel = grpc.insecure_channel(server.target)
    release = channel.unary_unary(
        f"/{SERVICE_NAME}/Release", request_serializer=None, response_deserializer=None
    )
    grant = channel.unary_unary(f"/{SERVICE_NAME}/Grant", request_serializer=None, response_deserializer=None)
    try:
        before = admin.audit().head_seq
        outcomes: dict[str, int] = {}
        for i in range(300):
            call = release if i % 3 else grant
            metadata = () if i % 3 else (("authorization", "Bearer not-a-token"),)
            with pytest.raises(grpc.RpcError) as caught:
                call(b"\x0a\x03abc" if i % 2 else b"\xff\xfe junk", timeout=10, metadata=metadata)
            reason = dict(caught.value.trailing_metadata() or ())[REASON_METADATA_KEY]
            outcomes[reason] = outcomes.get(reason, 0) + 1
        assert server.service is not None
        # 20 were judged (each refused as junk and counted), the other 280 stopped at the counter.
        assert sum(server.service.junk.counts.values()) == 20
        assert outcomes["rate_limited"] == 280
        # None of it reached the signed log: the admin's own reads above and below are the only calls.
        clock.advance(seconds=10)  # the peer's budget refills with time
        assert admin.audit().head_seq == before
    finally:
        channel.close()
        admin.close()
        server.stop(grace=0)


# -- the audit log's tail --------------------------------------------------------------------------------


@pytest.fixture
def log_folder(kbs: Kbs) -> Path:
    kbs.register("sales")
    for who in ("alice", "bob", "carol", "dave"):
        kbs.admin.grant("sales", f"user:{who}")
    kbs.server.stop()
    return kbs.state


def _copy(state: Path, tmp_path: Path, tamper: Callable[[sqlite3.Connection], None] | None = None) -> Path:
    copy = tmp_path / f"copy-{len(list(tmp_path.iterdir()))}"
    shutil.copytree(state, copy)
    if tamper is not None:
        with sqlite3.connect(copy / "kbs.sqlite3") as db:
            tamper(db)
    return copy


def _verify(state: Path, *extra: str) -> int:
    return cli.main(["audit", "verify", "--state", str(state), "--forget", *extra])


def test_tail_deletion_head_rewrite_and_reordering_are_detected(
    log_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _verify(log_folder) == 0
    capsys.readouterr()

    def delete_tail(db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM kbs_audit WHERE seq > 3")

    assert _verify(_copy(log_folder, tmp_path, delete_tail)) == 1
    assert "tail deleted" in capsys.readouterr().err

    def delete_tail_and_move_head(db: sqlite3.Connection) -> None:
        delete_tail(db)
        db.execute("UPDATE kbs_audit_head SET seq = 3, hash = (SELECT hash FROM kbs_audit WHERE seq = 3)")

    assert _verify(_copy(log_folder, tmp_path, delete_tail_and_move_head)) == 1
    assert "signature does not verify" in capsys.readouterr().err

    def reorder(db: sqlite3.Connection) -> None:
        db.execute("UPDATE kbs_audit SET seq = -1 WHERE seq = 2")
        db.execute("UPDATE kbs_audit SET seq = 2 WHERE seq = 3")
        db.execute("UPDATE kbs_audit SET seq = 3 WHERE seq = -1")

    assert _verify(_copy(log_folder, tmp_path, reorder)) == 1
    assert "entry 2" in capsys.readouterr().err


def test_a_witness_outside_the_database_detects_a_rolled_back_database(
    kbs: Kbs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kbs.register("sales")
    snapshots = tmp_path / "snapshots"
    snapshots.mkdir()
    snapshot = _copy(kbs.state, snapshots)  # the database while the broker runs (WAL files included)
    kbs.admin.grant("sales", "user:alice")  # the change the operator wants to make disappear
    kbs.server.stop()
    witness = tmp_path / "witness.json"
    assert _verify(kbs.state, "--witness", str(witness)) == 0  # records the head
    assert witness.is_file()
    capsys.readouterr()
    # The whole database put back to the earlier snapshot: every entry and the head are genuinely signed.
    shutil.copy(snapshot / "kbs.sqlite3", kbs.state / "kbs.sqlite3")
    for suffix in ("-wal", "-shm"):
        (kbs.state / f"kbs.sqlite3{suffix}").unlink(missing_ok=True)
        if (snapshot / f"kbs.sqlite3{suffix}").exists():
            shutil.copy(snapshot / f"kbs.sqlite3{suffix}", kbs.state / f"kbs.sqlite3{suffix}")
    assert _verify(kbs.state) == 0  # without a witness a shorter, older log is a valid log
    capsys.readouterr()
    assert _verify(kbs.state, "--witness", str(witness)) == 1
    assert "rolled back" in capsys.readouterr().err
