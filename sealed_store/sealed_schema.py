"""The manifest's optional ``schema`` field: the Arrow schema, encrypted under a key derived from the DEK.

A Dask graph needs the partitions' empty frame (``meta``) before any task runs. Without this field the kernel
decrypts part 1's footer to learn it, which means opening a part (fetching its tail and decrypting its
footer) just to build a graph. Column names and types can be confidential, so the schema cannot sit in the
manifest in clear: the host serves the manifest and reads it. It is therefore sealed the same way as
everything else — AES-256-GCM under ``format.schema_key(dek)``, with ``format.schema_aad(dataset, version)``
as associated data — and the host learns only its length, which the parts' encrypted footers (each holding
the same schema) already disclose.

Value in the manifest: standard base64 (RFC 4648 §4, padded) of ``nonce (12 random bytes) ‖ ciphertext ‖
tag (16 bytes)``; the plaintext is ``pyarrow.Schema.serialize()`` (an Arrow IPC schema message, including the
schema's key-value metadata such as pandas'). The manifest MAC covers the field like every other one, and
:meth:`~teelab.sealed_store.manifest.Manifest.arrow_schema` decrypts only after the MAC verified.

pyarrow is imported only where a schema is (de)serialized: the parser and the CLI's listings do not need it.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from teelab.sealed_store.errors import ManifestTamperedError
from teelab.sealed_store.format import schema_aad, schema_key

if TYPE_CHECKING:
    import pyarrow as pa

NONCE_BYTES = 12
TAG_BYTES = 16
# The serialized schema (about 100 bytes a column with pandas metadata: ~40 000 columns). A wider table's
# manifest goes without the field, and readers take the schema from part 1's footer as before.
MAX_SCHEMA_BYTES = 4 * 1024 * 1024
MAX_SCHEMA_TEXT = 4 * -(-(NONCE_BYTES + MAX_SCHEMA_BYTES + TAG_BYTES) // 3)


def encrypt_schema(dek: bytes, dataset: str, version: int, schema: pa.Schema) -> str | None:
    """The manifest's ``schema`` value for ``schema``; ``None`` if it is too large to go into a manifest."""
    plain = schema.serialize().to_pybytes()
    if len(plain) > MAX_SCHEMA_BYTES:
        return None
    nonce = secrets.token_bytes(NONCE_BYTES)
    sealed = AESGCM(schema_key(dek)).encrypt(nonce, plain, schema_aad(dataset, version))
    return base64.b64encode(nonce + sealed).decode("ascii")


def schema_text_problem(value: object) -> str | None:
    """What is wrong with a manifest's ``schema`` value, or ``None`` when it is canonical base64 of a
    ciphertext of the allowed size. Linear in the value's length; decrypts nothing (there is no key here)."""
    if not isinstance(value, str):
        return "schema is not a string"
    if len(value) > MAX_SCHEMA_TEXT:
        return f"schema is longer than {MAX_SCHEMA_TEXT} characters"
    if not value.isascii():
        return "schema is not padded standard base64"
    try:  # binascii's strict mode: one C pass (Python's regex check took 10x longer on a maximal value)
        raw = binascii.a2b_base64(value.encode("ascii"), strict_mode=True)
    except (binascii.Error, ValueError):
        return "schema is not padded standard base64"
    if binascii.b2a_base64(raw, newline=False).decode("ascii") != value:  # e.g. stray bits before padding
        return "schema is not canonical base64"
    if len(raw) <= NONCE_BYTES + TAG_BYTES:
        return "schema is too short to hold an encrypted schema"
    return None


def decrypt_schema(dek: bytes, dataset: str, version: int, text: str) -> pa.Schema:
    """Open a ``schema`` value the parser accepted and the MAC authenticated.

    The MAC already proves the DEK's holder wrote it, so a failure here means a broken or malicious seal (or a
    blob copied from another dataset or version and re-MACed by someone holding this DEK): refused.
    """
    import pyarrow as pa

    def refuse(detail: str) -> ManifestTamperedError:
        return ManifestTamperedError(
            f"the manifest's encrypted schema {detail}", dataset=dataset, version=version
        )

    problem = schema_text_problem(text)  # a Manifest built in code, not parsed, may hold anything
    if problem is not None:
        raise refuse(f"is malformed: {problem}")
    raw = base64.b64decode(text)
    nonce, sealed = raw[:NONCE_BYTES], raw[NONCE_BYTES:]
    try:
        plain = AESGCM(schema_key(dek)).decrypt(nonce, sealed, schema_aad(dataset, version))
    except InvalidTag:
        raise refuse(
            "does not decrypt for this dataset and version (sealed for another, or altered)"
        ) from None
    try:
        schema = pa.ipc.read_schema(pa.py_buffer(plain))
    except Exception as error:  # pyarrow reports malformed IPC messages in many ways
        lines = str(error).strip().splitlines()
        raise refuse(
            f"is not an Arrow schema ({lines[0][:200] if lines else type(error).__name__})"
        ) from None
    return schema
