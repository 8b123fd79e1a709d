"""The certificate table of an extended SNP report (GHCB spec §4.1.8.1; also the host's ``auxblob``).

The table is a run of 24-byte entries — GUID (16 bytes, RFC 4122 byte order), offset u32 LE, length u32 LE —
closed by an all-zero entry; offsets count from the start of the table and point past the entries. The
GUIDs are AMD's (virtee/sev ``CertType``, AMD's sev-guest ``cert-table.c``, go-sev-guest ``abi``); the
byte order is what go-sev-guest and AMD's tools use (``uuid.Parse`` / libuuid ``uuid_parse`` bytes).
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

from teelab.errors import VerificationError

VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
VLEK_GUID = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
ASK_GUID = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
ARK_GUID = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
# The host's CRL entry; not a certificate, so it is recognised and left alone.
CRL_GUID = uuid.UUID("92f81bc3-5811-4d3d-97ff-d19f88dc67ea")

# GUID -> the certificate role the entry claims. The table has no ASVK GUID: hosts put a VLEK's ASVK
# under the ASK GUID, so "ask" stands for either intermediate.
GUID_ROLES = {VCEK_GUID: "vcek", VLEK_GUID: "vlek", ASK_GUID: "ask", ARK_GUID: "ark"}

ENTRY_SIZE = 24
# Real tables hold three or four entries; the bound keeps a hostile table from costing anything.
MAX_ENTRIES = 64

TABLE_CHECK = "snp_cert_table"


@dataclass(frozen=True)
class CertTableEntry:
    guid: uuid.UUID
    data: bytes

    @property
    def role(self) -> str | None:
        """The role the GUID names, or None for an entry that is not one of AMD's certificates."""
        return GUID_ROLES.get(self.guid)


def _fail(detail: str) -> VerificationError:
    return VerificationError(
        TABLE_CHECK, detail, hint="the host's certificate table is malformed; reload it with snphost/snpguest"
    )


def parse_cert_table(blob: bytes) -> list[CertTableEntry]:
    """The entries of a certificate table, in order. Raises VerificationError(check="snp_cert_table")."""
    headers: list[tuple[uuid.UUID, int, int]] = []
    pos = 0
    while True:
        if pos + ENTRY_SIZE > len(blob):
            raise _fail(f"the table has no all-zero terminating entry within its {len(blob)} bytes")
        guid_bytes = blob[pos : pos + 16]
        offset, length = struct.unpack_from("<II", blob, pos + 16)
        pos += ENTRY_SIZE
        if offset == 0 and length == 0 and guid_bytes == bytes(16):
            break
        if len(headers) == MAX_ENTRIES:
            raise _fail(f"more than {MAX_ENTRIES} entries")
        headers.append((uuid.UUID(bytes=guid_bytes), offset, length))
    if not headers:
        raise _fail("the table is empty")

    entries: list[CertTableEntry] = []
    seen: set[uuid.UUID] = set()
    for index, (guid, offset, length) in enumerate(headers):
        if guid in seen and guid in GUID_ROLES:
            raise _fail(f"entry {index}: a second {GUID_ROLES[guid].upper()} entry ({guid})")
        seen.add(guid)
        if offset < pos:
            raise _fail(
                f"entry {index} ({guid}) points at offset {offset}, inside the table's {pos}-byte header"
            )
        if offset + length > len(blob):
            raise _fail(f"entry {index} ({guid}) ends at {offset + length}, past the {len(blob)}-byte blob")
        if length == 0 and guid in GUID_ROLES:
            raise _fail(f"entry {index}: the {GUID_ROLES[guid].upper()} entry is empty")
        entries.append(CertTableEntry(guid, blob[offset : offset + length]))
    return entries


def build_cert_table(entries: list[tuple[uuid.UUID, bytes]]) -> bytes:
    """A table holding ``entries`` in order — what a host writes; used to hand certificates to a guest."""
    header_size = (len(entries) + 1) * ENTRY_SIZE
    header = bytearray()
    body = bytearray()
    for guid, data in entries:
        header += guid.bytes + struct.pack("<II", header_size + len(body), len(data))
        body += data
    return bytes(header) + bytes(ENTRY_SIZE) + bytes(body)
