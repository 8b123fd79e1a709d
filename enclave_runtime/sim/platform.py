"""The simulated SGX platform: created on first use, per user, under the user's data directory.

It holds what a real SGX machine's hardware and Intel's PCS would: a root CA, a PCK Processor CA and the
platform's PCK certificate (with the SGX extension), a quoting enclave whose report, signed by the PCK key,
certifies an ECDSA attestation key, a TCB Signing certificate for collateral, and a platform secret that
sealing keys derive from. Everything a verifier sees is in Intel's formats; only the root differs, and the
verifier knows this root as *simulated*.

On disk: a 0700 directory, private keys 0600, and ``platform.json`` recording the SHA-256 of every file so
a damaged platform is reported by file name instead of producing wrong quotes. Creation writes a temporary
directory and renames it into place, so two processes creating the platform at once both end up using one
complete platform.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from teelab.enclave_runtime.sim import certs
from teelab.enclave_runtime.sim.collateral import Collateral, QeIdentityValues, issue_collateral
from teelab.enclave_runtime.sim.sgx_extension import PlatformTcb
from teelab.enclave_runtime.sim.sgx_structs import (
    ATTRIBUTE_INIT,
    ATTRIBUTE_MODE64BIT,
    ATTRIBUTE_PROVISIONKEY,
    QuotingEnclave,
    ReportBody,
    qe_report_data,
    raw_public_key,
    raw_signature,
)
from teelab.errors import PlatformError
from teelab.files import replace_atomically, write_private
from teelab.paths import data_dir
from teelab.timeutil import isoformat, parse_time, utcnow

FORMAT = 1
DIRNAME = "sim-platform"
METADATA = "platform.json"
COLLATERAL_CACHE = "collateral.json"

# The simulated platform's TCB. FMSPC 00EE1AB00000 is not a real Intel FMSPC, so collateral for a real
# platform can never match a simulated PCK certificate or the other way round.
DEFAULT_COMP_SVNS = (3, 3, 2, 2, 4, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0)
DEFAULT_PCESVN = 13
DEFAULT_FMSPC = bytes.fromhex("00ee1ab00000")
QE_SVN = 8
QE_PROD_ID = 1
QE_MRENCLAVE = hashlib.sha256(b"teelab simulated quoting enclave").digest()
QE_MRSIGNER = hashlib.sha256(b"teelab simulated quoting enclave signer").digest()
QE_AUTH_DATA = bytes(range(32))

# name -> private? Every file listed here is hashed into platform.json.
_KEYS = ("root-ca", "pck-ca", "pck", "tcb-signing", "attestation")
_CERTS = ("root-ca", "pck-ca", "pck", "tcb-signing")


def default_path() -> Path:
    return data_dir() / DIRNAME


def known_root_fingerprints() -> dict[str, str]:
    """Fingerprints of simulated roots on this machine (the default platform's, if it exists).

    Never creates a platform: verifiers call this to learn which roots are simulations.
    """
    path = default_path()
    try:
        meta = json.loads((path / METADATA).read_text())
        return {str(meta["root_fingerprint"]): f"teelab simulated platform ({path})"}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _damaged(path: Path, why: str) -> PlatformError:
    return PlatformError(
        f"the simulated platform file {path} is damaged: {why}",
        hint=f"remove {path.parent} (or run `teelab sim reset`) to create a fresh simulated platform",
    )


@dataclass(frozen=True)
class SimPlatform:
    path: Path
    created_at: datetime
    tcb: PlatformTcb
    root: certs.Issued
    pck_ca: certs.Issued
    pck: certs.Issued
    tcb_signing: certs.Issued
    quoting_enclave: QuotingEnclave
    secret: bytes

    # -- lifecycle -------------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path | None = None, *, now: datetime | None = None) -> SimPlatform:
        """Load the platform at ``path`` (default: the user's), creating it on first use."""
        path = path or default_path()
        if not (path / METADATA).exists():
            return cls.create(path, now=now or utcnow())
        return cls.load(path)

    @classmethod
    def create(cls, path: Path, *, now: datetime, tcb: PlatformTcb | None = None) -> SimPlatform:
        """Create the platform at ``path``; if another process wins the race, use its platform."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.parent / f".{path.name}.creating-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir(mode=0o700)
        try:
            _write_platform(tmp, now=now, tcb=tcb or _default_tcb())
            try:
                os.rename(tmp, path)
            except OSError:
                if not (path / METADATA).exists():
                    raise
                # Another process created it first: its platform is complete (rename is atomic).
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return cls.load(path)

    @classmethod
    def load(cls, path: Path) -> SimPlatform:
        meta_path = path / METADATA
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("format") != FORMAT:
                raise _damaged(meta_path, f"unknown format {meta.get('format')!r}")
            hashes_ = meta["files"]
            tcb_meta = meta["tcb"]
            tcb = PlatformTcb(
                ppid=bytes.fromhex(tcb_meta["ppid"]),
                comp_svns=tuple(int(v) for v in tcb_meta["comp_svns"]),
                pcesvn=int(tcb_meta["pcesvn"]),
                cpusvn=bytes.fromhex(tcb_meta["cpusvn"]),
                pceid=bytes.fromhex(tcb_meta["pceid"]),
                fmspc=bytes.fromhex(tcb_meta["fmspc"]),
            )
            created_at = parse_time(meta["created_at"])
        except PlatformError:
            raise
        except FileNotFoundError:
            raise PlatformError(
                f"no simulated platform at {path}", hint="it is created on first use"
            ) from None
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise _damaged(meta_path, f"unreadable metadata ({error})") from None

        def read(name: str) -> bytes:
            file = path / name
            try:
                data = file.read_bytes()
            except OSError as error:
                raise _damaged(file, error.strerror or "cannot be read") from None
            expected = hashes_.get(name)
            if not isinstance(expected, str) or not hmac.compare_digest(
                hashlib.sha256(data).hexdigest(), expected
            ):
                raise _damaged(file, "its content does not match the platform's record")
            return data

        def key(name: str) -> ec.EllipticCurvePrivateKey:
            file = f"{name}.key.pem"
            try:
                loaded = serialization.load_pem_private_key(read(file), password=None)
            except ValueError as error:
                raise _damaged(path / file, f"not a PEM private key ({error})") from None
            if not isinstance(loaded, ec.EllipticCurvePrivateKey):
                raise _damaged(path / file, "not an EC private key")
            return loaded

        def cert(name: str) -> x509.Certificate:
            file = f"{name}.pem"
            try:
                return x509.load_pem_x509_certificate(read(file))
            except ValueError as error:
                raise _damaged(path / file, f"not a PEM certificate ({error})") from None

        issued = {name: certs.Issued(cert(name), key(name)) for name in _CERTS}
        attestation_key = key("attestation")
        qe_report = read("qe-report.bin")
        qe_report_signature = read("qe-report.sig")
        secret = read("platform-secret.bin")
        if len(qe_report) != 384 or len(qe_report_signature) != 64 or len(secret) != 32:
            raise _damaged(path, "a QE report, its signature or the platform secret has the wrong size")
        qe = QuotingEnclave(
            attestation_key=attestation_key,
            qe_report=qe_report,
            qe_report_signature=qe_report_signature,
            qe_auth_data=QE_AUTH_DATA,
            pck_chain_pem=_chain_pem(issued["pck"], issued["pck-ca"], issued["root-ca"]),
            qe_svn=QE_SVN,
            pce_svn=tcb.pcesvn,
        )
        return cls(
            path=path,
            created_at=created_at,
            tcb=tcb,
            root=issued["root-ca"],
            pck_ca=issued["pck-ca"],
            pck=issued["pck"],
            tcb_signing=issued["tcb-signing"],
            quoting_enclave=qe,
            secret=secret,
        )

    # -- what the platform does ------------------------------------------------------------------------

    @property
    def root_fingerprint(self) -> str:
        return self.root.certificate.fingerprint(hashes.SHA256()).hex()

    @property
    def qe_identity(self) -> QeIdentityValues:
        return QeIdentityValues(mrsigner=QE_MRSIGNER, isv_prod_id=QE_PROD_ID, isv_svn=QE_SVN)

    def quote(self, body: ReportBody) -> bytes:
        return self.quoting_enclave.quote(body)

    def issue_collateral(self, at: datetime, *, revoked_pck_serials: tuple[int, ...] = ()) -> Collateral:
        """Fresh collateral issued at ``at`` (not stored)."""
        return issue_collateral(
            root=self.root,
            pck_ca=self.pck_ca,
            tcb_signing=self.tcb_signing,
            tcb=self.tcb,
            qe=self.qe_identity,
            issued=at,
            tcb_date=self.created_at.replace(hour=0, minute=0, second=0, microsecond=0),
            revoked_pck_serials=revoked_pck_serials,
        )

    def collateral(self, at: datetime | None = None) -> Collateral:
        """Collateral valid at ``at`` (default now), re-issued and stored when the stored set has expired.

        Intel's documents live about 30 days; the simulated platform plays PCS and issues new ones.
        """
        at = at or utcnow()
        cache = self.path / COLLATERAL_CACHE
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            bundle = json.loads(cache.read_text())
            issued = parse_time(json.loads(bundle["tcb_info"])["issueDate"])
            collateral = Collateral({str(k): str(v) for k, v in bundle.items()}, issued)
            if collateral.valid_at(at):
                return collateral
        collateral = self.issue_collateral(at)
        # Stored as the bundle verifiers read (dcap-qvl's QuoteCollateralV3 JSON), replaced atomically.
        replace_atomically(cache, collateral.to_json().encode(), mode=0o644)
        return collateral

    def sealing_key(self, identity: bytes, *, label: bytes = b"") -> bytes:
        """A 256-bit key for ``identity`` (an encoded sealing identity); distinct per identity and label."""
        return HKDF(
            algorithm=hashes.SHA256(), length=32, salt=b"teelab/sim/seal/v1", info=identity + b"\x00" + label
        ).derive(self.secret)


def _default_tcb() -> PlatformTcb:
    return PlatformTcb(
        ppid=secrets.token_bytes(16),
        comp_svns=DEFAULT_COMP_SVNS,
        pcesvn=DEFAULT_PCESVN,
        cpusvn=bytes(DEFAULT_COMP_SVNS),
        pceid=bytes(2),
        fmspc=DEFAULT_FMSPC,
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _chain_pem(*issued: certs.Issued) -> bytes:
    return b"".join(i.certificate.public_bytes(serialization.Encoding.PEM) for i in issued)


def _write_platform(folder: Path, *, now: datetime, tcb: PlatformTcb) -> None:
    root = certs.issue_root(now)
    pck_ca = certs.issue_pck_ca(root, now)
    pck = certs.issue_pck(pck_ca, tcb, now)
    tcb_signing = certs.issue_tcb_signing(root, now)
    attestation = certs.new_key()
    qe_report = ReportBody(
        cpusvn=tcb.cpusvn,
        mrenclave=QE_MRENCLAVE,
        mrsigner=QE_MRSIGNER,
        isv_prod_id=QE_PROD_ID,
        isv_svn=QE_SVN,
        report_data=qe_report_data(raw_public_key(attestation.public_key()), QE_AUTH_DATA),
        attributes_flags=ATTRIBUTE_INIT | ATTRIBUTE_MODE64BIT | ATTRIBUTE_PROVISIONKEY,
    ).pack()
    files: dict[str, bytes] = {
        "root-ca.key.pem": _pem_key(root.key),
        "pck-ca.key.pem": _pem_key(pck_ca.key),
        "pck.key.pem": _pem_key(pck.key),
        "tcb-signing.key.pem": _pem_key(tcb_signing.key),
        "attestation.key.pem": _pem_key(attestation),
        "platform-secret.bin": secrets.token_bytes(32),
        "root-ca.pem": _chain_pem(root),
        "pck-ca.pem": _chain_pem(pck_ca),
        "pck.pem": _chain_pem(pck),
        "tcb-signing.pem": _chain_pem(tcb_signing),
        "qe-report.bin": qe_report,
        "qe-report.sig": raw_signature(pck.key, qe_report),
    }
    for name, data in files.items():
        write_private(folder / name, data)
    meta = {
        "format": FORMAT,
        "created_at": isoformat(now),
        "root_fingerprint": root.certificate.fingerprint(hashes.SHA256()).hex(),
        "tcb": {
            "ppid": tcb.ppid.hex(),
            "comp_svns": list(tcb.comp_svns),
            "pcesvn": tcb.pcesvn,
            "cpusvn": tcb.cpusvn.hex(),
            "pceid": tcb.pceid.hex(),
            "fmspc": tcb.fmspc.hex(),
        },
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
    }
    write_private(folder / METADATA, json.dumps(meta, indent=1).encode())
