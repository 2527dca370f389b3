"""The self-describing payload format, the label codec and the standard scheme."""

from __future__ import annotations

import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from acpsl import PayloadError
from acpsl.cut.labels import decode_labels, encode_labels
from acpsl.cut.payload import (
    KIND_FORWARD,
    KIND_GRAD,
    PayloadReader,
    decode_header,
    encode_header,
    header_size,
    pack_bits,
    unpack_bits,
)
from acpsl.schemes import create


def test_header_layout_is_exact() -> None:
    data = encode_header(scheme_id=7, kind=KIND_GRAD, shape=(128, 64, 7, 7))
    assert len(data) == header_size(4) == 22
    assert data[:2] == b"SL"
    assert data[2:6] == bytes([1, 7, KIND_GRAD, 4])
    assert struct.unpack("<4I", data[6:]) == (128, 64, 7, 7)
    reader = PayloadReader(data, what="t")
    assert decode_header(reader, scheme_id=7, kind=KIND_GRAD) == (128, 64, 7, 7)
    reader.finish()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b"XX" + b[2:], "bad magic"),
        (lambda b: b[:2] + bytes([9]) + b[3:], "format version"),
        (lambda b: b[:3] + bytes([2]) + b[4:], "scheme id"),
        (lambda b: b[:4] + bytes([KIND_GRAD]) + b[5:], "kind"),
        (lambda b: b[:5] + bytes([200]) + b[6:], "dimensions"),
        (lambda b: b[:10], "truncated"),
    ],
)
def test_header_rejects_corruption(mutate, message: str) -> None:
    data = mutate(encode_header(scheme_id=1, kind=KIND_FORWARD, shape=(2, 3)))
    with pytest.raises(PayloadError, match=message):
        decode_header(PayloadReader(data, what="t"), scheme_id=1, kind=KIND_FORWARD)


def test_reader_rejects_trailing_bytes_and_non_bytes() -> None:
    reader = PayloadReader(b"abc", what="t")
    reader.take(2)
    with pytest.raises(PayloadError, match="trailing"):
        reader.finish()
    with pytest.raises(PayloadError, match="expected bytes"):
        PayloadReader("text", what="t")  # type: ignore[arg-type]


@given(st.lists(st.booleans(), min_size=0, max_size=70))
def test_bits_round_trip(bits: list[bool]) -> None:
    mask = torch.tensor(bits, dtype=torch.bool)
    data = pack_bits(mask)
    assert len(data) == (len(bits) + 7) // 8
    assert torch.equal(unpack_bits(data, len(bits)), mask)


def test_bits_reject_padding_and_length() -> None:
    with pytest.raises(PayloadError, match="padding"):
        unpack_bits(bytes([0b1000_0000]), 3)
    with pytest.raises(PayloadError, match="needs 1 bytes"):
        unpack_bits(b"\x00\x00", 3)


@pytest.mark.parametrize(("top", "width"), [(9, 1), (255, 1), (256, 2), (70_000, 4)])
def test_labels_use_smallest_width(top: int, width: int) -> None:
    labels = torch.tensor([0, top, 3, 1])
    data = encode_labels(labels)
    assert len(data) == header_size(1) + 1 + width * 4
    assert torch.equal(decode_labels(data), labels)
    with pytest.raises(PayloadError):
        decode_labels(data[:-1])
    with pytest.raises(PayloadError):
        decode_labels(data + b"\x00")


def test_standard_scheme_bytes_and_round_trip() -> None:
    scheme = create("standard")
    x = torch.randn(16, 64, 7, 7)
    data = scheme.compress(x)
    assert len(data) == 22 + 16 * 64 * 7 * 7 * 4
    assert torch.equal(scheme.decompress(data), x)
    g = torch.randn_like(x)
    gdata = scheme.compress_grad(g)
    assert len(gdata) == len(data)
    assert torch.equal(scheme.decompress_grad(gdata), g)
    with pytest.raises(PayloadError, match="kind"):
        scheme.decompress(gdata)
    with pytest.raises(PayloadError, match="truncated"):
        scheme.decompress(data[:-4])
    with pytest.raises(PayloadError, match="trailing"):
        scheme.decompress(data + b"\x00" * 4)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_standard_decoder_never_raises_anything_but_payload_error(blob: bytes) -> None:
    scheme = create("standard")
    try:
        scheme.decompress(blob)
    except PayloadError:
        pass
