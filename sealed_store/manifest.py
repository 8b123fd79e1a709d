"""The manifest of a sealed dataset version: its parts, their sizes and hashes, the key reference, and tags.

A manifest is canonical JSON (sorted keys, no whitespace, ASCII), and a file holds exactly those bytes, so
``manifest_sha256`` (what the key broker records per version) has one possible value per manifest. The
parser accepts nothing else: unknown or duplicate keys, floats, non-canonical spacing, out-of-order or
misnamed parts are all :class:`ManifestError`, because a lenient parser would give an attacker room to
vary bytes the MAC does not see.

Nothing about the data's schema appears here in clear: column names and types live in the parts' encrypted
footers and, in manifests sealed since the field exists, in the optional ``schema`` field, encrypted under a
key derived from the data key (:mod:`teelab.sealed_store.sealed_schema`), so that a reader (a Dask graph's
``meta``) learns the schema without opening a part while the host learns nothing new. Manifests without the
field stay valid: their readers take the schema from part 1's footer.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, NoReturn

from teelab.sealed_store.errors import (
    InvalidNameError,
    KeyMismatchError,
    ManifestError,
    ManifestTamperedError,
)
from teelab.sealed_store.format import (
    FORMAT,
    MAX_PARTS,
    MAX_VERSION,
    check_name,
    check_version,
    commitment,
    manifest_mac,
    part_name,
)
from teelab.sealed_store.sealed_schema import decrypt_schema, encrypt_schema, schema_text_problem

if TYPE_CHECKING:
    import pyarrow as pa

MAX_MANIFEST_BYTES = 16 * 1024 * 1024  # ~100k parts; anything larger is refused before parsing
MAX_KEY_REF = 512
_HEX64 = re.compile(r"[0-9a-f]{64}")
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
_TOP_KEYS = frozenset({"format", "dataset", "version", "created_at", "parts", "key", "commitment", "mac"})
_TOP_OPTIONAL = frozenset({"schema"})
_PART_KEYS = frozenset({"name", "size", "sha256"})
_PART_OPTIONAL = frozenset({"rows"})


@dataclass(frozen=True)
class PartEntry:
    name: str
    size: int
    sha256: str
    rows: int | None = None  # only when the owner chose to disclose row counts (``seal(record_rows=True)``)

    def document(self) -> dict[str, object]:
        entry: dict[str, object] = {"name": self.name, "size": self.size, "sha256": self.sha256}
        if self.rows is not None:
            entry["rows"] = self.rows
        return entry


@dataclass(frozen=True)
class Manifest:
    dataset: str
    version: int
    created_at: str  # UTC, ``YYYY-MM-DDTHH:MM:SSZ``
    parts: tuple[PartEntry, ...]
    key_ref: str  # the key broker's reference to this version's data key, e.g. ``kbs:sales/3``
    commitment: str
    mac: str
    # base64 of the AES-GCM-sealed Arrow schema (sealed_schema.py); None in manifests sealed before it existed
    encrypted_schema: str | None = None

    def unsigned_document(self) -> dict[str, object]:
        document: dict[str, object] = {
            "format": FORMAT,
            "dataset": self.dataset,
            "version": self.version,
            "created_at": self.created_at,
            "parts": [p.document() for p in self.parts],
            "key": {"kbs": self.key_ref},
            "commitment": self.commitment,
        }
        if self.encrypted_schema is not None:
            document["schema"] = self.encrypted_schema
        return document

    def to_bytes(self) -> bytes:
        """The manifest file's exact content."""
        return canonical_json({**self.unsigned_document(), "mac": self.mac})

    @property
    def sha256(self) -> str:
        """``manifest_sha256``: what the key broker records as this version's fingerprint."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @property
    def total_size(self) -> int:
        return sum(p.size for p in self.parts)

    def verify(self, dek: bytes) -> None:
        """Check the key commitment, then the MAC. Without this a manifest is just a claim."""
        if not hmac.compare_digest(commitment(dek, self.dataset, self.version), self.commitment):
            raise KeyMismatchError(
                "the data key does not match the manifest's key commitment",
                dataset=self.dataset,
                version=self.version,
            )
        expected = manifest_mac(dek, canonical_json(self.unsigned_document()))
        if not hmac.compare_digest(expected, self.mac):
            raise ManifestTamperedError(
                "the manifest's MAC does not verify (edited)", dataset=self.dataset, version=self.version
            )

    def arrow_schema(self, dek: bytes) -> pa.Schema | None:
        """The data's Arrow schema from the encrypted ``schema`` field, or ``None`` if this manifest has none
        (sealed before the field existed, or too wide a table): then part 1's footer holds it.

        Authenticates the manifest first (:meth:`verify`): nothing unauthenticated is decrypted or parsed.
        Raises :class:`ManifestTamperedError` if the field does not decrypt or decode.
        """
        self.verify(dek)
        if self.encrypted_schema is None:
            return None
        return decrypt_schema(dek, self.dataset, self.version, self.encrypted_schema)


def canonical_json(document: Mapping[str, object]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def build_manifest(
    *,
    dek: bytes,
    dataset: str,
    version: int,
    created_at: str,
    parts: Sequence[PartEntry],
    key_ref: str,
    schema: pa.Schema | None = None,
) -> Manifest:
    """Make a manifest and authenticate it with keys derived from ``dek``.

    ``schema``: the parts' Arrow schema, stored encrypted (omitted if larger than
    ``sealed_schema.MAX_SCHEMA_BYTES``; readers then fall back to part 1's footer).
    """
    unsigned = Manifest(
        dataset=dataset,
        version=version,
        created_at=created_at,
        parts=tuple(parts),
        key_ref=key_ref,
        commitment=commitment(dek, dataset, version),
        mac="",
        encrypted_schema=None if schema is None else encrypt_schema(dek, dataset, version, schema),
    )
    mac = manifest_mac(dek, canonical_json(unsigned.unsigned_document()))
    manifest = Manifest(**{**unsigned.__dict__, "mac": mac})
    # Round-trip through the parser: a manifest we cannot read back must never be written.
    return parse_manifest(manifest.to_bytes())


def default_key_ref(dataset: str, version: int) -> str:
    return f"kbs:{dataset}/{version}"


def parse_manifest(data: bytes, *, dataset: str | None = None, version: int | None = None) -> Manifest:
    """Parse manifest bytes strictly (no key needed; authenticity is :meth:`Manifest.verify`'s job).

    ``dataset``/``version`` only label error messages (where the bytes were found).
    """

    def fail(detail: str) -> NoReturn:
        raise ManifestError(f"malformed manifest: {detail}", dataset=dataset, version=version)

    if not isinstance(data, bytes | bytearray):
        fail("not bytes")
    if len(data) > MAX_MANIFEST_BYTES:
        fail(f"larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        document = json.loads(
            bytes(data).decode("ascii"),
            object_pairs_hook=_no_duplicates,
            parse_float=_no_float,
            parse_constant=_no_float,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        fail(f"not canonical JSON ({_short(error)})")
    if not isinstance(document, dict):
        fail("not a JSON object")
    if not _TOP_KEYS <= set(document) <= _TOP_KEYS | _TOP_OPTIONAL:
        fail(
            f"expected exactly the fields {sorted(_TOP_KEYS)} (and optionally schema), "
            f"got {[_short(k) for k in sorted(document)[:20]]}"
        )
    if document["format"] != FORMAT:
        fail(f"unknown format {_short(document['format'])}")
    name, number = document["dataset"], document["version"]
    try:
        check_name(name)
        check_version(number)
    except InvalidNameError as error:
        fail(error.detail)
    assert isinstance(name, str) and isinstance(number, int)
    created = document["created_at"]
    if not isinstance(created, str) or not _TIME.fullmatch(created) or not _valid_time(created):
        fail("created_at is not a UTC time like 2025-07-01T12:00:00Z")
    key = document["key"]
    if not isinstance(key, dict) or set(key) != {"kbs"}:
        fail('key must be {"kbs": <reference>}')
    key_ref = key["kbs"]
    if not isinstance(key_ref, str) or not 0 < len(key_ref) <= MAX_KEY_REF or not key_ref.isprintable():
        fail("key.kbs is not a printable reference of 1-512 characters")
    for field in ("commitment", "mac"):
        if not isinstance(document[field], str) or not _HEX64.fullmatch(document[field]):
            fail(f"{field} is not 64 lowercase hex digits")
    sealed_schema = document.get("schema")
    if "schema" in document:
        problem = schema_text_problem(sealed_schema)
        if problem is not None:
            fail(problem)
    assert sealed_schema is None or isinstance(sealed_schema, str)
    parts = document["parts"]
    if not isinstance(parts, list) or not 1 <= len(parts) <= MAX_PARTS:
        fail(f"parts must list 1-{MAX_PARTS} parts")
    entries = tuple(_part(entry, k, fail) for k, entry in enumerate(parts, start=1))
    manifest = Manifest(
        dataset=name,
        version=number,
        created_at=created,
        parts=entries,
        key_ref=key_ref,
        commitment=document["commitment"],
        mac=document["mac"],
        encrypted_schema=sealed_schema,
    )
    if manifest.to_bytes() != bytes(data):
        fail("not in canonical form (sorted keys, no whitespace, ASCII)")
    return manifest


def _part(entry: object, k: int, fail: Callable[[str], NoReturn]) -> PartEntry:
    if not isinstance(entry, dict) or not _PART_KEYS <= set(entry) <= _PART_KEYS | _PART_OPTIONAL:
        fail(f"part {k} must have the fields name, size, sha256 (and optionally rows)")
    name, size, digest, rows = entry["name"], entry["size"], entry["sha256"], entry.get("rows")
    if name != part_name(k):
        fail(f"part {k} must be named {part_name(k)}, not {_short(name)}")
    if not _count(size):
        fail(f"{name}: size is not a non-negative integer")
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        fail(f"{name}: sha256 is not 64 lowercase hex digits")
    if "rows" in entry and not _count(rows):
        fail(f"{name}: rows is not a non-negative integer")
    assert isinstance(size, int) and (rows is None or isinstance(rows, int))
    return PartEntry(name=name, size=size, sha256=digest, rows=rows)


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_VERSION


def _valid_time(text: str) -> bool:
    try:
        datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return False
    return True


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    document = dict(pairs)
    if len(document) != len(pairs):
        raise ValueError("duplicate key")
    return document


def _no_float(text: str) -> NoReturn:
    raise ValueError(f"non-integer number {text[:20]}")


def _short(value: object) -> str:
    text = repr(value) if not isinstance(value, BaseException) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."
