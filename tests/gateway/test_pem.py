"""The one strict PEM splitter: damage anywhere refuses the whole text, and only PemError comes out."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from teelab.gateway.pem import PemError, pem_blocks, without_blocks


def block(label: str, der: bytes) -> bytes:
    body = base64.encodebytes(der)
    return b"-----BEGIN " + label.encode() + b"-----\n" + body + b"-----END " + label.encode() + b"-----\n"


def test_blocks_in_order_with_their_spans() -> None:
    text = block("CERTIFICATE", b"one") + block("X509 CRL", b"two") + b"\0\0"
    blocks = pem_blocks(text, what="t")
    assert [(b.label, b.der) for b in blocks] == [("CERTIFICATE", b"one"), ("X509 CRL", b"two")]
    crls = pem_blocks(text, what="t", only="X509 CRL")
    assert (
        without_blocks(text, crls) == block("CERTIFICATE", b"one") + b"\n\0\0"
    )  # the newline after END stays


@pytest.mark.parametrize(
    ("text", "strict", "words"),
    [
        (block("CERTIFICATE", b"x").replace(b"-----END CERTIFICATE-----", b""), False, "not closed"),
        (block("CERTIFICATE", b"x") + b"-----BEGIN CERTIFICATE-----\nAAAA\n", False, "2 PEM BEGIN markers"),
        (block("X509 CRL", b"x").replace(b"\n", b"\n!", 1), False, "a PEM CRL block is not valid base64"),
        (b"junk\n" + block("CERTIFICATE", b"x"), True, "stray bytes before PEM block 1"),
        (block("CERTIFICATE", b"x") + b"junk", True, "stray bytes after its last PEM block"),
    ],
)
def test_damage_refuses_the_whole_text(text: bytes, strict: bool, words: str) -> None:
    with pytest.raises(PemError, match=words):
        pem_blocks(text, what="the text", strict_layout=strict)


def test_lenient_layout_ignores_text_beside_blocks() -> None:
    text = b"Certificate:\n  Data: ...\n" + block("CERTIFICATE", b"x") + b"trailer\n"
    assert [b.der for b in pem_blocks(text, what="t", strict_layout=False)] == [b"x"]


@given(st.binary(max_size=2000), st.booleans())
def test_fuzz_only_pem_errors(data: bytes, strict: bool) -> None:
    text = b"-----BEGIN CERTIFICATE-----\n" + data if data[:1] == b"\x00" else data
    try:
        pem_blocks(text, what="t", strict_layout=strict)
    except PemError:
        pass
