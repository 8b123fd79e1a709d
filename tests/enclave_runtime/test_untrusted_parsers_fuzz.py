"""Parsers in the backends that read bytes from the untrusted host — a quote's embedded PCK certificate (to
pick collateral), a Gramine SIGSTRUCT — fail only with teelab's own errors, whatever the bytes."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from teelab.enclave_runtime.cvm.pccs import quote_platform
from teelab.enclave_runtime.gramine.sigstruct import SIGSTRUCT_SIZE, parse_sigstruct
from teelab.errors import EnclaveError, EvidenceError

VECTORS = Path(__file__).resolve().parents[2].parent / "shared" / "vectors"
QUOTES = [
    (VECTORS / "sgx-dcap-qvl" / "sgx_quote.bin").read_bytes(),
    (VECTORS / "tdx-dcap-qvl" / "tdx_quote.bin").read_bytes(),
]


def test_the_real_quotes_name_their_platforms() -> None:
    assert quote_platform(QUOTES[0]).fmspc.hex() == "00a067110000"
    assert quote_platform(QUOTES[1]).tee == "tdx"


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(QUOTES), st.data())
def test_mutated_quotes(quote: bytes, data: st.DataObject) -> None:
    mutated = bytearray(quote)
    start = quote.index(b"-----BEGIN CERTIFICATE-----")
    # Most mutations land in the embedded PCK certificate: that is what the parser decodes.
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(start, len(mutated) - 1) | st.integers(0, len(mutated) - 1))
        mutated[at] = data.draw(st.integers(0, 255))
    try:
        quote_platform(bytes(mutated))
    except EvidenceError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=5000))
def test_arbitrary_bytes_as_quotes(data: bytes) -> None:
    try:
        quote_platform(data)
    except EvidenceError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=SIGSTRUCT_SIZE, max_size=SIGSTRUCT_SIZE) | st.binary(max_size=2000), st.booleans())
def test_sigstructs(data: bytes, with_header: bool) -> None:
    from teelab.enclave_runtime.gramine import sigstruct

    if with_header and len(data) == SIGSTRUCT_SIZE:
        buffer = bytearray(data)
        buffer[sigstruct.OFFSET_HEADER : sigstruct.OFFSET_HEADER + 16] = sigstruct.HEADER
        buffer[sigstruct.OFFSET_HEADER2 : sigstruct.OFFSET_HEADER2 + 16] = sigstruct.HEADER2
        buffer[sigstruct.OFFSET_EXPONENT : sigstruct.OFFSET_EXPONENT + 4] = (3).to_bytes(4, "little")
        data = bytes(buffer)
    try:
        parse_sigstruct(data)
    except EnclaveError:
        pass
