"""Inside a Gramine SGX enclave: evidence and sealing keys through the ``/dev/attestation`` pseudo-files.

Evidence: check ``attestation_type`` is ``dcap``, write exactly 64 bytes to ``user_report_data``, read
``quote`` (Gramine asks the Quoting Enclave through aesmd). The quote is checked to carry the report data just
written before it is returned: a mismatch means another writer interleaved, and such evidence would only be
refused by the gateway later with a less clear reason. Gramine's interface is per process and not thread-safe,
so every call holds one process-wide lock.

Sealing: ``keys/_sgx_mrenclave`` (or ``_sgx_mrsigner``) is 16 bytes from EGETKEY; it is never used raw — the
same key also encrypts the image's ``{tee_state}`` mount, and Gramine's documentation requires a KDF for any
second use — so callers get HKDF-SHA256 of it, 32 bytes, separated by policy and label.

Every path is under a root prefix, so tests drive this against a stand-in tree.
"""

from __future__ import annotations

import os
import struct
import threading
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from teelab.enclave_runtime.backend import (
    REPORT_DATA_SIZE,
    Evidence,
    EvidenceKind,
    SealPolicy,
    TeeRuntime,
    check_report_data,
)
from teelab.enclave_runtime.controller import pinned_controller
from teelab.errors import EvidenceError

ATTESTATION_DIR = "/dev/attestation"
SEAL_KEY_SIZE = 16
_LOCK = threading.Lock()
_KEY_FILES = {SealPolicy.MRENCLAVE: "_sgx_mrenclave", SealPolicy.MRSIGNER: "_sgx_mrsigner"}
# Nothing legitimate is larger (a DCAP quote with its PCK chain is ~5 KB; Gramine's buffer is 8 KB).
_MAX_QUOTE = 64 * 1024


def sgx_quote_report_data(quote: bytes) -> bytes | None:
    """REPORTDATA of an SGX quote v3/v4 (body at 48) or v5 (body at 54), or None if it is not one."""
    if len(quote) < 48:
        return None
    version, key_type, tee_type = struct.unpack_from("<HHI", quote)
    if key_type != 2 or (version >= 4 and tee_type != 0):
        return None
    body = {3: 48, 4: 48, 5: 54}.get(version)
    if body is None or len(quote) < body + 384:
        return None
    return quote[body + 320 : body + 384]


def derive_sealing_key(raw: bytes, *, backend: str, policy: SealPolicy, label: bytes) -> bytes:
    """32 bytes from a hardware sealing key, distinct per backend, policy and label; the raw key stays unused."""
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=f"teelab/{backend}/seal/v1".encode(),
        info=policy.value.encode() + b"\x00" + label,
    ).derive(raw)


class GramineRuntime(TeeRuntime):
    backend = "gramine"

    def __init__(self, root: Path = Path("/")) -> None:
        self.dir = root / ATTESTATION_DIR.lstrip("/")

    @classmethod
    def detect(cls, root: Path = Path("/")) -> bool:
        """Gramine's LibOS provides ``/dev/attestation`` (only ``keys/`` under gramine-direct)."""
        return (root / ATTESTATION_DIR.lstrip("/")).is_dir()

    def _read(self, name: str) -> bytes:
        with open(self.dir / name, "rb", buffering=0) as handle:
            return handle.read(_MAX_QUOTE + 1)

    def attestation_type(self) -> str:
        if not (self.dir / "attestation_type").exists():
            if (self.dir / "keys").is_dir():
                raise EvidenceError(
                    "running under gramine-direct: there is no SGX enclave and no attestation "
                    f"({self.dir}/attestation_type does not exist)",
                    hint="gramine-direct is for development only; launch with gramine-sgx on an SGX machine",
                )
            raise EvidenceError(
                f"{self.dir} has no attestation_type: this is not Gramine's attestation interface"
            )
        return self._read("attestation_type").decode("ascii", "replace").strip()

    def evidence(self, report_data: bytes) -> Evidence:
        check_report_data(report_data)
        with _LOCK:
            kind = self.attestation_type()
            if kind != "dcap":
                raise EvidenceError(
                    f"the enclave's remote attestation is {kind!r}, not 'dcap': it cannot produce a quote",
                    hint='build the image with sgx.remote_attestation = "dcap" (teelab\'s template does)',
                )
            if not (self.dir / "quote").exists():
                raise EvidenceError(f"{self.dir}/quote does not exist although attestation_type is dcap")
            try:
                with open(self.dir / "user_report_data", "wb", buffering=0) as handle:
                    written = handle.write(report_data)
                if written != REPORT_DATA_SIZE:
                    raise EvidenceError(f"Gramine accepted {written} of the 64 report-data bytes")
                quote = self._read("quote")
            except OSError as error:
                raise EvidenceError(
                    f"Gramine could not produce a quote: {error.strerror or error}",
                    hint="on the host: is aesmd running and the DCAP quote provider configured? "
                    "(`teelab doctor`)",
                ) from None
        if not quote or len(quote) > _MAX_QUOTE:
            raise EvidenceError(f"Gramine returned a {len(quote)}-byte quote")
        carried = sgx_quote_report_data(quote)
        if carried is None:
            raise EvidenceError(
                f"Gramine returned something that is not an SGX quote (starts {quote[:8].hex()})"
            )
        if carried != report_data:
            raise EvidenceError(
                "the quote carries other report data than was just written (another writer interleaved?); "
                "refusing to send it"
            )
        return Evidence(EvidenceKind.SGX_QUOTE, quote)

    def controller(self) -> bytes | None:
        # Gramine has no KSS: the measured manifest's loader.env pins the controller ("measurement" binding),
        # and this process's environment is that manifest's (the launch refuses an image that lets the
        # variable in from the host).
        return pinned_controller(os.environ.items())

    def sealing_key(self, policy: SealPolicy = SealPolicy.MRENCLAVE, *, label: bytes = b"") -> bytes:
        path = self.dir / "keys" / _KEY_FILES[policy]
        with _LOCK:
            try:
                raw = self._read(f"keys/{_KEY_FILES[policy]}")
            except FileNotFoundError:
                raise EvidenceError(
                    f"{path} does not exist: no SGX sealing key here (gramine-direct has none)"
                ) from None
            except OSError as error:
                raise EvidenceError(f"cannot read the sealing key {path}: {error.strerror}") from None
        if len(raw) != SEAL_KEY_SIZE:
            raise EvidenceError(f"{path} gave {len(raw)} bytes; an SGX sealing key is {SEAL_KEY_SIZE}")
        return derive_sealing_key(raw, backend=self.backend, policy=policy, label=label)
