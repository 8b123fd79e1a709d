"""SEV-SNP ATTESTATION_REPORT parsing: the real public reports, every version 2-5, TCB layouts, and fuzzing
that only VerificationError escapes the parser."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teelab.errors import VerificationError
from teelab.gateway.snp.report import (
    REPORT_SIZE,
    Cpuid,
    SnpReport,
    TcbVersion,
    parse_report,
    tcb_layout,
)

VECTORS = Path(__file__).resolve().parents[2].parent / "shared" / "vectors"
MANIFEST: dict[str, Any] = json.loads((VECTORS / "manifest.json").read_text())
SNP_POSITIVES = [entry for entry in MANIFEST["positives"] if entry["tee"] == "SEV-SNP"]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def read_report(entry: dict[str, Any]) -> bytes:
    data = (VECTORS / entry["report"]).read_bytes()
    return bytes.fromhex(data.decode().strip()) if entry["report_format"].startswith("hex") else data


def milan_report() -> bytes:
    return (VECTORS / "snp-go-sev-guest" / "attestation.bin").read_bytes()


def with_version(report: bytes, version: int) -> bytes:
    return struct.pack("<I", version) + report[4:]


def patched(report: bytes, offset: int, value: bytes) -> bytes:
    return report[:offset] + value + report[offset + len(value) :]


def test_every_snp_vector_is_listed() -> None:
    assert {entry["id"] for entry in SNP_POSITIVES} >= {
        "snp-go-sev-guest/attestation",
        "snp-virtee/report_milan",
    }


@pytest.mark.parametrize("entry", SNP_POSITIVES, ids=lambda entry: entry["id"])
def test_real_report_fields_match_the_manifest(entry: dict[str, Any]) -> None:
    raw = read_report(entry)
    assert hashlib.sha256(raw).hexdigest() == entry["report_sha256"]
    report = parse_report(raw)
    fields = entry["fields"]
    assert report.version == fields["version"]
    assert report.guest_svn == fields["guest_svn"]
    assert report.policy == int(fields["policy"], 16)
    assert report.debug is fields["policy_bits"]["debug"] is entry["expected"]["debug"]
    assert report.vmpl == fields["vmpl"]
    assert report.signature_algo == fields["sig_algo"]
    assert report.platform_info == int(fields["platform_info"], 16)
    assert report.signer_info == int(fields["flags"], 16)
    assert report.signing_key == fields["signing_key"]
    assert report.mask_chip_key is fields["mask_chip_key"]
    assert report.author_key_en is fields["author_key_en"]
    for name in (
        "family_id",
        "image_id",
        "report_data",
        "measurement",
        "host_data",
        "id_key_digest",
        "author_key_digest",
        "report_id",
        "report_id_ma",
        "chip_id",
    ):
        assert getattr(report, name).hex() == fields[name], name
    for which in ("current", "committed"):
        version = getattr(report, f"{which}_version")
        assert (version.major, version.minor, version.build) == tuple(
            fields[f"{which}_{part}"] for part in ("major", "minor", "build")
        )
    for name, tcb in report.tcbs("milan").items():
        expected = fields[f"{name}_tcb"]
        assert tcb.raw == int(expected["raw"], 16)
        assert tcb.components() == {
            "bootloader": expected["bootloader"],
            "tee": expected["tee"],
            "snp": expected["snp"],
            "microcode": expected["microcode"],
        }
    # Fields a version does not define stay None, whatever the reserved bytes hold.
    assert (report.cpuid is None) == (report.version < 3)
    assert (report.launch_mit_vector is None) == (report.current_mit_vector is None) == (report.version < 5)
    assert report.signed_bytes == raw[:0x2A0]
    assert report.signature_r.to_bytes(72, "little") == raw[0x2A0:0x2E8]
    assert report.signature_s.to_bytes(72, "little") == raw[0x2E8:0x330]


def test_milan_and_genoa_tcb_layout() -> None:
    tcb = TcbVersion.decode(0x4405000000000002, "milan")
    assert tcb.components() == {"bootloader": 2, "tee": 0, "snp": 5, "microcode": 68}
    assert tcb.fmc is None
    assert tcb_layout("Milan") == tcb_layout("Genoa") == "milan"


def test_turin_tcb_layout() -> None:
    raw = int.from_bytes(bytes([1, 2, 3, 4, 0, 0, 0, 9]), "little")
    tcb = TcbVersion.decode(raw, "turin")
    assert tcb.components() == {"bootloader": 2, "tee": 3, "snp": 4, "microcode": 9, "fmc": 1}
    assert tcb_layout("Turin") == "turin"
    # The same bytes mean something else under the Milan layout: the product decides.
    assert TcbVersion.decode(raw, "milan").components() == {
        "bootloader": 1,
        "tee": 2,
        "snp": 0,
        "microcode": 9,
    }


@pytest.mark.parametrize("version", [3, 4, 5])
def test_later_versions_expose_cpuid(version: int) -> None:
    raw = patched(with_version(milan_report(), version), 0x188, bytes([0x19, 0x11, 0x01]))
    report = parse_report(raw)
    assert report.cpuid == Cpuid(family=0x19, model=0x11, stepping=1)
    assert report.cpuid.product == "Genoa"


def test_version_5_exposes_mitigation_vectors() -> None:
    raw = patched(with_version(milan_report(), 5), 0x1F8, struct.pack("<QQ", 0x0F, 0x1F))
    report = parse_report(raw)
    assert (report.launch_mit_vector, report.current_mit_vector) == (0x0F, 0x1F)
    four = parse_report(patched(with_version(milan_report(), 4), 0x1F8, struct.pack("<QQ", 0x0F, 0x1F)))
    assert four.launch_mit_vector is None and four.current_mit_vector is None


@pytest.mark.parametrize(
    ("family", "model", "product"),
    [
        (0x19, 0x01, "Milan"),
        (0x19, 0x11, "Genoa"),
        (0x19, 0xA0, "Genoa"),
        (0x1A, 0x02, "Turin"),
        (0x17, 0x31, None),
    ],
)
def test_cpuid_product_table(family: int, model: int, product: str | None) -> None:
    assert Cpuid(family, model, 0).product == product


@pytest.mark.parametrize(
    ("version", "words"), [(0, "predates"), (1, "predates"), (6, "newer"), (2**32 - 1, "newer")]
)
def test_unknown_versions_are_refused_clearly(version: int, words: str) -> None:
    with pytest.raises(VerificationError) as caught:
        parse_report(with_version(milan_report(), version))
    assert caught.value.check == "snp_report_format"
    assert words in caught.value.detail and str(version) in caught.value.detail


@pytest.mark.parametrize("size", [0, 1, REPORT_SIZE - 1, REPORT_SIZE + 1, REPORT_SIZE + 32, 4000])
def test_wrong_sizes_are_refused(size: int) -> None:
    data = (milan_report() * 4)[:size]
    with pytest.raises(VerificationError) as caught:
        parse_report(data)
    assert f"got {size}" in caught.value.detail
    assert caught.value.hint is not None and "offset 32" in caught.value.hint


def test_non_bytes_are_refused() -> None:
    with pytest.raises(VerificationError, match="is bytes, got str"):
        parse_report(milan_report().hex())  # type: ignore[arg-type]


def test_bytes_like_inputs_are_accepted() -> None:
    raw = milan_report()
    assert parse_report(bytearray(raw)).raw == parse_report(memoryview(raw)).raw == raw


def test_reserved_bytes_after_the_signature_must_be_zero() -> None:
    with pytest.raises(VerificationError, match="reserved bytes after the signature"):
        parse_report(patched(milan_report(), 0x49F, b"\x01"))


@pytest.mark.parametrize(
    ("flags", "name"), [(0, "vcek"), (1 << 2, "vlek"), (7 << 2, "none"), (3 << 2, "reserved (3)")]
)
def test_signer_info(flags: int, name: str) -> None:
    report = parse_report(patched(milan_report(), 0x48, struct.pack("<I", flags | 0b11)))
    assert report.signing_key_name == name
    assert report.author_key_en and report.mask_chip_key


def _parse_or_refuse(data: bytes) -> SnpReport | None:
    try:
        return parse_report(data)
    except VerificationError as exc:
        assert exc.check == "snp_report_format"
        return None


@FUZZ
@given(st.binary(max_size=2 * REPORT_SIZE))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    _parse_or_refuse(data)


@FUZZ
@given(st.binary(min_size=REPORT_SIZE, max_size=REPORT_SIZE))
def test_fuzz_report_sized_bytes(data: bytes) -> None:
    report = _parse_or_refuse(data)
    if report is not None:
        assert 2 <= report.version <= 5


@FUZZ
@given(st.sampled_from(SNP_POSITIVES), st.data())
def test_fuzz_bit_flips_and_truncations_of_real_reports(entry: dict[str, Any], data: st.DataObject) -> None:
    raw = bytearray(read_report(entry))
    for _ in range(data.draw(st.integers(1, 4), label="flips")):
        raw[data.draw(st.integers(0, len(raw) - 1), label="byte")] ^= 1 << data.draw(st.integers(0, 7))
    cut = data.draw(st.integers(0, len(raw)), label="keep")
    report = _parse_or_refuse(bytes(raw[:cut]))
    if report is not None:
        assert cut == REPORT_SIZE
