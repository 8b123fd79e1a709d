"""The audit log's format: canonical entries, the hash chain, signatures, and verification.

Entry ``n`` (n = 1, 2, ...) is stored as::

    body       canonical JSON (keys sorted, no spaces, ASCII) of {"v": 1, "seq": n, "time": ..., "event": ...,
               "outcome": ..., and the event's fields}
    hash       SHA-256(hash of entry n-1 ‖ body)          (entry 0's hash: 32 zero bytes)
    signature  Ed25519 over "teelab/kbs/v1/audit" ‖ 0x00 ‖ u64be(n) ‖ hash, by the KBS signing key

Editing a body breaks its hash; recomputing the hashes after an edit (someone with write access to the
database) breaks the signatures, which need the KBS key; deleting or reordering entries breaks the sequence
and the chain. Cutting entries off the *end* leaves a valid shorter log, which only a trusted head (a
``(seq, hash)`` recorded elsewhere, e.g. by a monitoring job) or a known minimum count can reveal.

Persistence is :mod:`teelab.sealed_store.kbs.store`'s job; this module is pure and shared by the server,
``teelab audit verify`` and anyone holding an export of the log.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from teelab.sealed_store.kbs.protocol import PROTOCOL

FORMAT_VERSION = 1
GENESIS_HASH = bytes(32)
_SIGNATURE_LABEL = PROTOCOL.encode() + b"/audit\x00"
MAX_DETAIL_CHARS = 2000

AuditValue = str | int | bool | None | list["AuditValue"] | dict[str, "AuditValue"]


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    body: str
    hash: bytes
    signature: bytes

    def entry(self) -> dict[str, AuditValue]:
        """The body as a mapping ({} when it is not a JSON object: verification reports that)."""
        try:
            value = json.loads(self.body)
        except (ValueError, RecursionError):
            return {}
        return value if isinstance(value, dict) else {}


def format_time(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical(value: Mapping[str, AuditValue]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def entry_body(seq: int, at: datetime, event: str, outcome: str, fields: Mapping[str, AuditValue]) -> str:
    body: dict[str, AuditValue] = {k: _clip(v) for k, v in fields.items() if v is not None}
    body.update(
        {"v": FORMAT_VERSION, "seq": seq, "time": format_time(at), "event": event, "outcome": outcome}
    )
    return canonical(body)


def _clip(value: AuditValue) -> AuditValue:
    if isinstance(value, str) and len(value) > MAX_DETAIL_CHARS:
        return value[: MAX_DETAIL_CHARS - 1] + "…"
    return value


def chain_hash(previous: bytes, body: str) -> bytes:
    return hashlib.sha256(previous + body.encode("ascii")).digest()


def signed_message(seq: int, entry_hash: bytes) -> bytes:
    return _SIGNATURE_LABEL + struct.pack(">Q", seq) + entry_hash


_HEAD_LABEL = b"teelab/kbs/v1/audit-head\x00"


def head_message(seq: int, head_hash: bytes) -> bytes:
    """What the head's signature covers: a different label from an entry's, so neither passes as the other."""
    return _HEAD_LABEL + struct.pack(">Q", seq) + head_hash


@dataclass(frozen=True)
class SignedHead:
    """The log's newest entry as the KBS last recorded it, signed: deleting entries off the end and
    rewriting the head to match needs the signing key."""

    seq: int
    hash: bytes
    signature: bytes | None


def seal_entry(
    previous: bytes,
    seq: int,
    at: datetime,
    event: str,
    outcome: str,
    fields: Mapping[str, AuditValue],
    signing_key: Ed25519PrivateKey,
) -> AuditRecord:
    body = entry_body(seq, at, event, outcome, fields)
    digest = chain_hash(previous, body)
    return AuditRecord(seq, body, digest, signing_key.sign(signed_message(seq, digest)))


@dataclass(frozen=True)
class AuditVerification:
    ok: bool
    count: int  # entries checked
    head_seq: int  # last good entry
    head_hash: bytes
    first_bad_seq: int | None = None
    problem: str | None = None

    def summary(self) -> str:
        if self.ok:
            return f"audit log intact: {self.count} entries, head {self.head_seq} {self.head_hash.hex()}"
        return f"audit log TAMPERED at entry {self.first_bad_seq}: {self.problem}"


def verify_audit(
    records: Iterable[AuditRecord],
    public_key: bytes | Ed25519PublicKey,
    *,
    trusted_head: tuple[int, bytes] | None = None,
    min_count: int | None = None,
    signed_head: SignedHead | None = None,
) -> AuditVerification:
    """Check the whole log from entry 1: sequence, canonical bodies, the hash chain and every signature.

    ``signed_head`` (the KBS's head record, read before the entries), ``trusted_head`` (seq, hash: a witness
    kept outside the database) and ``min_count`` additionally detect entries cut off the end.
    """
    key = (
        public_key
        if isinstance(public_key, Ed25519PublicKey)
        else Ed25519PublicKey.from_public_bytes(public_key)
    )
    previous = GENESIS_HASH
    count = 0
    head_matched = trusted_head is None
    if signed_head is not None:
        problem = _head_problem(signed_head, key)
        if problem:
            return AuditVerification(False, 0, 0, previous, signed_head.seq, problem)
        if trusted_head is not None and signed_head.seq < trusted_head[0]:
            return AuditVerification(
                False,
                0,
                0,
                previous,
                signed_head.seq + 1,
                f"the KBS's head is entry {signed_head.seq}, older than the witnessed head {trusted_head[0]} "
                "(rolled back)",
            )
        # The head is checked like a witness: the entry it names must be in the log, unchanged.
        extra = (signed_head.seq, signed_head.hash) if signed_head.seq > 0 else None
    else:
        extra = None
    extra_matched = extra is None

    def bad(seq: int, problem: str) -> AuditVerification:
        return AuditVerification(False, count, count, previous, seq, problem)

    for record in records:
        expected = count + 1
        if record.seq != expected:
            if record.seq > expected:
                return bad(expected, f"entry {expected} is missing (the next entry is {record.seq})")
            return bad(record.seq, f"entry {record.seq} appears out of order (expected {expected})")
        problem = _body_problem(record)
        if problem:
            return bad(record.seq, problem)
        if chain_hash(previous, record.body) != record.hash:
            return bad(record.seq, "its hash does not match its content and the previous entry (edited)")
        try:
            key.verify(record.signature, signed_message(record.seq, record.hash))
        except InvalidSignature:
            return bad(record.seq, "its signature does not verify with the KBS signing key (rewritten)")
        if trusted_head is not None and record.seq == trusted_head[0]:
            if record.hash != trusted_head[1]:
                return bad(record.seq, "it differs from the trusted head recorded for it")
            head_matched = True
        if extra is not None and record.seq == extra[0]:
            if record.hash != extra[1]:
                return bad(record.seq, "it differs from the KBS's signed head (rewritten)")
            extra_matched = True
        previous = record.hash
        count = expected
    if not extra_matched and extra is not None:
        return bad(
            count + 1, f"the log ends at entry {count} but the signed head is entry {extra[0]} (tail deleted)"
        )
    if not head_matched and trusted_head is not None:
        return bad(
            count + 1,
            f"the log ends at entry {count} but the trusted head is entry {trusted_head[0]} (truncated)",
        )
    if min_count is not None and count < min_count:
        return bad(count + 1, f"the log has {count} entries, at least {min_count} were expected (truncated)")
    return AuditVerification(True, count, count, previous)


def _head_problem(head: SignedHead, key: Ed25519PublicKey) -> str | None:
    if head.seq == 0 and head.hash == GENESIS_HASH:
        return None  # an empty log: nothing to sign yet
    if head.signature is None:
        return "the KBS's head record is not signed"
    try:
        key.verify(head.signature, head_message(head.seq, head.hash))
    except InvalidSignature:
        return "the KBS's head record's signature does not verify (rewritten)"
    return None


def _body_problem(record: AuditRecord) -> str | None:
    if not record.body.isascii():
        return "its body is not canonical (non-ASCII)"
    try:
        value = json.loads(record.body)
    except (ValueError, RecursionError):
        return "its body is not JSON"
    if not isinstance(value, dict):
        return "its body is not a JSON object"
    try:
        if canonical(value) != record.body:
            return "its body is not in canonical form (edited)"
    except ValueError:
        return "its body is not in canonical form (edited)"
    if value.get("seq") != record.seq:
        return f"its body names entry {value.get('seq')!r} (moved)"
    return None


# -- reading it --------------------------------------------------------------------------------------


def render_table(records: Iterable[AuditRecord]) -> str:
    """A table a person reads: one line per entry, the detail of denials at the end of the line."""
    rows = [("SEQ", "TIME", "EVENT", "OUTCOME", "ACTOR", "DATASET", "SUBJECT", "REASON / DETAIL")]
    for record in records:
        entry = record.entry()
        dataset = str(entry.get("dataset") or "")
        if entry.get("version") is not None:
            dataset += f"@{entry['version']}"
        subject = entry.get("principal") or entry.get("user") or entry.get("member") or ""
        if entry.get("group") and entry.get("member"):
            subject = f"{entry['member']} in {entry['group']}"
        reason = str(entry.get("reason") or "")
        detail = str(entry.get("detail") or "")
        rows.append(
            (
                str(record.seq),
                str(entry.get("time", "?"))[:19].replace("T", " "),
                str(entry.get("event", "?")),
                str(entry.get("outcome", "?")),
                str(entry.get("actor", "")),
                dataset,
                str(subject),
                f"{reason}: {detail}" if reason and detail else reason or detail,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in rows
    ).rstrip()
