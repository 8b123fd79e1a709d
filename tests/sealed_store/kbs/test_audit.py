"""The audit log: every decision is recorded, and any edit, deletion, reordering or truncation is caught.

The tampering is done the way an attacker with write access to the database (but not the KBS's signing
key) would: straight into the SQLite file, after the KBS wrote the entries.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import stat
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from teelab.errors import KeyBrokerError
from teelab.sealed_store.kbs import cli
from teelab.sealed_store.kbs.audit import (
    AuditRecord,
    canonical,
    chain_hash,
    render_table,
    seal_entry,
    verify_audit,
)
from teelab.sealed_store.kbs.crypto import load_signing_public_key
from teelab.sealed_store.kbs.store import Store

from .conftest import OTHER, Kbs

Tamper = Callable[[sqlite3.Connection], None]


@pytest.fixture
def logged(kbs: Kbs) -> Path:
    """A KBS state folder whose log holds every kind of entry, the KBS stopped (database at rest)."""
    kbs.register("sales")
    kbs.admin.grant("sales", "user:alice")
    kbs.admin.add_member("analysts", "bob")
    alice = kbs.enclave()
    grant = kbs.session("alice", alice)
    kbs.fetch("sales", alice, grant)
    rogue = kbs.enclave(OTHER)
    with pytest.raises(KeyBrokerError):
        kbs.fetch("sales", rogue, kbs.session("alice", rogue))
    kbs.admin.revoke("sales", "user:alice")
    kbs.admin.remove_member("analysts", "bob")
    kbs.server.stop()
    return kbs.state


def records(state: Path) -> list[AuditRecord]:
    store = Store.reader(f"sqlite:///{state / 'kbs.sqlite3'}")
    try:
        return list(store.iter_audit())
    finally:
        store.close()


def tampered(state: Path, tmp_path: Path, tamper: Tamper) -> Path:
    copy = tmp_path / f"copy-{len(list(tmp_path.iterdir()))}"
    shutil.copytree(state, copy)
    with sqlite3.connect(copy / "kbs.sqlite3") as db:
        tamper(db)
    return copy


def body(db: sqlite3.Connection, seq: int) -> str:
    return str(db.execute("SELECT body FROM kbs_audit WHERE seq = ?", (seq,)).fetchone()[0])


def edit(seq: int, old: str, new: str) -> Tamper:
    def apply(db: sqlite3.Connection) -> None:
        db.execute("UPDATE kbs_audit SET body = ? WHERE seq = ?", (body(db, seq).replace(old, new), seq))

    return apply


def rechain_from(seq: int, old: str, new: str) -> Tamper:
    """Edit an entry and recompute every hash after it: what someone without the signing key can do."""

    def apply(db: sqlite3.Connection) -> None:
        edit(seq, old, new)(db)
        rows = db.execute("SELECT seq, body FROM kbs_audit ORDER BY seq").fetchall()
        previous = bytes(32)
        for number, text in rows:
            digest = chain_hash(previous, text)
            db.execute("UPDATE kbs_audit SET hash = ? WHERE seq = ?", (digest, number))
            previous = digest
        db.execute("UPDATE kbs_audit_head SET hash = ?", (previous,))

    return apply


def delete(seq: int) -> Tamper:
    return lambda db: db.execute("DELETE FROM kbs_audit WHERE seq = ?", (seq,)) and None


def swap(a: int, b: int) -> Tamper:
    def apply(db: sqlite3.Connection) -> None:
        db.execute("UPDATE kbs_audit SET seq = -1 WHERE seq = ?", (a,))
        db.execute("UPDATE kbs_audit SET seq = ? WHERE seq = ?", (a, b))
        db.execute("UPDATE kbs_audit SET seq = ? WHERE seq = -1", (b,))

    return apply


def reformat(seq: int) -> Tamper:
    def apply(db: sqlite3.Connection) -> None:
        pretty = json.dumps(json.loads(body(db, seq)), indent=1)
        db.execute("UPDATE kbs_audit SET body = ? WHERE seq = ?", (pretty, seq))

    return apply


def test_every_decision_is_in_the_log(logged: Path) -> None:
    entries = [r.entry() for r in records(logged)]
    events = [(e["event"], e["outcome"]) for e in entries]
    assert events == [
        ("register", "ok"),
        ("grant", "ok"),
        ("member_add", "ok"),
        ("session_grant", "issued"),
        ("release", "released"),
        ("session_grant", "issued"),
        ("release", "denied"),
        ("revoke", "ok"),
        ("member_remove", "ok"),
    ]
    denial = entries[6]
    assert denial["reason"] == "evidence_rejected" and "mrenclave" in str(denial["detail"]).lower()
    assert all(e["v"] == 1 and e["seq"] == i for i, e in enumerate(entries, start=1))


def test_an_intact_log_verifies(logged: Path) -> None:
    key = load_signing_public_key(logged / "signing.pub")
    result = verify_audit(records(logged), key)
    assert result.ok and result.count == 9 and result.first_bad_seq is None
    assert verify_audit(records(logged), key, trusted_head=(result.head_seq, result.head_hash)).ok
    assert verify_audit(records(logged), key, trusted_head=(5, records(logged)[4].hash), min_count=9).ok


@pytest.mark.parametrize(
    ("tamper", "first_bad", "why"),
    [
        (edit(5, '"user":"alice"', '"user":"mallory"'), 5, "edited"),
        (edit(2, "user:alice", "user:eve00"), 2, "edited"),
        (rechain_from(7, "evidence_rejected", "not_granted"), 7, "signature"),
        (delete(4), 4, "missing"),
        (delete(1), 1, "missing"),
        (swap(3, 4), 3, "moved"),
        (reformat(6), 6, "canonical"),
    ],
    ids=[
        "edit-release",
        "edit-grant",
        "edit-and-rechain",
        "delete-middle",
        "delete-first",
        "reorder",
        "reformat",
    ],
)
def test_tampering_is_detected_at_the_first_bad_entry(
    logged: Path, tmp_path: Path, tamper: Tamper, first_bad: int, why: str
) -> None:
    copy = tampered(logged, tmp_path, tamper)
    result = verify_audit(records(copy), load_signing_public_key(logged / "signing.pub"))
    assert not result.ok
    assert result.first_bad_seq == first_bad, result.problem
    assert why in (result.problem or "")
    assert result.head_seq == first_bad - 1  # everything before it still verifies


def test_a_forged_signature_from_another_key_is_detected(logged: Path) -> None:
    forger = Ed25519PrivateKey.generate()
    genuine = records(logged)
    last = genuine[-1]
    fake = seal_entry(
        last.hash, last.seq + 1, datetime.now(UTC), "grant", "ok", {"principal": "user:eve"}, forger
    )
    result = verify_audit([*genuine, fake], load_signing_public_key(logged / "signing.pub"))
    assert not result.ok and result.first_bad_seq == 10 and "signature" in (result.problem or "")


def test_truncation_is_detected_with_a_trusted_head_or_count(logged: Path, tmp_path: Path) -> None:
    key = load_signing_public_key(logged / "signing.pub")
    head = verify_audit(records(logged), key)

    def cut(db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM kbs_audit WHERE seq > 7")
        row = db.execute("SELECT seq, hash FROM kbs_audit WHERE seq = 7").fetchone()
        db.execute("UPDATE kbs_audit_head SET seq = ?, hash = ?", row)

    copy = tampered(logged, tmp_path, cut)
    assert verify_audit(records(copy), key).ok  # a shorter log is still a valid log ...
    short = verify_audit(records(copy), key, trusted_head=(head.head_seq, head.head_hash))
    assert not short.ok and short.first_bad_seq == 8 and "truncated" in (short.problem or "")
    assert not verify_audit(records(copy), key, min_count=9).ok


def test_audit_cli_show_and_verify(logged: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["audit", "show", "--state", str(logged)]) == 0
    table = capsys.readouterr().out
    assert "SEQ" in table and "release" in table and "evidence_rejected" in table
    assert len(table.splitlines()) == 10  # a header and 9 entries
    assert cli.main(["audit", "show", "--state", str(logged), "--since", "7", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["seq"] for line in lines] == [8, 9]
    assert cli.main(["audit", "verify", "--state", str(logged)]) == 0
    out = capsys.readouterr().out
    assert "intact: 9 entries" in out
    head = out.split("--head ")[1].strip()
    copy = tampered(logged, tmp_path, edit(5, '"user":"alice"', '"user":"mallory"'))
    assert cli.main(["audit", "verify", "--state", str(copy)]) == 1
    err = capsys.readouterr().err
    assert "TAMPERED at entry 5" in err
    # Pinning the key: a database whose signing.pub was swapped along with the log still fails.
    other = tmp_path / "other.pub"
    other.write_text(hashlib.sha256(b"x").hexdigest())
    assert cli.main(["audit", "verify", "--state", str(logged), "--public-key", str(other)]) == 1
    capsys.readouterr()
    assert cli.main(["audit", "verify", "--state", str(logged), "--head", head]) == 0
    assert cli.main(["audit", "verify", "--state", str(logged), "--head", "oops"]) == 2
    assert cli.main(["audit", "verify", "--state", str(tmp_path / "nowhere")]) == 2
    assert not (tmp_path / "nowhere").exists()  # reading never creates a database


def test_render_table_survives_odd_bodies() -> None:
    odd = AuditRecord(1, canonical({"seq": 1, "event": "x", "detail": "a\u00e9"}), bytes(32), bytes(64))
    broken = AuditRecord(2, "not json", bytes(32), bytes(64))
    assert "x" in render_table([odd, broken])


def test_audit_cli_reads_a_running_kbs(kbs: Kbs, capsys: pytest.CaptureFixture[str]) -> None:
    kbs.register("sales")
    for name in ("a", "b", "c"):
        kbs.admin.grant("sales", f"user:{name}")
    remote = ["--kbs", kbs.server.target, "--token-file", str(kbs.state / "admin-token")]
    assert cli.main(["audit", "show", *remote, "--limit", "2"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [row.split()[0] for row in rows] == ["3", "4"]  # the newest two
    assert cli.main(["audit", "verify", *remote]) == 0
    assert "intact: 4 entries" in capsys.readouterr().out
    assert cli.main(["audit", "show", "--kbs", kbs.server.target]) == 2  # no token


def test_an_owner_reads_the_audit_of_its_own_datasets_only(
    kbs: Kbs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["kbs", "user", "add", "olga", "--state", str(kbs.state)]) == 0
    token = kbs.state / "users" / "olga.token"
    assert str(token) in capsys.readouterr().out and stat.S_IMODE(token.stat().st_mode) == 0o600
    kbs.register("sales", owner="olga")
    kbs.register("hr", owner="henry")
    kbs.admin.grant("sales", "user:a")
    remote = ["--kbs", kbs.server.target, "--token-file", str(token)]
    assert cli.main(["audit", "show", *remote, "--dataset", "sales", "--json"]) == 0
    shown = [json.loads(line)["body"] for line in capsys.readouterr().out.splitlines()]
    assert [(e["event"], e["dataset"]) for e in shown] == [("register", "sales"), ("grant", "sales")]
    assert cli.main(["audit", "show", *remote, "--dataset", "hr"]) == 1
    assert "only the owner of dataset hr" in capsys.readouterr().err
    assert cli.main(["audit", "show", *remote]) == 1  # the whole log is the admin's


def test_audit_cli_notices_entries_cut_off_the_end(
    logged: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Deleted trailing entries: caught by the broker's own head record, or — when the attacker rewrote that
    too — by the head this machine verified before."""

    def cut_only(db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM kbs_audit WHERE seq > 7")

    copy = tampered(logged, tmp_path, cut_only)
    assert cli.main(["audit", "verify", "--state", str(copy), "--forget"]) == 1
    assert "entry 8" in capsys.readouterr().err

    assert cli.main(["audit", "verify", "--state", str(logged)]) == 0  # remembered: 9 entries
    capsys.readouterr()

    def cut_and_rewrite_head(db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM kbs_audit WHERE seq > 7")
        row = db.execute("SELECT seq, hash FROM kbs_audit WHERE seq = 7").fetchone()
        db.execute("UPDATE kbs_audit_head SET seq = ?, hash = ?", row)

    rewritten = tampered(logged, tmp_path, cut_and_rewrite_head)
    assert cli.main(["audit", "verify", "--state", str(rewritten)]) == 1
    capsys.readouterr()
    # Even without the remembered head the copy tells: the head record is signed with the audit key, and
    # the rewritten head's signature does not verify (this passed before heads were signed).
    assert cli.main(["audit", "verify", "--state", str(rewritten), "--forget"]) == 1
    assert "head record's signature does not verify" in capsys.readouterr().err


def test_a_database_from_before_signed_heads_gets_its_head_signed_on_open(logged: Path) -> None:
    from teelab.sealed_store.kbs.audit import SignedHead
    from teelab.sealed_store.kbs.crypto import KbsKeys

    with sqlite3.connect(logged / "kbs.sqlite3") as db:
        db.execute("ALTER TABLE kbs_audit_head DROP COLUMN signature")  # the schema before heads were signed
    keys = KbsKeys.load_or_create(logged)
    store = Store.open(f"sqlite:///{logged / 'kbs.sqlite3'}", keys.signing_key)
    try:
        head = store.audit_head()
        entries = list(store.iter_audit())
    finally:
        store.close()
    assert isinstance(head, SignedHead) and head.signature is not None and head.seq == len(entries)
    assert verify_audit(entries, load_signing_public_key(logged / "signing.pub"), signed_head=head).ok
