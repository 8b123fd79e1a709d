"""Gateway certificates the operator no longer admits (``teelab host serve --revoked FILE``).

The file holds SHA-256 certificate fingerprints, one per line (hex with or without colons; the output of
``openssl x509 -noout -fingerprint -sha256`` as it is; ``#`` comments), and/or PEM certificate revocation lists
signed by the client CA (``openssl ca -gencrl``). It is re-read whenever it changes, so no restart is needed to
shut out a stolen gateway key. A file that cannot be read or parsed, or a CRL not signed by the client CA,
revokes everything (fails closed) until it is fixed: a half-written file must not readmit anyone. A CRL past its
next update still revokes what it lists.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from teelab.errors import ConfigError

log = logging.getLogger("teelab.host")
_CRL = re.compile(r"-----BEGIN X509 CRL-----.*?-----END X509 CRL-----", re.S)
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class Revocations:
    fingerprints: frozenset[str]
    serials: frozenset[tuple[bytes, int]]  # (issuer name, DER; serial number) from CRLs

    def covers(self, certificate: x509.Certificate) -> bool:
        digest = hashlib.sha256(certificate.public_bytes(Encoding.DER)).hexdigest()
        return (
            digest in self.fingerprints
            or (certificate.issuer.public_bytes(), certificate.serial_number) in self.serials
        )


def parse_revocations(text: str, cas: list[x509.Certificate]) -> Revocations:
    """The revocations ``text`` lists; ConfigError naming what is wrong with it."""
    serials: set[tuple[bytes, int]] = set()
    for block in _CRL.findall(text):
        try:
            crl = x509.load_pem_x509_crl(block.encode())
        except ValueError:
            raise ConfigError("a CRL in the revocation file does not parse") from None
        issuer = next((ca for ca in cas if ca.subject == crl.issuer), None)
        if issuer is None or not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
            raise ConfigError(f"a CRL in the revocation file is not signed by the client CA ({crl.issuer})")
        serials.update((crl.issuer.public_bytes(), entry.serial_number) for entry in crl)
    fingerprints: set[str] = set()
    for number, line in enumerate(_CRL.sub("", text).splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        value = line.rpartition("=")[2].replace(":", "").strip().lower()
        if len(value) != 64 or not set(value) <= _HEX:
            raise ConfigError(f"line {number} of the revocation file is not a SHA-256 fingerprint")
        fingerprints.add(value)
    return Revocations(frozenset(fingerprints), frozenset(serials))


class RevokedCertificates:
    def __init__(self, path: Path, client_ca: bytes = b"") -> None:
        self.path = path
        try:
            self._cas = x509.load_pem_x509_certificates(client_ca) if client_ca else []
        except ValueError:
            raise ConfigError("the client CA file holds no PEM certificate") from None
        self._seen: tuple[int, int, int] | None = None
        self._current: Revocations | None = None
        self._lock = threading.Lock()
        try:  # a broken file at start is the operator's error to see now
            self._current = parse_revocations(path.read_text(), self._cas)
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"cannot read the revocation file {path}: {error}") from None
        except ConfigError as error:
            raise ConfigError(f"{path}: {error.message}") from None
        self._seen = self._stamp()

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            info = self.path.stat()
        except OSError:
            return None
        return (info.st_mtime_ns, info.st_size, info.st_ino)

    def current(self) -> Revocations | None:
        """What is revoked now; None while the file is unreadable or broken (everyone is refused)."""
        with self._lock:
            stamp = self._stamp()
            if stamp != self._seen or stamp is None:
                self._seen = stamp
                try:
                    self._current = parse_revocations(self.path.read_text(), self._cas)
                except (OSError, UnicodeDecodeError, ConfigError) as error:
                    log.error(
                        "teelab host agent: refusing every certificate until %s is fixed: %s",
                        self.path,
                        error,
                    )
                    self._current = None
            return self._current

    def revoked(self, pem: bytes) -> bool:
        listed = self.current()
        if listed is None:
            return True
        try:
            return listed.covers(x509.load_pem_x509_certificate(pem))
        except ValueError:
            return True
