"""Fuzzing: whatever the bytes, DCAP parsing and verification raise VerificationError and nothing else.

``internal_error`` is how the public functions report an exception they did not expect; it must never occur.
"""

from __future__ import annotations

import base64
import json
import struct
import tempfile
from collections.abc import Callable
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teelab.errors import VerificationError
from teelab.gateway.anchors import TrustAnchors
from teelab.gateway.dcap import (
    IntelCollateral,
    jsondoc,
    load_collateral,
    parse_pck_extension,
    parse_quote,
    verify_intel_quote,
)
from teelab.gateway.dcap.chain import pck_chain_from_pem
from teelab.gateway.dcap.collateral import BUNDLE_KEYS
from teelab.gateway.dcap.guard import INTERNAL
from teelab.gateway.dcap.pck import extension_bytes
from teelab.gateway.dcap.pem import load_certificates, load_crl, pem_blocks

VECTORS = Path(__file__).parents[2].parent / "shared" / "vectors"
INTEL_TEST_ROOT = "842a5bcb64ba3f7d755036ce1bb85778b3481a5dd75f4731c381b8eea658aa0d"
ANCHORS = TrustAnchors().with_intel_root(INTEL_TEST_ROOT, "Intel test root")

# (quote, collateral, verification time) of every real Intel quote.
REAL = [
    ("sgx-dcap-qvl/sgx_quote.bin", "sgx-dcap-qvl/sgx_quote_collateral.json", "2025-07-01T00:00:00+00:00"),
    ("tdx-dcap-qvl/tdx_quote.bin", "tdx-dcap-qvl/tdx_quote_collateral.json", "2025-07-01T00:00:00+00:00"),
    (
        "tdx-dcap-qvl/tdx_quote_outdated.bin",
        "tdx-dcap-qvl/tdx_quote_outdated_collateral.json",
        "2026-03-01T00:00:00+00:00",
    ),
    (
        "tdx-dcap-qvl/near_tdx_quote.hex",
        "tdx-dcap-qvl/near_tdx_quote_collateral.json",
        "2025-09-15T00:00:00+00:00",
    ),
    ("tdx-go-tdx-guest/tdx_prod_quote_SPR_E4.dat", "tdx-go-tdx-guest", "2023-07-01T01:00:00+00:00"),
    (
        "tdx-go-tdx-guest/quote_v5_sample.dat",
        "tdx-go-tdx-guest/quote_v5_sample_collateral.ASSEMBLED.json",
        "2026-02-25T00:00:00+00:00",
    ),
    ("sgx-intel-qvl-sample-nonprod/quote.dat", "sgx-intel-qvl-sample-nonprod", "2024-01-01T00:00:00+00:00"),
]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@cache
def quote_bytes(index: int) -> bytes:
    path = VECTORS / REAL[index][0]
    data = path.read_bytes()
    return bytes.fromhex(data.decode().strip()) if path.suffix == ".hex" else data


@cache
def collateral(index: int) -> IntelCollateral:
    return load_collateral(VECTORS / REAL[index][1])


def at(index: int) -> datetime:
    return datetime.fromisoformat(REAL[index][2])


@cache
def sgx_bundle() -> dict[str, str]:
    bundle: dict[str, str] = json.loads((VECTORS / "sgx-dcap-qvl/sgx_quote_collateral.json").read_text())
    return bundle


@cache
def real_extensions() -> list[bytes]:
    out = []
    for i in range(len(REAL) - 1):  # the last quote embeds no chain
        ext = extension_bytes(
            pck_chain_from_pem(parse_quote(quote_bytes(i)).signature.certification.data).leaf
        )
        assert ext is not None
        out.append(ext)
    return out


def only_verification_errors(call: Callable[[], object]) -> None:
    try:
        call()
    except VerificationError as exc:
        assert exc.check != INTERNAL, exc.detail
        assert exc.detail


def mutate(data: bytes, draw: Callable[[st.SearchStrategy[Any]], Any]) -> bytes:
    """Bit flips, byte overwrites, truncation, deletion or insertion somewhere in ``data``."""
    kind = draw(st.sampled_from(["flip", "byte", "truncate", "delete", "insert"]))
    out = bytearray(data)
    if kind == "truncate":
        return bytes(out[: draw(st.integers(0, len(out)))])
    pos = draw(st.integers(0, max(0, len(out) - 1)))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 3))):
            pos = draw(st.integers(0, len(out) - 1))
            out[pos] ^= 1 << draw(st.integers(0, 7))
    elif kind == "byte":
        out[pos] = draw(st.integers(0, 255))
    elif kind == "delete":
        del out[pos : pos + draw(st.integers(1, 64))]
    else:
        out[pos:pos] = draw(st.binary(min_size=1, max_size=64))
    return bytes(out)


@st.composite
def mutated_quotes(draw: st.DrawFn) -> tuple[int, bytes]:
    index = draw(st.integers(0, len(REAL) - 1))
    return index, mutate(quote_bytes(index), draw)


# -- quotes ----------------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=6000))
def test_parse_quote_random_bytes(data: bytes) -> None:
    only_verification_errors(lambda: parse_quote(data))


@FUZZ
@given(st.integers(3, 5), st.sampled_from([0, 0x81]), st.binary(max_size=3000))
def test_parse_quote_plausible_headers(version: int, tee: int, rest: bytes) -> None:
    data = version.to_bytes(2, "little") + b"\x02\x00" + tee.to_bytes(4, "little") + rest
    only_verification_errors(lambda: parse_quote(data))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_quotes())
def test_verify_mutated_real_quotes(case: tuple[int, bytes]) -> None:
    index, data = case
    only_verification_errors(
        lambda: verify_intel_quote(data, collateral(index), at=at(index), anchors=ANCHORS)
    )


def test_every_single_byte_of_a_quote_header_and_body_matters() -> None:
    # Each byte of the signed region is covered by the quote signature (or refused by the parser).
    data = quote_bytes(0)
    for pos in range(0, 432, 3):
        mutated = bytearray(data)
        mutated[pos] ^= 0x01
        try:
            verify_intel_quote(bytes(mutated), collateral(0), at=at(0), anchors=ANCHORS)
        except VerificationError as exc:
            assert exc.check in ("quote_parse", "quote_signature"), (pos, exc)
        else:
            raise AssertionError(f"flipping byte {pos} went unnoticed")


# -- PCK extension ---------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=600))
def test_pck_extension_random_bytes(data: bytes) -> None:
    only_verification_errors(lambda: parse_pck_extension(data))


@FUZZ
@given(st.data())
def test_pck_extension_mutations(data: st.DataObject) -> None:
    original = data.draw(st.sampled_from(real_extensions()))
    mutated = mutate(original, data.draw)
    only_verification_errors(lambda: parse_pck_extension(mutated))


# -- JSON documents and bundles --------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)


@FUZZ
@given(st.sampled_from(["tcb_info", "qe_identity"]), st.data())
def test_signed_documents_with_a_field_replaced(key: str, data: st.DataObject) -> None:
    bundle = dict(sgx_bundle())
    doc: dict[str, Any] = json.loads(bundle[key])
    path: list[Any] = []
    node: Any = doc
    while isinstance(node, dict | list) and node and data.draw(st.booleans()):
        step = data.draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
        path.append(step)
        node = node[step]
    target: Any = doc
    for step in path[:-1]:
        target = target[step]
    if path:
        target[path[-1]] = data.draw(json_values)
    bundle[key] = json.dumps(doc)
    only_verification_errors(lambda: IntelCollateral.from_bundle_json(json.dumps(bundle)))


@FUZZ
@given(st.sampled_from(["tcb_info", "qe_identity"]), st.data())
def test_signed_document_text_mutations(key: str, data: st.DataObject) -> None:
    bundle = dict(sgx_bundle())
    text = mutate(bundle[key].encode(), data.draw).decode("utf-8", "replace")
    bundle[key] = text

    def run() -> None:
        loaded = IntelCollateral.from_bundle_json(json.dumps(bundle))
        verify_intel_quote(quote_bytes(0), loaded, at=at(0), anchors=ANCHORS)

    only_verification_errors(run)


@FUZZ
@given(
    st.dictionaries(st.sampled_from([*BUNDLE_KEYS, "pck_certificate_chain", "x"]), json_values, max_size=12)
)
def test_bundle_with_random_values(values: dict[str, Any]) -> None:
    bundle: dict[str, Any] = dict(sgx_bundle())
    bundle.update(values)
    only_verification_errors(lambda: IntelCollateral.from_bundle_json(json.dumps(bundle)))


@FUZZ
@given(st.sampled_from(list(BUNDLE_KEYS)), st.data())
def test_bundle_field_byte_mutations(key: str, data: st.DataObject) -> None:
    bundle = dict(sgx_bundle())
    value = bundle[key]
    if key in ("root_ca_crl", "pck_crl", "tcb_info_signature", "qe_identity_signature"):
        bundle[key] = mutate(bytes.fromhex(value), data.draw).hex()
    else:
        bundle[key] = mutate(value.encode(), data.draw).decode("latin-1")

    def run() -> None:
        loaded = IntelCollateral.from_bundle_json(json.dumps(bundle))
        verify_intel_quote(quote_bytes(0), loaded, at=at(0), anchors=ANCHORS)

    only_verification_errors(run)


@FUZZ
@given(st.binary(max_size=2000) | st.text(max_size=2000))
def test_bundle_random_input(data: bytes | str) -> None:
    only_verification_errors(lambda: IntelCollateral.from_bundle_json(data))


@FUZZ
@given(st.text(max_size=300))
def test_members_with_spans_random_text(text: str) -> None:
    try:
        members = jsondoc.members_with_spans(text)
    except jsondoc.DocError:
        return
    for value, start, end in members.values():
        assert json.loads(text[start:end]) == value


# -- PEM and CRLs ----------------------------------------------------------------------------------


@FUZZ
@given(st.data())
def test_pem_chain_mutations(data: st.DataObject) -> None:
    pem = parse_quote(quote_bytes(data.draw(st.integers(0, len(REAL) - 2)))).signature.certification.data
    mutated = mutate(pem, data.draw)
    only_verification_errors(lambda: load_certificates(mutated, check="pck_chain", what="chain"))
    only_verification_errors(lambda: pck_chain_from_pem(mutated))


def _with_chain(quote: bytes, pem: bytes) -> bytes:
    """The SGX v3 quote with its certification data replaced (lengths recomputed)."""
    parsed = parse_quote(quote)
    sig = parsed.signature
    head = sig.signature + sig.attestation_key + sig.qe_report.raw + sig.qe_report_signature
    auth = struct.pack("<H", len(sig.qe_auth_data)) + sig.qe_auth_data
    body = head + auth + struct.pack("<HI", 5, len(pem)) + pem
    return parsed.signed + struct.pack("<I", len(body)) + body


def _pem(der: bytes) -> bytes:
    b64 = base64.b64encode(der)
    lines = b"\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
    return b"-----BEGIN CERTIFICATE-----\n" + lines + b"\n-----END CERTIFICATE-----\n"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2), st.data())
def test_certificate_der_mutations(which: int, data: st.DataObject) -> None:
    # Mutating the DER (not the base64) reaches the fields cryptography decodes lazily.
    quote = quote_bytes(0)
    ders = pem_blocks(parse_quote(quote).signature.certification.data, b"CERTIFICATE", check="t", what="t")
    ders[which] = mutate(ders[which], data.draw)
    pem = b"".join(_pem(der) for der in ders)
    only_verification_errors(lambda: pck_chain_from_pem(pem))
    only_verification_errors(
        lambda: verify_intel_quote(_with_chain(quote, pem), collateral(0), at=at(0), anchors=ANCHORS)
    )


@FUZZ
@given(st.sampled_from(["pck_crl_issuer_chain", "tcb_info_issuer_chain"]), st.integers(0, 1), st.data())
def test_collateral_certificate_der_mutations(key: str, which: int, data: st.DataObject) -> None:
    bundle = dict(sgx_bundle())
    ders = pem_blocks(bundle[key].encode(), b"CERTIFICATE", check="t", what="t")
    ders[which] = mutate(ders[which], data.draw)
    bundle[key] = b"".join(_pem(der) for der in ders).decode()

    def run() -> None:
        loaded = IntelCollateral.from_bundle_json(json.dumps(bundle))
        verify_intel_quote(quote_bytes(0), loaded, at=at(0), anchors=ANCHORS)

    only_verification_errors(run)


@FUZZ
@given(st.binary(max_size=2000))
def test_pem_random_bytes(data: bytes) -> None:
    only_verification_errors(lambda: load_certificates(data, check="pck_chain", what="chain"))
    only_verification_errors(lambda: load_crl(data, check="collateral", what="crl"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["root_ca_crl", "pck_crl"]), st.data())
def test_crl_mutations(key: str, data: st.DataObject) -> None:
    bundle = dict(sgx_bundle())
    der = mutate(bytes.fromhex(bundle[key]), data.draw)
    only_verification_errors(lambda: load_crl(der, check="collateral", what="crl"))
    bundle[key] = der.hex()

    def run() -> None:
        loaded = IntelCollateral.from_bundle_json(json.dumps(bundle))
        verify_intel_quote(quote_bytes(0), loaded, at=at(0), anchors=ANCHORS)

    only_verification_errors(run)


# -- collateral folders ----------------------------------------------------------------------------

FOLDER_FILES = sorted(
    p.name
    for p in (VECTORS / "tdx-go-tdx-guest").iterdir()
    if p.is_file() and p.suffix in (".json", ".pem", ".der")
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_collateral_folder_with_a_mutated_file(data: st.DataObject) -> None:
    victim = data.draw(st.sampled_from(FOLDER_FILES))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in FOLDER_FILES:
            content = (VECTORS / "tdx-go-tdx-guest" / name).read_bytes()
            (folder / name).write_bytes(mutate(content, data.draw) if name == victim else content)
        if data.draw(st.booleans()):
            (folder / "random.bin").write_bytes(data.draw(st.binary(max_size=300)))

        def run() -> None:
            loaded = IntelCollateral.from_folder(folder)
            verify_intel_quote(quote_bytes(4), loaded, at=at(4), anchors=ANCHORS)

        only_verification_errors(run)
