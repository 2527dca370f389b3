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
    CODE_DTYPES,
    DTYPE_CODES,
    HEADER_FIXED,
    KIND_FORWARD,
    KIND_GRAD,
    KIND_LABELS,
    PayloadReader,
    ShapeLimit,
    decode_header,
    encode_header,
    header_size,
    pack_bits,
    unpack_bits,
)
from acpsl.schemes import create


def test_header_layout_is_exact() -> None:
    data = encode_header(scheme_id=7, kind=KIND_GRAD, shape=(128, 64, 7, 7))
    assert HEADER_FIXED == 7
    assert len(data) == header_size(4) == 23
    assert data[:2] == b"SL"
    # version 2, scheme id, kind, dtype code (float32 = 0), ndim
    assert data[2:7] == bytes([2, 7, KIND_GRAD, 0, 4])
    assert struct.unpack("<4I", data[7:]) == (128, 64, 7, 7)
    limit = ShapeLimit.exact((128, 64, 7, 7))
    reader = PayloadReader(data, what="t")
    assert decode_header(reader, scheme_id=7, kind=KIND_GRAD, limit=limit) == (128, 64, 7, 7)
    reader.finish()
    # A header alone declaring 1.6 MB: refused unless the decoder expects that shape.
    with pytest.raises(PayloadError, match="more than 65536x"):
        decode_header(PayloadReader(data, what="t"), scheme_id=7, kind=KIND_GRAD)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b"XX" + b[2:], "bad magic"),
        (lambda b: b[:2] + bytes([9]) + b[3:], "format version"),
        (lambda b: b[:3] + bytes([2]) + b[4:], "scheme id"),
        (lambda b: b[:4] + bytes([KIND_GRAD]) + b[5:], "kind"),
        (lambda b: b[:5] + bytes([200]) + b[6:], "unknown dtype code 200"),
        (lambda b: b[:5] + bytes([DTYPE_CODES[torch.int64]]) + b[6:], "declares dtype int64"),
        (lambda b: b[:6] + bytes([200]) + b[7:], "dimensions"),
        (lambda b: b[:10], "truncated"),
    ],
)
def test_header_rejects_corruption(mutate, message: str) -> None:
    data = mutate(encode_header(scheme_id=1, kind=KIND_FORWARD, shape=(2, 3)))
    with pytest.raises(PayloadError, match=message):
        decode_header(PayloadReader(data, what="t"), scheme_id=1, kind=KIND_FORWARD)


@pytest.mark.parametrize("dtype", list(DTYPE_CODES))
def test_header_dtype_round_trip(dtype: torch.dtype) -> None:
    data = encode_header(scheme_id=3, kind=KIND_FORWARD, shape=(5, 2), dtype=dtype)
    assert data[5] == DTYPE_CODES[dtype] and CODE_DTYPES[data[5]] == dtype
    reader = PayloadReader(data, what="t")
    assert decode_header(reader, scheme_id=3, kind=KIND_FORWARD, dtype=dtype) == (5, 2)
    reader.finish()


def test_dtype_codes_are_distinct_bytes() -> None:
    assert sorted(DTYPE_CODES.values()) == list(range(len(DTYPE_CODES)))
    with pytest.raises(ValueError, match="no payload code"):
        encode_header(scheme_id=3, kind=KIND_FORWARD, shape=(1,), dtype=torch.complex64)


def test_header_rejects_unknown_dtype_code() -> None:
    data = bytearray(encode_header(scheme_id=3, kind=KIND_FORWARD, shape=(5, 2)))
    data[5] = 99
    with pytest.raises(PayloadError, match="unknown dtype code 99"):
        decode_header(PayloadReader(bytes(data), what="t"), scheme_id=3, kind=KIND_FORWARD)


def test_header_rejects_dtype_the_decoder_does_not_rebuild() -> None:
    data = encode_header(scheme_id=3, kind=KIND_FORWARD, shape=(5, 2), dtype=torch.float16)
    with pytest.raises(
        PayloadError, match="payload declares dtype float16, this decoder rebuilds float32"
    ):
        decode_header(PayloadReader(data, what="t"), scheme_id=3, kind=KIND_FORWARD)
    # the real decoders check it too: float32 labels, int64 smashed data
    labels = bytearray(encode_labels(torch.tensor([1, 2, 3])))
    assert labels[4] == KIND_LABELS and labels[5] == DTYPE_CODES[torch.int64]
    labels[5] = DTYPE_CODES[torch.float32]
    with pytest.raises(PayloadError, match="declares dtype float32, this decoder rebuilds int64"):
        decode_labels(bytes(labels))
    smashed = bytearray(create("standard").compress(torch.randn(2, 3)))
    smashed[5] = DTYPE_CODES[torch.int64]
    with pytest.raises(PayloadError, match="declares dtype int64, this decoder rebuilds float32"):
        create("standard").decompress(bytes(smashed))


def test_header_rejects_format_version_1() -> None:
    # a version-1 header: magic, version 1, scheme, kind, ndim, shape (no dtype byte)
    v1 = b"SL" + struct.pack("<BBBB2I", 1, 3, KIND_FORWARD, 2, 5, 2)
    with pytest.raises(PayloadError, match="format version 1, this acpsl reads version 2"):
        decode_header(PayloadReader(v1, what="t"), scheme_id=3, kind=KIND_FORWARD)


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
    assert len(data) == header_size(4) + 16 * 64 * 7 * 7 * 4
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
