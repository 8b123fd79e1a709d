"""Confidential-VM evidence at the OS boundary — stand-ins for configfs-tsm and /dev/sev-guest, not a real VM.

The configfs stand-in behaves like the kernel's report entries: ``mkdir`` fills an entry with ``provider`` and
``generation``, a write to ``inblob`` is recorded, refused unless it is 64 bytes, bumps ``generation`` and makes
``outblob`` — the REAL SNP report from ``shared/vectors/snp-virtee`` (with its VCEK/ASK/ARK as the ``auxblob``
certificate table) or the REAL TDX quote from ``shared/vectors/tdx-dcap-qvl`` — and it can play a racing
second writer. The sev-guest stand-in is an ioctl function that reads and writes the request structures.
Everything returned then goes through the gateway's verifier end to end at the vector's time.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from datetime import UTC, datetime
from pathlib import Path

import pytest

from teelab.cli import main
from teelab.enclave_runtime.backend import EvidenceKind, SealPolicy
from teelab.enclave_runtime.cvm.http import HttpResponse
from teelab.enclave_runtime.cvm.kds import ARK_GUID, ASK_GUID, VCEK_GUID, KdsClient, build_cert_table
from teelab.enclave_runtime.cvm.runtime import CvmRuntime
from teelab.enclave_runtime.cvm.sevguest import SNP_GET_DERIVED_KEY, SNP_GET_REPORT
from teelab.enclave_runtime.cvm.tsm import ConfigfsTsm, OsFiles
from teelab.enclave_runtime.gramine.runtime import derive_sealing_key
from teelab.enclave_runtime.runtime import current_runtime
from teelab.errors import EvidenceError
from teelab.gateway.policy import parse_policy
from teelab.gateway.verifier import verify_evidence

VECTORS = Path(__file__).resolve().parents[2].parent / "shared" / "vectors"
VIRTEE = VECTORS / "snp-virtee"
SNP_REPORT = bytes.fromhex((VIRTEE / "report_milan.hex").read_text().strip())
SNP_DATA = SNP_REPORT[0x50:0x90]
SNP_AT = datetime(2024, 1, 1, tzinfo=UTC)
TDX = VECTORS / "tdx-dcap-qvl"
TDX_QUOTE = (TDX / "tdx_quote.bin").read_bytes()
TDX_DATA = bytes.fromhex(
    "9a9d48e7f6799642d3d1b34e1e5e1742d4bb02dd6ddd551862c1211d35c304f9"
    "eca3efdbb481601c163cf52493d6e44aed55d51ec39b7e518fadb92c2b523f20"
)
# The vector's certificates come without AMD's CRL, which the default policy requires: said explicitly here.
SNP_POLICY = parse_policy(
    '[snp]\nmeasurement = ["7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f"]\n'
    "require_crl = false\n"
)
TDX_POLICY = parse_policy(
    '[tdx]\nmrtd = ["91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"]\n'
)


def der_certs(pem: bytes) -> list[bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    return [c.public_bytes(Encoding.DER) for c in x509.load_pem_x509_certificates(pem)]


def milan_table() -> bytes:
    ask, ark = der_certs((VIRTEE / "cert_chain_milan.pem").read_bytes())
    return build_cert_table(
        [(VCEK_GUID, (VIRTEE / "vcek_milan.der").read_bytes()), (ASK_GUID, ask), (ARK_GUID, ark)]
    )


class StandInConfigfs(OsFiles):
    """configfs-tsm report entries, as the kernel keeps them."""

    def __init__(
        self, provider: str, outblob: bytes, auxblob: bytes | None = None, *, racing_writes: int = 0
    ) -> None:
        self.provider = provider
        self.outblob = outblob
        self.auxblob = auxblob
        self.racing_writes = racing_writes
        self.created: list[Path] = []
        self.removed: list[Path] = []
        self.inblobs: list[bytes] = []

    def mkdir(self, path: Path) -> None:
        super().mkdir(path)
        self.created.append(path)
        (path / "provider").write_text(self.provider + "\n")
        (path / "generation").write_text("0\n")
        if self.auxblob is not None:
            (path / "auxblob").write_bytes(self.auxblob)

    def rmdir(self, path: Path) -> None:
        for child in path.iterdir():
            child.unlink()
        super().rmdir(path)
        self.removed.append(path)

    def write(self, path: Path, data: bytes) -> int:
        if path.name != "inblob":
            raise OSError(errno.EACCES, "read-only attribute")
        self.inblobs.append(data)
        if len(data) != 64:
            raise OSError(errno.EINVAL, "Invalid argument")
        generation = int((path.parent / "generation").read_text()) + 1
        (path.parent / "outblob").write_bytes(self.outblob)
        if self.racing_writes:
            self.racing_writes -= 1
            generation += 1  # another process wrote this entry's inblob too
        (path.parent / "generation").write_text(f"{generation}\n")
        return len(data)


def guest_tree(tmp_path: Path, *devices: str, tsm: bool = True) -> Path:
    root = tmp_path / "root"
    if tsm:
        (root / "sys/kernel/config/tsm/report").mkdir(parents=True)
    for device in devices:
        (root / device.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / device.lstrip("/")).write_bytes(b"")
    root.mkdir(exist_ok=True)
    return root


def test_os_boundary_snp_report_through_configfs_tsm_verifies_end_to_end_with_the_auxblob(
    tmp_path: Path,
) -> None:
    root = guest_tree(tmp_path, "/dev/sev-guest")
    configfs = StandInConfigfs("sev_guest", SNP_REPORT, milan_table())
    runtime = current_runtime(root=root, env={})
    assert isinstance(runtime, CvmRuntime)
    runtime = CvmRuntime(root, tsm_files=configfs)
    evidence = runtime.evidence(SNP_DATA)
    assert configfs.inblobs == [SNP_DATA]
    assert configfs.created == configfs.removed and len(configfs.created) == 1  # one fresh entry, removed
    assert evidence.kind is EvidenceKind.SNP_REPORT and evidence.blob == SNP_REPORT
    assert evidence.certificates == milan_table()
    result = verify_evidence(
        evidence.blob,
        certs=evidence.certificates,
        at=SNP_AT,
        policy=SNP_POLICY,
        expected_report_data=SNP_DATA,
    )
    assert result.ok, result.error
    assert result.tee == "sev-snp"


def test_os_boundary_tdx_quote_through_configfs_tsm_verifies_end_to_end(tmp_path: Path) -> None:
    root = guest_tree(tmp_path, "/dev/tdx_guest")
    configfs = StandInConfigfs("tdx_guest", TDX_QUOTE)
    evidence = CvmRuntime(root, tsm_files=configfs).evidence(TDX_DATA)
    assert evidence.kind is EvidenceKind.TDX_QUOTE and evidence.certificates is None
    result = verify_evidence(
        evidence.blob,
        collateral=TDX / "tdx_quote_collateral.json",
        at=datetime(2025, 7, 1, tzinfo=UTC),
        policy=TDX_POLICY,
        expected_report_data=TDX_DATA,
    )
    assert result.ok, result.error


@pytest.mark.parametrize("size", [0, 32, 63, 65, 128])
def test_os_boundary_a_wrong_inblob_size_is_refused_before_anything_is_created(
    tmp_path: Path, size: int
) -> None:
    configfs = StandInConfigfs("sev_guest", SNP_REPORT)
    tsm = ConfigfsTsm(guest_tree(tmp_path), files=configfs)
    with pytest.raises(EvidenceError, match="exactly 64 bytes"):
        tsm.report(b"\x00" * size)
    assert configfs.created == [] and configfs.inblobs == []


def test_os_boundary_provider_mismatch_is_refused_and_the_entry_removed(tmp_path: Path) -> None:
    root = guest_tree(tmp_path, "/dev/sev-guest")
    configfs = StandInConfigfs("tdx_guest", TDX_QUOTE)
    with pytest.raises(EvidenceError, match="provider is 'tdx_guest', not the expected 'sev_guest'"):
        CvmRuntime(root, tsm_files=configfs).evidence(SNP_DATA)
    assert configfs.inblobs == [] and configfs.created == configfs.removed
    unknown = StandInConfigfs("arm_cca_guest", b"x")
    with pytest.raises(EvidenceError, match="not one teelab knows"):
        ConfigfsTsm(guest_tree(tmp_path / "b"), files=unknown).report(bytes(64))


def test_os_boundary_a_generation_change_mid_read_is_retried_on_a_fresh_entry(tmp_path: Path) -> None:
    configfs = StandInConfigfs("sev_guest", SNP_REPORT, racing_writes=1)
    report = ConfigfsTsm(guest_tree(tmp_path), files=configfs).report(SNP_DATA)
    assert report.outblob == SNP_REPORT
    assert len(configfs.created) == 2 and configfs.created[0] != configfs.created[1]
    assert configfs.removed == configfs.created
    always = StandInConfigfs("sev_guest", SNP_REPORT, racing_writes=99)
    with pytest.raises(
        EvidenceError, match="another writer changed the report entry during each of 3 attempts"
    ):
        ConfigfsTsm(guest_tree(tmp_path / "b"), files=always).report(SNP_DATA)
    assert len(always.created) == 3 and always.removed == always.created


def test_os_boundary_report_data_the_report_does_not_carry_is_refused(tmp_path: Path) -> None:
    root = guest_tree(tmp_path, "/dev/sev-guest")
    runtime = CvmRuntime(root, tsm_files=StandInConfigfs("sev_guest", SNP_REPORT, milan_table()))
    with pytest.raises(EvidenceError, match="other report data"):
        runtime.evidence(bytes(64))


class StandInSevGuest:
    """/dev/sev-guest through ioctl(2): records the request structures, answers like the firmware."""

    def __init__(self, *, status: int = 0, fail: bool = False) -> None:
        self.requests: list[tuple[int, int, bytes]] = []
        self.status = status
        self.fail = fail

    def __call__(self, fd: int, request: int, arg: int) -> int:
        version, req, resp, _ = struct.unpack("<B7xQQQ", ctypes.string_at(arg, 32))
        size = 96 if request == SNP_GET_REPORT else 32
        self.requests.append((request, version, ctypes.string_at(req, size)))
        if self.fail:
            ctypes.memmove(arg + 24, struct.pack("<Q", (2 << 32) | 0x16), 8)
            raise OSError(errno.EIO, "Input/output error")
        if request == SNP_GET_REPORT:
            answer = struct.pack("<II", self.status, len(SNP_REPORT)) + bytes(24) + SNP_REPORT
        else:
            answer = struct.pack("<I", self.status) + bytes(28) + bytes(range(32))
        ctypes.memmove(resp, answer, len(answer))
        return 0


def fake_kds(calls: list[str]):  # type: ignore[no-untyped-def]
    def fetch(url: str) -> HttpResponse:
        calls.append(url)
        if url.endswith("/cert_chain"):
            return HttpResponse(200, (VIRTEE / "cert_chain_milan.pem").read_bytes())
        if url.endswith("/crl"):  # no public AMD CRL to answer with (shared/vectors/NOTES.md)
            return HttpResponse(404, b"")
        return HttpResponse(200, (VIRTEE / "vcek_milan.der").read_bytes())

    return fetch


def test_os_boundary_sev_guest_fallback_fetches_the_vcek_once_and_verifies_end_to_end(tmp_path: Path) -> None:
    """No configfs-tsm (a kernel before 6.7): SNP_GET_REPORT, and the VCEK from (a stand-in for) AMD KDS."""
    root = guest_tree(tmp_path, "/dev/sev-guest", tsm=False)
    device = StandInSevGuest()
    calls: list[str] = []
    kds = KdsClient(cache=tmp_path / "kds", fetcher=fake_kds(calls))
    runtime = CvmRuntime(root, ioctl=device, kds=kds, snp_product="Milan")
    evidence = runtime.evidence(SNP_DATA)
    request, version, body = device.requests[0]
    assert (request, version) == (0xC0205300, 1)
    assert body == SNP_DATA + struct.pack("<I", 0) + bytes(28)  # the 96-byte snp_report_req
    assert evidence.blob == SNP_REPORT
    chip = SNP_REPORT[0x1A0:0x1E0].hex()
    assert calls == [
        "https://kdsintf.amd.com/vcek/v1/Milan/cert_chain",
        f"https://kdsintf.amd.com/vcek/v1/Milan/{chip}?blSPL=3&teeSPL=0&snpSPL=8&ucodeSPL=115",
        "https://kdsintf.amd.com/vcek/v1/Milan/crl",
    ]
    result = verify_evidence(
        evidence.blob,
        certs=evidence.certificates,
        at=SNP_AT,
        policy=SNP_POLICY,
        expected_report_data=SNP_DATA,
    )
    assert result.ok, result.error
    assert next(c.detail for c in result.checks if c.name == "amd_crl").startswith("not checked")
    runtime.evidence(SNP_DATA)
    assert len(calls) == 3  # the cache answered the second time (and the missing CRL is not asked again yet)


def test_os_boundary_sev_guest_errors_are_reported_with_the_firmware_status(tmp_path: Path) -> None:
    root = guest_tree(tmp_path, "/dev/sev-guest", tsm=False)
    with pytest.raises(EvidenceError, match=r"status 0x16 \(invalid parameter\)"):
        CvmRuntime(root, ioctl=StandInSevGuest(status=0x16), snp_product="Milan").evidence(SNP_DATA)
    with pytest.raises(EvidenceError, match=r"firmware error 0x16, hypervisor error 0x2"):
        CvmRuntime(root, ioctl=StandInSevGuest(fail=True)).evidence(SNP_DATA)
    with pytest.raises(EvidenceError, match="does not say which processor line"):
        CvmRuntime(
            root, ioctl=StandInSevGuest(), kds=KdsClient(cache=tmp_path / "k", fetcher=fake_kds([]))
        ).evidence(SNP_DATA)


def test_os_boundary_snp_sealing_key_binds_measurement_and_policy_and_tdx_has_none(tmp_path: Path) -> None:
    root = guest_tree(tmp_path, "/dev/sev-guest", tsm=False)
    device = StandInSevGuest()
    key = CvmRuntime(root, ioctl=device).sealing_key(SealPolicy.MRENCLAVE, label=b"x")
    request, _, body = device.requests[0]
    root_key, _, fields, vmpl, svn, tcb = struct.unpack("<IIQIIQ", body)
    assert request == SNP_GET_DERIVED_KEY == 0xC0205301
    assert root_key == 0 and fields & (1 << 3) and fields & 1 and (vmpl, svn, tcb) == (0, 0, 0)
    assert key == derive_sealing_key(bytes(range(32)), backend="snp", policy=SealPolicy.MRENCLAVE, label=b"x")
    with pytest.raises(EvidenceError, match="no signer identity"):
        CvmRuntime(root, ioctl=device).sealing_key(SealPolicy.MRSIGNER)
    tdx = guest_tree(tmp_path / "tdx", "/dev/tdx_guest")
    with pytest.raises(EvidenceError, match="TDX has no sealing key") as caught:
        CvmRuntime(tdx).sealing_key()
    assert caught.value.hint is not None and "key broker" in caught.value.hint


def test_os_boundary_a_tdx_guest_without_configfs_tsm_cannot_quote(tmp_path: Path) -> None:
    root = guest_tree(tmp_path, "/dev/tdx_guest", tsm=False)
    with pytest.raises(EvidenceError, match=r"Linux ≥ 6\.7"):
        CvmRuntime(root).evidence(TDX_DATA)


def test_os_boundary_outside_any_tee_the_runtime_says_so(tmp_path: Path) -> None:
    with pytest.raises(EvidenceError, match="not running inside a TEE"):
        current_runtime(root=tmp_path, env={})
    with pytest.raises(EvidenceError, match="not inside a confidential VM"):
        CvmRuntime(tmp_path).evidence(bytes(64))


def test_os_boundary_measure_explains_where_the_cvm_reference_value_comes_from(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["enclave", "measure", "--backend", "cvm"]) == 1
    err = capsys.readouterr().err
    assert "comes from the VM image, not from teelab" in err
    assert "sev-snp-measure" in err and "MRTD" in err
    assert main(["enclave", "build", "--backend", "cvm", "--debug"]) == 2


def test_os_boundary_cvm_launch_is_a_local_process_with_only_the_passthrough_inputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json
    import subprocess
    import sys

    from teelab.enclave_runtime.cvm.backend import CvmBackend
    from teelab.enclave_runtime.manifest import TEE_TMP, ImageSpec

    spec = ImageSpec(
        name="probe",
        entrypoint=sys.executable,
        argv=(sys.executable, "-c", "import json, os; print(json.dumps({**os.environ, 'cwd': os.getcwd()}))"),
        env={"HOME": f"{TEE_TMP}/home"},
        passthrough_env=("TEELAB_BOOT_REQUEST",),
        trusted=(sys.executable,),
    )
    backend = CvmBackend()
    image = backend.build(spec, out=tmp_path / "image")
    monkeypatch.setenv("SECRET_ON_THE_HOST", "x")
    process = backend.launch(image, inputs={"TEELAB_BOOT_REQUEST": "r"}, stdout=subprocess.PIPE)
    out, _ = process.popen.communicate(timeout=60)
    seen = json.loads(out)
    assert (
        seen["TEELAB_BOOT_REQUEST"] == "r"
        and seen["TEELAB_TEE"] == "cvm"
        and "SECRET_ON_THE_HOST" not in seen
    )
    assert seen["HOME"].startswith(seen["cwd"]) and os.path.isdir(seen["HOME"])
    process.cleanup()
    assert backend.collateral_for(SNP_REPORT, SNP_AT) is None


def _crl(issued: datetime, next_update: datetime) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())  # the guest does not judge signatures; the verifier does
    return (
        x509.CertificateRevocationListBuilder()
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ARK-Milan")]))
        .last_update(issued)
        .next_update(next_update)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )


def test_os_boundary_amd_crl_is_fetched_kept_until_due_and_retried_sparingly(tmp_path: Path) -> None:
    """The guest asks (a stand-in for) AMD KDS for the ARK's CRL, keeps it until its next update is due, puts
    it in the certificate table, and after a failure does not ask again for ten minutes."""
    from datetime import timedelta

    from teelab.gateway.snp.certs import SnpCertificates

    now = datetime(2026, 11, 1, tzinfo=UTC)
    answers: list[HttpResponse] = [HttpResponse(200, _crl(now - timedelta(days=1), now + timedelta(days=7)))]
    calls: list[str] = []

    def fetch(url: str) -> HttpResponse:
        calls.append(url)
        return answers[-1]

    kds = KdsClient(cache=tmp_path / "kds", fetcher=fetch)
    first = kds.crl("Milan", now=now)
    assert first is not None and calls == ["https://kdsintf.amd.com/vcek/v1/Milan/crl"]
    assert kds.crl("Milan", now=now + timedelta(days=6)) == first and len(calls) == 1  # kept while current
    answers.append(HttpResponse(200, _crl(now + timedelta(days=7), now + timedelta(days=14))))
    second = kds.crl("Milan", now=now + timedelta(days=8))  # due: asked again
    assert second is not None and second != first and len(calls) == 2
    assert (tmp_path / "kds" / "Milan.crl").read_bytes() == second

    answers.append(HttpResponse(503, b"busy"))
    later = now + timedelta(days=20)
    assert kds.crl("Milan", now=later) is None and len(calls) == 3
    assert kds.crl("Milan", now=later + timedelta(minutes=5)) is None and len(calls) == 3
    answers.append(HttpResponse(200, b"not a crl"))
    assert kds.crl("Milan", now=later + timedelta(minutes=11)) is None and len(calls) == 4

    # In the table the guest hands on, beside the certificates (the verifier reads it as AMD's CRL).
    fresh = _crl(datetime.now(UTC) - timedelta(days=1), datetime.now(UTC) + timedelta(days=7))
    kds = KdsClient(cache=tmp_path / "kds2", fetcher=fake_kds([]))
    kds.crl = lambda product, now=None: fresh  # type: ignore[method-assign]
    table = kds.certificate_table(SNP_REPORT, "Milan")
    assert [crl.der for crl in SnpCertificates.from_cert_table(table).crls] == [fresh]
