"""Verification logic that no public vector exercises, on a synthetic DCAP platform built here.

The platform (root, PCK CA, PCK certificate with an SGX extension, TCB signing certificate, attestation key)
is made with ``cryptography`` and pinned as a *simulated* root, exactly like teelab's simulated platform. It
lets the tests revoke certificates, move SVNs and statuses, and build every quote layout.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from teelab.errors import VerificationError
from teelab.gateway.anchors import TrustAnchors
from teelab.gateway.checks import CheckLog
from teelab.gateway.dcap import IntelCollateral, verify_intel_quote
from teelab.gateway.dcap import tcb as tcb_rules
from teelab.gateway.dcap.tcbinfo import TcbLevel
from teelab.gateway.verified import VerifiedEvidence

NOW = datetime(2030, 1, 15, tzinfo=UTC)
SGX_EXT = "1.2.840.113741.1.13.1"
QE_MRSIGNER = bytes.fromhex("8c4f5775d796503e96137f77c68a829a0056ac8ded70140b081b094490c57bff")
FMSPC = bytes.fromhex("00906ea10000")
PCK_SVNS = (4, 4, 2, 2, 5, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0)
PCESVN = 13


# -- DER for the SGX extension ---------------------------------------------------------------------


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(body)]) + body + content


def _oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return _tlv(0x06, bytes(out))


def _int(value: int) -> bytes:
    return _tlv(0x02, value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big"))


def _pair(oid: str, value: bytes) -> bytes:
    return _tlv(0x30, _oid(oid) + value)


def sgx_extension(svns: tuple[int, ...], pcesvn: int, fmspc: bytes, sgx_type: int = 0) -> bytes:
    tcb = b"".join(_pair(f"{SGX_EXT}.2.{i + 1}", _int(v)) for i, v in enumerate(svns))
    tcb += _pair(f"{SGX_EXT}.2.17", _int(pcesvn)) + _pair(f"{SGX_EXT}.2.18", _tlv(0x04, bytes(svns)))
    return _tlv(
        0x30,
        _pair(f"{SGX_EXT}.1", _tlv(0x04, b"P" * 16))
        + _pair(f"{SGX_EXT}.2", _tlv(0x30, tcb))
        + _pair(f"{SGX_EXT}.3", _tlv(0x04, b"\x00\x00"))
        + _pair(f"{SGX_EXT}.4", _tlv(0x04, fmspc))
        + _pair(f"{SGX_EXT}.5", _tlv(0x0A, bytes([sgx_type]))),
    )


# -- the platform ----------------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "teelab test"),
        ]
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    serial: int,
    extension: bytes | None = None,
    not_before: datetime = NOW - timedelta(days=365),
    not_after: datetime = NOW + timedelta(days=3650),
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if extension is not None:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX_EXT), extension), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _raw_sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _pem(*certs: x509.Certificate) -> str:
    return "".join(c.public_bytes(Encoding.PEM).decode() for c in certs)


def _level(
    status: str, svns: tuple[int, ...] = PCK_SVNS, pcesvn: int = PCESVN, **extra: Any
) -> dict[str, Any]:
    tcb: dict[str, Any] = {"sgxtcbcomponents": [{"svn": v} for v in svns], "pcesvn": pcesvn}
    if "tdx" in extra:
        tcb["tdxtcbcomponents"] = [{"svn": v} for v in extra.pop("tdx")]
    level = {"tcb": tcb, "tcbDate": "2029-01-01T00:00:00Z", "tcbStatus": status}
    level.update(extra)
    return level


def _isv(svn: int, status: str, **extra: Any) -> dict[str, Any]:
    return {"tcb": {"isvsvn": svn}, "tcbDate": "2029-01-01T00:00:00Z", "tcbStatus": status, **extra}


@dataclass
class Platform:
    root_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    ca_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    pck_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    tcb_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    att_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    ca_cn: str = "Test SGX PCK Processor CA"
    shared_root: x509.Certificate | None = None  # another platform's root, when root_key is that platform's

    def __post_init__(self) -> None:
        self.root = self.shared_root or _cert(
            "Test SGX Root CA", self.root_key, "Test SGX Root CA", self.root_key, ca=True, serial=1
        )
        self.ca = _cert(self.ca_cn, self.ca_key, "Test SGX Root CA", self.root_key, ca=True, serial=2)
        self.tcb_signer = _cert(
            "Test SGX TCB Signing", self.tcb_key, "Test SGX Root CA", self.root_key, ca=False, serial=3
        )
        self.pck = self.pck_cert()
        self.anchors = TrustAnchors(intel_roots={}).with_simulated_root(
            self.root.fingerprint(hashes.SHA256()).hex(), "test platform"
        )

    def pck_cert(self, svns: tuple[int, ...] = PCK_SVNS, pcesvn: int = PCESVN, **kw: Any) -> x509.Certificate:
        return _cert(
            "Test SGX PCK Certificate",
            self.pck_key,
            self.ca_cn,
            self.ca_key,
            ca=False,
            serial=kw.pop("serial", 0x1234),
            extension=sgx_extension(svns, pcesvn, kw.pop("fmspc", FMSPC)),
            **kw,
        )

    # -- quotes --

    def qe_report(
        self, auth: bytes, *, svn: int, prod: int, misc: bytes, attrs: bytes, mrsigner: bytes
    ) -> bytes:
        report = bytearray(384)
        report[16:20] = misc
        report[48:64] = attrs
        report[128:160] = mrsigner
        report[256:260] = struct.pack("<HH", prod, svn)
        att = self.att_key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)[1:]
        report[320:352] = hashlib.sha256(att + auth).digest()
        return bytes(report)

    def quote(
        self,
        *,
        version: int = 3,
        tee: str = "sgx",
        tee_tcb_svn: bytes = bytes([5, 1, 3]) + bytes(13),
        td15: bool = False,
        qe_svn: int = 8,
        qe_prod: int = 1,
        qe_misc: bytes = bytes(4),
        qe_attrs: bytes = bytes.fromhex("11000000000000000000000000000000"),
        qe_mrsigner: bytes = QE_MRSIGNER,
        auth: bytes = b"auth-data",
        chain: str | None = None,
        mrsignerseam: bytes = bytes(48),
        seam_attributes: bytes = bytes(8),
        debug: bool = False,
        trailing: bytes = b"",
        config_id: bytes = bytes(64),
        mrconfigid: bytes = bytes(48),
    ) -> bytes:
        tdx = tee == "tdx"
        header = struct.pack(
            "<HHIHH16s20s",
            version,
            2,
            0x81 if tdx else 0,
            0,
            0,
            bytes.fromhex("939a7233f79c4ca9940a0db3957f0607"),
            b"u" * 20,
        )
        if tdx:
            body = bytearray(648 if td15 else 584)
            body[0:16] = tee_tcb_svn
            body[64:112] = mrsignerseam
            body[112:120] = seam_attributes
            body[120] = 1 if debug else 0
            body[136:184] = b"T" * 48
            body[184:232] = mrconfigid
            body[520:584] = b"R" * 64
        else:
            body = bytearray(384)
            body[48] = 0x07 if debug else 0x05
            body[64:96] = b"E" * 32
            body[128:160] = b"S" * 32
            body[192:256] = config_id
            body[256:260] = struct.pack("<HH", 7, 3)
            body[320:384] = b"R" * 64
        if version == 5:
            body_type = (3 if td15 else 2) if tdx else 1
            signed = header + struct.pack("<HI", body_type, len(body)) + bytes(body)
        else:
            signed = header + bytes(body)
        qe = self.qe_report(
            auth, svn=qe_svn, prod=qe_prod, misc=qe_misc, attrs=qe_attrs, mrsigner=qe_mrsigner
        )
        pem = (chain if chain is not None else _pem(self.pck, self.ca, self.root)).encode() + b"\0"
        inner = (
            qe
            + _raw_sign(self.pck_key, qe)
            + struct.pack("<H", len(auth))
            + auth
            + struct.pack("<HI", 5, len(pem))
            + pem
        )
        att = self.att_key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)[1:]
        if version == 3:
            sig_rest = inner
        else:
            sig_rest = struct.pack("<HI", 6, len(inner)) + inner
        sig_data = _raw_sign(self.att_key, signed) + att + sig_rest
        return signed + struct.pack("<I", len(sig_data)) + sig_data + trailing

    # -- collateral --

    def collateral(
        self,
        *,
        tee: str = "sgx",
        levels: list[dict[str, Any]] | None = None,
        qe_levels: list[dict[str, Any]] | None = None,
        modules: list[dict[str, Any]] | None = None,
        version: int = 3,
        qe_misc: tuple[str, str] = ("00000000", "FFFFFFFF"),
        qe_attrs: tuple[str, str] = ("11000000000000000000000000000000", "FBFFFFFFFFFFFFFF0000000000000000"),
        pck_revoked: tuple[int, ...] = (),
        root_revoked: tuple[int, ...] = (),
        signer: x509.Certificate | None = None,
        issue: datetime = NOW - timedelta(days=5),
    ) -> IntelCollateral:
        tdx = tee == "tdx"
        info: dict[str, Any] = (
            {"id": "TDX" if tdx else "SGX", "version": version} if version == 3 else {"version": 2}
        )
        info.update(
            issueDate=issue.strftime("%Y-%m-%dT%H:%M:%SZ"),
            nextUpdate=(issue + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            fmspc=FMSPC.hex().upper(),
            pceId="0000",
            tcbType=0,
            tcbEvaluationDataNumber=20,
        )
        if tdx:
            info["tdxModule"] = {"mrsigner": "00" * 48, "attributes": "00" * 8, "attributesMask": "FF" * 8}
            if modules is not None:
                info["tdxModuleIdentities"] = modules
        info["tcbLevels"] = (
            levels
            if levels is not None
            else [_level("UpToDate", tdx=[0] * 16) if tdx else _level("UpToDate")]
        )
        if version == 2:
            for level in info["tcbLevels"]:
                comps = level["tcb"].pop("sgxtcbcomponents")
                for i, comp in enumerate(comps, 1):
                    level["tcb"][f"sgxtcbcomp{i:02d}svn"] = comp["svn"]
        identity = {
            "id": "TD_QE" if tdx else "QE",
            "version": 2,
            "issueDate": info["issueDate"],
            "nextUpdate": info["nextUpdate"],
            "tcbEvaluationDataNumber": 20,
            "miscselect": qe_misc[0],
            "miscselectMask": qe_misc[1],
            "attributes": qe_attrs[0],
            "attributesMask": qe_attrs[1],
            "mrsigner": QE_MRSIGNER.hex().upper(),
            "isvprodid": 2 if tdx else 1,
            "tcbLevels": qe_levels if qe_levels is not None else [_isv(8, "UpToDate"), _isv(6, "OutOfDate")],
        }
        tcb_text = json.dumps(info, separators=(",", ":"))
        qe_text = json.dumps(identity, separators=(",", ":"))
        signing = _pem(signer or self.tcb_signer, self.root)
        return IntelCollateral.from_bundle_json(
            json.dumps(
                {
                    "pck_crl_issuer_chain": _pem(self.ca, self.root),
                    "root_ca_crl": self.crl(self.root_key, "Test SGX Root CA", root_revoked).hex(),
                    "pck_crl": self.crl(self.ca_key, self.ca_cn, pck_revoked).hex(),
                    "tcb_info_issuer_chain": signing,
                    "tcb_info": tcb_text,
                    "tcb_info_signature": _raw_sign(self.tcb_key, tcb_text.encode()).hex(),
                    "qe_identity_issuer_chain": signing,
                    "qe_identity": qe_text,
                    "qe_identity_signature": _raw_sign(self.tcb_key, qe_text.encode()).hex(),
                }
            )
        )

    def crl(self, key: ec.EllipticCurvePrivateKey, issuer: str, revoked: tuple[int, ...]) -> bytes:
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(_name(issuer))
            .last_update(NOW - timedelta(days=2))
            .next_update(NOW + timedelta(days=28))
        )
        for serial in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(NOW - timedelta(days=3))
                .build()
            )
        return builder.sign(key, hashes.SHA256()).public_bytes(Encoding.DER)

    def verify(self, quote: bytes, collateral: IntelCollateral, **kw: Any) -> VerifiedEvidence:
        return verify_intel_quote(
            quote, collateral, at=kw.pop("at", NOW), anchors=kw.pop("anchors", self.anchors), **kw
        )

    def reject(self, quote: bytes, collateral: IntelCollateral, **kw: Any) -> VerificationError:
        log = CheckLog()
        with pytest.raises(VerificationError) as caught:
            self.verify(quote, collateral, log=log, **kw)
        assert log.checks[-1].name == caught.value.check and not log.checks[-1].passed
        return caught.value


@pytest.fixture(scope="module")
def platform() -> Platform:
    return Platform()


@pytest.fixture(scope="module")
def platform_ca(platform: Platform) -> Platform:
    """A second platform under the same root whose PCK certificate comes from a "Platform CA"."""
    return Platform(root_key=platform.root_key, shared_root=platform.root, ca_cn="Test SGX PCK Platform CA")


# -- the simulated platform end to end -------------------------------------------------------------


@pytest.mark.parametrize("version", [3, 4, 5])
def test_sgx_quote_versions_verify_as_simulated(platform: Platform, version: int) -> None:
    evidence = platform.verify(platform.quote(version=version), platform.collateral())
    assert evidence.simulated is True
    assert evidence.tee == "sgx"
    assert evidence.tcb_status == "UpToDate"
    assert evidence.claims["mrenclave"] == (b"E" * 32).hex()
    assert evidence.claims["isv_prod_id"] == 7 and evidence.claims["isv_svn"] == 3
    assert evidence.claims["debug"] is False
    assert evidence.details["quote_version"] == version


@pytest.mark.parametrize(("version", "td15"), [(4, False), (5, False), (5, True)])
def test_tdx_quote_layouts_verify(platform: Platform, version: int, td15: bool) -> None:
    evidence = platform.verify(
        platform.quote(version=version, tee="tdx", td15=td15, debug=True, qe_prod=2),
        platform.collateral(
            tee="tdx",
            modules=[
                {
                    "id": "TDX_01",
                    "mrsigner": "00" * 48,
                    "attributes": "00" * 8,
                    "attributesMask": "FF" * 8,
                    "tcbLevels": [_isv(5, "UpToDate")],
                }
            ],
        ),
    )
    assert evidence.tee == "tdx" and evidence.tcb_status == "UpToDate"
    assert evidence.claims["debug"] is True
    assert evidence.claims["mrtd"] == (b"T" * 48).hex()
    assert ("tee_tcb_svn2" in evidence.details) is td15


def test_sgx_debug_claim(platform: Platform) -> None:
    assert platform.verify(platform.quote(debug=True), platform.collateral()).claims["debug"] is True


def test_trailing_bytes_are_tolerated(platform: Platform) -> None:
    evidence = platform.verify(platform.quote(trailing=b"\0" * 100), platform.collateral())
    assert evidence.details["trailing_bytes"] == 100


def test_without_the_simulated_pin_the_root_is_untrusted(platform: Platform) -> None:
    error = platform.reject(platform.quote(), platform.collateral(), anchors=TrustAnchors())
    assert error.check == "root_pinned"


def test_pinned_as_an_intel_root_it_is_not_simulated(platform: Platform) -> None:
    anchors = TrustAnchors().with_intel_root(
        platform.root.fingerprint(hashes.SHA256()).hex(), "a private root"
    )
    assert platform.verify(platform.quote(), platform.collateral(), anchors=anchors).simulated is False


def test_tcb_info_v2(platform: Platform) -> None:
    collateral = platform.collateral(
        version=2, levels=[_level("SWHardeningNeeded", advisoryIDs=["INTEL-SA-1"])]
    )
    evidence = platform.verify(platform.quote(), collateral)
    assert evidence.tcb_status == "SWHardeningNeeded"
    assert evidence.advisory_ids == ["INTEL-SA-1"]


def test_tdx_quote_refuses_a_v2_tcb_info(platform: Platform) -> None:
    error = platform.reject(platform.quote(version=4, tee="tdx", qe_prod=2), platform.collateral(version=2))
    assert error.check == "tcb_info_match"


# -- revocation ------------------------------------------------------------------------------------


def test_revoked_pck_certificate(platform: Platform) -> None:
    error = platform.reject(platform.quote(), platform.collateral(pck_revoked=(0x1234,)))
    assert error.check == "revocation"
    assert "the PCK certificate (serial 1234)" in error.detail


def test_revoked_pck_ca(platform: Platform) -> None:
    error = platform.reject(platform.quote(), platform.collateral(root_revoked=(2,)))
    assert error.check == "revocation" and platform.ca_cn in error.detail


def test_revoked_tcb_signer(platform: Platform) -> None:
    error = platform.reject(platform.quote(), platform.collateral(root_revoked=(3,)))
    assert error.check == "revocation" and "TCB Signing" in error.detail


def test_other_serials_do_not_revoke(platform: Platform) -> None:
    assert platform.verify(platform.quote(), platform.collateral(pck_revoked=(2, 3), root_revoked=(0x1234,)))


# -- collateral signing ----------------------------------------------------------------------------


def test_reissued_tcb_signing_certificate_with_the_same_key(platform: Platform) -> None:
    # Intel re-issued its TCB signing certificate with the same key and serial: trust follows the root.
    reissued = _cert(
        "Test SGX TCB Signing", platform.tcb_key, "Test SGX Root CA", platform.root_key, ca=False, serial=3,
        not_before=NOW - timedelta(days=10),
    )  # fmt: skip
    assert platform.verify(platform.quote(), platform.collateral(signer=reissued)).tcb_status == "UpToDate"


def test_expired_tcb_signing_certificate(platform: Platform) -> None:
    old = _cert(
        "Test SGX TCB Signing", platform.tcb_key, "Test SGX Root CA", platform.root_key, ca=False, serial=3,
        not_before=NOW - timedelta(days=900), not_after=NOW - timedelta(days=1),
    )  # fmt: skip
    error = platform.reject(platform.quote(), platform.collateral(signer=old))
    assert error.check == "collateral_validity"
    assert "TCB signing certificate" in error.detail and "expired" in error.detail


def test_tcb_signer_from_another_root(platform: Platform) -> None:
    stranger = ec.generate_private_key(ec.SECP256R1())
    foreign = _cert(
        "Test SGX TCB Signing", platform.tcb_key, "Test SGX Root CA", stranger, ca=False, serial=3
    )
    error = platform.reject(platform.quote(), platform.collateral(signer=foreign))
    assert error.check == "collateral_chain"


def test_collateral_not_yet_valid(platform: Platform) -> None:
    error = platform.reject(platform.quote(), platform.collateral(issue=NOW + timedelta(days=1)))
    assert error.check == "collateral_validity"
    assert "TCB info" in error.detail and "not valid before" in error.detail


def test_pck_crl_must_be_from_the_issuing_ca(platform: Platform, platform_ca: Platform) -> None:
    # A Platform-CA quote checked with collateral that holds only the Processor CA's CRL.
    assert platform_ca.verify(platform_ca.quote(), platform_ca.collateral()).tcb_status == "UpToDate"
    error = platform_ca.reject(platform_ca.quote(), platform.collateral())
    assert error.check == "pck_crl"
    assert "no CRL of Test SGX PCK Platform CA" in error.detail and "Processor" in error.detail


# -- QE identity -----------------------------------------------------------------------------------


def test_qe_mrsigner_mismatch(platform: Platform) -> None:
    error = platform.reject(platform.quote(qe_mrsigner=b"\x01" * 32), platform.collateral())
    assert error.check == "qe_identity" and "MRSIGNER" in error.detail


def test_qe_prod_id_mismatch(platform: Platform) -> None:
    error = platform.reject(platform.quote(qe_prod=9), platform.collateral())
    assert error.check == "qe_identity" and "ISVPRODID 9" in error.detail


def test_qe_attributes_are_compared_under_the_mask(platform: Platform) -> None:
    # Byte 0 bit 2 is masked out (FB): setting it changes nothing; bit 0 is not masked: clearing it fails.
    masked = bytes.fromhex("15000000000000000700000000000000")
    assert platform.verify(platform.quote(qe_attrs=masked), platform.collateral())
    error = platform.reject(platform.quote(qe_attrs=bytes.fromhex("10" + "00" * 15)), platform.collateral())
    assert error.check == "qe_identity" and "ATTRIBUTES" in error.detail


def test_miscselect_hex_is_report_byte_order(platform: Platform) -> None:
    misc = bytes.fromhex("d182b18c")  # LE u32 0x8CB182D1, written in the identity as "D182B18C"
    collateral = platform.collateral(qe_misc=("D182B18C", "FFFFFFFF"))
    assert platform.verify(platform.quote(qe_misc=misc), collateral)
    error = platform.reject(platform.quote(qe_misc=misc[::-1]), collateral)
    assert error.check == "qe_identity" and "MISCSELECT" in error.detail


# -- TCB status ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("platform_status", "qe_status", "final"),
    [
        ("UpToDate", "UpToDate", "UpToDate"),
        ("UpToDate", "OutOfDate", "OutOfDate"),
        ("SWHardeningNeeded", "OutOfDate", "OutOfDate"),
        ("ConfigurationNeeded", "OutOfDate", "OutOfDateConfigurationNeeded"),
        ("ConfigurationAndSWHardeningNeeded", "OutOfDate", "OutOfDateConfigurationNeeded"),
        ("OutOfDate", "OutOfDate", "OutOfDate"),
        ("ConfigurationNeeded", "UpToDate", "ConfigurationNeeded"),
        ("UpToDate", "Revoked", "Revoked"),
        ("Revoked", "UpToDate", "Revoked"),
    ],
)
def test_qe_status_converges(platform: Platform, platform_status: str, qe_status: str, final: str) -> None:
    collateral = platform.collateral(
        levels=[_level(platform_status, advisoryIDs=["INTEL-SA-00001", "INTEL-SA-00002"])],
        qe_levels=[_isv(8, qe_status, advisoryIDs=["INTEL-SA-00002", "INTEL-SA-00003"])],
    )
    log = CheckLog()
    evidence = platform.verify(platform.quote(), collateral, log=log)
    assert evidence.tcb_status == final
    assert evidence.advisory_ids == ["INTEL-SA-00001", "INTEL-SA-00002", "INTEL-SA-00003"]
    tcb_check = next(c for c in log.checks if c.name == "tcb_status")
    assert tcb_check.passed is (final != "Revoked")


def test_qe_svn_below_every_level_is_not_found(platform: Platform) -> None:
    log = CheckLog()
    evidence = platform.verify(platform.quote(qe_svn=3), platform.collateral(), log=log)
    assert evidence.tcb_status == "TcbLevelNotFound"
    assert evidence.advisory_ids == []
    assert [c.name for c in log.checks if not c.passed] == ["qe_tcb", "tcb_status"]


def test_qe_out_of_date_level(platform: Platform) -> None:
    evidence = platform.verify(platform.quote(qe_svn=7), platform.collateral())
    assert evidence.tcb_status == "OutOfDate"
    assert evidence.details["qe_tcb_status"] == "OutOfDate"


def test_first_level_met_wins(platform: Platform) -> None:
    higher = tuple(v + 1 for v in PCK_SVNS)
    collateral = platform.collateral(
        levels=[
            _level("UpToDate", higher),
            _level("UpToDate", pcesvn=PCESVN + 1),
            _level("ConfigurationNeeded"),
            _level("OutOfDate"),
        ]
    )
    evidence = platform.verify(platform.quote(), collateral)
    assert evidence.tcb_status == "ConfigurationNeeded"


def test_no_platform_level_is_not_found(platform: Platform) -> None:
    collateral = platform.collateral(levels=[_level("UpToDate", tuple(v + 1 for v in PCK_SVNS))])
    log = CheckLog()
    evidence = platform.verify(platform.quote(), collateral, log=log)
    assert evidence.tcb_status == "TcbLevelNotFound"
    failure = next(c for c in log.checks if c.name == "platform_tcb")
    assert not failure.passed and "PCK component SVNs" in failure.detail


# -- TDX module ------------------------------------------------------------------------------------


def _module(
    ident: str,
    *levels: dict[str, Any],
    mrsigner: str = "00" * 48,
    attrs: str = "00" * 8,
    mask: str = "FF" * 8,
) -> dict[str, Any]:
    return {
        "id": ident,
        "mrsigner": mrsigner,
        "attributes": attrs,
        "attributesMask": mask,
        "tcbLevels": list(levels),
    }


def _tdx(platform: Platform, **kw: Any) -> bytes:
    return platform.quote(version=4, tee="tdx", qe_prod=2, **kw)


def test_tdx_module_out_of_date_converges(platform: Platform) -> None:
    collateral = platform.collateral(
        tee="tdx",
        modules=[
            _module("TDX_01", _isv(6, "UpToDate"), _isv(4, "OutOfDate", advisoryIDs=["INTEL-SA-01036"]))
        ],
        levels=[_level("ConfigurationNeeded", tdx=[0] * 16, advisoryIDs=["INTEL-SA-00999"])],
    )
    evidence = platform.verify(_tdx(platform, tee_tcb_svn=bytes([5, 1]) + bytes(14)), collateral)
    assert evidence.tcb_status == "OutOfDateConfigurationNeeded"
    assert evidence.advisory_ids == ["INTEL-SA-00999", "INTEL-SA-01036"]
    assert evidence.details["tdx_module_tcb_status"] == "OutOfDate"


def test_tdx_module_revoked(platform: Platform) -> None:
    collateral = platform.collateral(tee="tdx", modules=[_module("TDX_01", _isv(4, "Revoked"))])
    assert platform.verify(_tdx(platform), collateral).tcb_status == "Revoked"


def test_tdx_module_svn_below_every_level(platform: Platform) -> None:
    collateral = platform.collateral(tee="tdx", modules=[_module("TDX_01", _isv(9, "UpToDate"))])
    log = CheckLog()
    assert platform.verify(_tdx(platform), collateral, log=log).tcb_status == "TcbLevelNotFound"
    assert not next(c for c in log.checks if c.name == "tdx_module_tcb").passed


def test_tdx_module_identity_missing(platform: Platform) -> None:
    collateral = platform.collateral(tee="tdx", modules=[_module("TDX_03", _isv(0, "UpToDate"))])
    error = platform.reject(_tdx(platform), collateral)
    assert error.check == "tdx_module" and "TDX_01" in error.detail and "TDX_03" in error.detail


def test_tdx_module_mrsigner_mismatch(platform: Platform) -> None:
    collateral = platform.collateral(tee="tdx", modules=[_module("TDX_01", _isv(0, "UpToDate"))])
    error = platform.reject(_tdx(platform, mrsignerseam=b"\x01" * 48), collateral)
    assert error.check == "tdx_module" and "MRSIGNERSEAM" in error.detail


def test_seam_attributes_under_the_mask(platform: Platform) -> None:
    collateral = platform.collateral(
        tee="tdx", modules=[_module("TDX_01", _isv(0, "UpToDate"), mask="FE" + "FF" * 7)]
    )
    assert platform.verify(_tdx(platform, seam_attributes=b"\x01" + bytes(7)), collateral)
    error = platform.reject(_tdx(platform, seam_attributes=b"\x02" + bytes(7)), collateral)
    assert error.check == "tdx_module" and "SEAMATTRIBUTES" in error.detail


def test_tdx_module_major_zero_uses_the_base_module(platform: Platform) -> None:
    collateral = platform.collateral(tee="tdx", levels=[_level("UpToDate", tdx=[3, 0, 3] + [0] * 13)])
    evidence = platform.verify(_tdx(platform, tee_tcb_svn=bytes([3, 0, 3]) + bytes(13)), collateral)
    assert evidence.tcb_status == "UpToDate"
    assert evidence.details["tdx_module_id"] == "tdxModule"
    # With major version 0 every TEE_TCB_SVN component counts, including the module SVN at index 0.
    evidence = platform.verify(_tdx(platform, tee_tcb_svn=bytes([2, 0, 3]) + bytes(13)), collateral)
    assert evidence.tcb_status == "TcbLevelNotFound"


def test_tee_tcb_svn_rule_skips_module_components_when_major_is_set(platform: Platform) -> None:
    # Intel's QVL rule (teelab's choice): TEE_TCB_SVN[1] != 0 -> compare from index 2; the module SVN at
    # index 0 is judged by the TDX_01 identity instead. dcap-qvl would call this level unmet (5 < 9).
    modules = [_module("TDX_01", _isv(5, "UpToDate"))]
    levels = [_level("UpToDate", tdx=[9, 9, 3] + [0] * 13), _level("OutOfDate", tdx=[0] * 16)]
    collateral = platform.collateral(tee="tdx", modules=modules, levels=levels)
    assert (
        platform.verify(_tdx(platform, tee_tcb_svn=bytes([5, 1, 3]) + bytes(13)), collateral).tcb_status
        == "UpToDate"
    )
    # Components from index 2 on still count.
    evidence = platform.verify(_tdx(platform, tee_tcb_svn=bytes([5, 1, 2]) + bytes(13)), collateral)
    assert evidence.tcb_status == "OutOfDate"


def test_tdx_sgx_level_met_but_no_tdx_level(platform: Platform) -> None:
    collateral = platform.collateral(
        tee="tdx",
        modules=[_module("TDX_01", _isv(0, "UpToDate"))],
        levels=[_level("UpToDate", tdx=[0, 0, 9] + [0] * 13)],
    )
    log = CheckLog()
    assert platform.verify(_tdx(platform), collateral, log=log).tcb_status == "TcbLevelNotFound"
    assert "TEE_TCB_SVN" in next(c.detail for c in log.checks if c.name == "platform_tcb")


# -- PCK chain shapes ------------------------------------------------------------------------------


def test_chain_of_two_certificates(platform: Platform) -> None:
    error = platform.reject(platform.quote(chain=_pem(platform.pck, platform.ca)), platform.collateral())
    assert error.check == "pck_chain" and "has 2 certificates" in error.detail


def test_chain_of_four_certificates(platform: Platform) -> None:
    chain = _pem(platform.pck, platform.ca, platform.root, platform.root)
    error = platform.reject(platform.quote(chain=chain), platform.collateral())
    assert error.check == "pck_chain" and "has 4 certificates" in error.detail


def test_chain_out_of_order(platform: Platform) -> None:
    error = platform.reject(
        platform.quote(chain=_pem(platform.ca, platform.pck, platform.root)), platform.collateral()
    )
    assert error.check == "pck_chain"


def test_leaf_without_sgx_extension(platform: Platform) -> None:
    bare = _cert(
        "Test SGX PCK Certificate", platform.pck_key, platform.ca_cn, platform.ca_key, ca=False, serial=9
    )
    error = platform.reject(
        platform.quote(chain=_pem(bare, platform.ca, platform.root)), platform.collateral()
    )
    assert error.check == "pck_extension"


def test_pck_certificate_of_another_platform(platform: Platform) -> None:
    other = _cert(
        "Test SGX PCK Certificate", ec.generate_private_key(ec.SECP256R1()), platform.ca_cn, platform.ca_key,
        ca=False, serial=10, extension=sgx_extension(PCK_SVNS, PCESVN, FMSPC),
    )  # fmt: skip
    error = platform.reject(
        platform.quote(chain=_pem(other, platform.ca, platform.root)), platform.collateral()
    )
    assert error.check == "qe_report_signature"


def test_qe_report_not_binding_the_attestation_key(platform: Platform) -> None:
    quote = bytearray(platform.quote())
    # QE authentication data follows the QE report signature; change it and the binding breaks.
    at = 436 + 64 + 64 + 384 + 64 + 2
    quote[at] ^= 0xFF
    error = platform.reject(bytes(quote), platform.collateral())
    assert error.check == "qe_report_data"


def test_pck_certificate_expired(platform: Platform) -> None:
    old = platform.pck_cert(
        serial=11, not_before=NOW - timedelta(days=400), not_after=NOW - timedelta(days=1)
    )
    error = platform.reject(
        platform.quote(chain=_pem(old, platform.ca, platform.root)), platform.collateral()
    )
    assert error.check == "pck_cert_validity" and "expired" in error.detail


def test_pck_svns_come_from_the_certificate(platform: Platform) -> None:
    lower = platform.pck_cert(svns=(4, 4, 2, 2, 5, 1, 0, 2) + (0,) * 8, serial=12)
    collateral = platform.collateral(
        levels=[_level("UpToDate"), _level("OutOfDate", (4, 4, 2, 2, 5, 1, 0, 2) + (0,) * 8)]
    )
    evidence = platform.verify(platform.quote(chain=_pem(lower, platform.ca, platform.root)), collateral)
    assert evidence.tcb_status == "OutOfDate"


# -- the TCB rules as pure functions ---------------------------------------------------------------


def test_converge_matrix() -> None:
    assert tcb_rules.converge("UpToDate", "UpToDate") == "UpToDate"
    assert tcb_rules.converge("OutOfDateConfigurationNeeded", "OutOfDate") == "OutOfDateConfigurationNeeded"
    assert tcb_rules.converge("ConfigurationNeeded", "Revoked") == "Revoked"


def test_merge_advisories_keeps_order_and_drops_repeats() -> None:
    assert tcb_rules.merge_advisories(["b", "a"], [], ["a", "c"]) == ["b", "a", "c"]


def test_masked_equal_needs_equal_lengths() -> None:
    assert not tcb_rules.masked_equal(b"\x00", b"\xff\xff", b"\x00\x00")


def test_match_levels_for_tdx_returns_the_first_sgx_level() -> None:
    day = NOW
    a = TcbLevel((5,) * 16, 10, (9,) * 16, day, "UpToDate", ())
    b = TcbLevel((1,) * 16, 1, (0,) * 16, day, "OutOfDate", ())
    sgx, tdx = tcb_rules.match_levels([a, b], (5,) * 16, 10, bytes(16))
    assert sgx is a and tdx is b


# -- teelab's own simulated platform -----------------------------------------------------------------


def test_teelab_simulated_platform_verifies_through_the_same_code(tmp_path: Path) -> None:
    from teelab.enclave_runtime.sim.platform import SimPlatform
    from teelab.enclave_runtime.sim.sgx_structs import ReportBody

    created = datetime(2026, 11, 1, tzinfo=UTC)
    sim = SimPlatform.create(tmp_path / "platform", now=created)
    body = ReportBody(
        cpusvn=bytes(16),
        mrenclave=b"E" * 32,
        mrsigner=b"S" * 32,
        isv_prod_id=1,
        isv_svn=2,
        report_data=b"r" * 64,
    )
    quote = sim.quote(body)
    issued = sim.issue_collateral(created)
    anchors = TrustAnchors().with_simulated_root(sim.root_fingerprint, "teelab simulated platform")
    at = created + timedelta(days=1)
    issued.write_folder(tmp_path / "folder")
    for collateral in (
        IntelCollateral.from_bundle_json(issued.to_json()),
        IntelCollateral.from_folder(tmp_path / "folder"),
    ):
        evidence = verify_intel_quote(quote, collateral, at=at, anchors=anchors)
        assert evidence.simulated is True
        assert evidence.tcb_status == "UpToDate"
        assert evidence.claims["mrenclave"] == (b"E" * 32).hex()
    with pytest.raises(VerificationError) as caught:
        verify_intel_quote(
            quote, IntelCollateral.from_bundle_json(issued.to_json()), at=at, anchors=TrustAnchors()
        )
    assert caught.value.check == "root_pinned"
