"""Bit packing (acpsl.cut.bitpack) and index coding (acpsl.cut.indices)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from acpsl.cut.bitpack import pack_uint, packed_size, unpack_uint
from acpsl.cut.indices import (
    MODE_MASK,
    MODE_PACKED,
    count_width,
    counts_size,
    decode_counts,
    decode_selection,
    encode_counts,
    encode_selection,
    index_width,
    positions_of,
    selection_mode,
    selection_size,
)
from acpsl.cut.payload import PayloadReader
from acpsl.errors import PayloadError


def naive_pack(values: list[int], width: int) -> bytes:
    """Bit by bit, least-significant first: the obviously correct reference."""
    bits = [(v >> j) & 1 for v in values for j in range(width)]
    bits += [0] * (-len(bits) % 8)
    return bytes(sum(bits[i + j] << j for j in range(8)) for i in range(0, len(bits), 8))


@pytest.mark.parametrize("width", list(range(1, 33)))
@pytest.mark.parametrize("count", [0, 1, 7, 8, 9, 23])
def test_pack_matches_naive_reference(width: int, count: int) -> None:
    rng = np.random.default_rng(width * 100 + count)
    values = rng.integers(0, 2**width, size=count, dtype=np.int64)
    packed = pack_uint(values, width=width)
    assert packed == naive_pack(values.tolist(), width)
    assert len(packed) == packed_size(count=count, width=width) == math.ceil(count * width / 8)
    assert np.array_equal(unpack_uint(packed, count=count, width=width), values)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 32), st.lists(st.integers(0, 2**32 - 1), max_size=40))
def test_pack_round_trip_hypothesis(width: int, raw: list[int]) -> None:
    values = np.array([v % (1 << width) for v in raw], dtype=np.int64)
    packed = pack_uint(values, width=width)
    assert packed == naive_pack(values.tolist(), width)
    assert np.array_equal(unpack_uint(packed, count=len(values), width=width), values)


def test_pack_extremes_and_dtypes() -> None:
    top = np.array([2**31 - 1, 0, 2**31 - 1], dtype=np.int64)
    assert np.array_equal(unpack_uint(pack_uint(top, width=31), count=3, width=31), top)
    codes = np.array([0, 65535, 1], dtype=np.uint16)
    out = unpack_uint(pack_uint(codes, width=16), count=3, width=16, dtype=np.uint16)
    assert out.dtype == np.uint16 and np.array_equal(out, codes)


def test_pack_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        pack_uint(np.array([4]), width=2)
    with pytest.raises(ValueError, match="non-negative"):
        pack_uint(np.array([-1]), width=3)
    with pytest.raises(ValueError, match="bit width"):
        pack_uint(np.array([1]), width=0)
    with pytest.raises(ValueError, match="integers"):
        pack_uint(np.array([1.0]), width=3)


def test_unpack_rejects_wrong_length_and_padding() -> None:
    packed = pack_uint(np.array([5, 3, 1]), width=3)  # 9 bits -> 2 bytes, 7 padding bits
    with pytest.raises(PayloadError, match="need 2 bytes"):
        unpack_uint(packed[:1], count=3, width=3)
    with pytest.raises(PayloadError, match="need 2 bytes"):
        unpack_uint(packed + b"\0", count=3, width=3)
    corrupt = packed[:1] + bytes([packed[1] | 0x80])
    with pytest.raises(PayloadError, match="padding"):
        unpack_uint(corrupt, count=3, width=3)


def test_index_and_count_widths() -> None:
    assert [index_width(d) for d in (1, 2, 3, 4, 5, 1024, 1025, 4096)] == [
        1,
        1,
        2,
        2,
        3,
        10,
        11,
        12,
    ]
    assert [count_width(d) for d in (1, 2, 3, 4, 255, 256)] == [1, 2, 2, 3, 8, 9]
    for d in range(2, 300):
        assert index_width(d) == math.ceil(math.log2(d))


def random_selection(batch: int, d: int, counts: list[int], seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, d, dtype=torch.bool)
    for b, c in enumerate(counts):
        mask[b, torch.randperm(d, generator=gen)[:c]] = True
    return mask


def encode(mask: torch.Tensor, *, with_mask: bool = False) -> bytes:
    batch, d = mask.shape
    extra = np.packbits(mask.numpy().reshape(-1), bitorder="little") if with_mask else None
    return encode_selection(positions_of(mask), batch=batch, d=d, mask=extra)


def decode(data: bytes, counts: np.ndarray, batch: int, d: int) -> torch.Tensor:
    """The decoded block as a mask (checking the positions come back ascending)."""
    reader = PayloadReader(data, what="test block")
    positions = decode_selection(reader, counts=counts, batch=batch, d=d)
    reader.finish()
    assert positions.dtype == np.int64 and bool(np.all(np.diff(positions) > 0))
    mask = np.zeros(batch * d, dtype=bool)
    mask[positions] = True
    return torch.from_numpy(mask.reshape(batch, d))


@pytest.mark.parametrize(
    ("batch", "d", "k"),
    [(3, 100, 2), (3, 100, 20), (2, 4096, 1), (2, 4096, 341), (2, 4096, 342), (4, 1, 1), (1, 7, 7)],
)
def test_selection_round_trip_and_exact_size(batch: int, d: int, k: int) -> None:
    mask = random_selection(batch, d, [k] * batch, seed=d + k)
    data = encode(mask)
    assert encode(mask, with_mask=True) == data
    w = index_width(d)
    packed, bitmask = math.ceil(batch * k * w / 8), math.ceil(batch * d / 8)
    assert (
        len(data) == selection_size(total=batch * k, batch=batch, d=d) == 1 + min(packed, bitmask)
    )
    assert data[0] == (MODE_MASK if bitmask <= packed else MODE_PACKED)
    assert torch.equal(decode(data, np.full(batch, k), batch, d), mask)


def test_mode_switches_where_the_mask_gets_smaller() -> None:
    # d = 4096: 12-bit indices; 340 take 510 bytes, 341 take 512 = the mask (a tie: mask).
    assert selection_mode(total=340, batch=1, d=4096) == MODE_PACKED
    assert selection_mode(total=341, batch=1, d=4096) == MODE_MASK


def test_variable_counts_round_trip() -> None:
    counts = [0, 5, 1, 0, 3]
    mask = random_selection(5, 64, counts, seed=3)
    data = encode(mask)
    assert data[0] == MODE_PACKED
    assert torch.equal(decode(data, np.array(counts), 5, 64), mask)
    encoded = encode_counts(np.array(counts), d=64)
    assert len(encoded) == counts_size(batch=5, d=64) == math.ceil(5 * 7 / 8)
    reader = PayloadReader(encoded, what="counts")
    assert decode_counts(reader, batch=5, d=64).tolist() == counts


def test_selection_rejects_malformed_blocks() -> None:
    counts, d = np.array([2, 2]), 40  # 6-bit indices, so 40..63 fit the width but are invalid

    def block(indices: list[int], mode: int = MODE_PACKED) -> bytes:
        return bytes([mode]) + pack_uint(np.array(indices), width=6)

    assert decode(block([3, 9, 0, 39]), counts, 2, d).sum() == 4
    for data, message in [
        (block([3, 9, 0, 40]), "out of range"),
        (block([9, 3, 0, 1]), "ascending"),
        (block([3, 3, 0, 1]), "ascending"),
        (block([3, 9, 0, 39], mode=MODE_MASK), "mode"),
        (block([3, 9, 0, 39], mode=7), "unknown index coding mode"),
        (block([3, 9, 0, 39])[:-1], "truncated"),
    ]:
        with pytest.raises(PayloadError, match=message):
            decode(data, counts, 2, d)
    # A bit mask whose per-sample counts disagree with the declared k.
    mask = random_selection(2, 8, [5, 4], seed=0)
    with pytest.raises(PayloadError, match="keeps"):
        decode(encode(mask), np.array([5, 5]), 2, 8)
    with pytest.raises(PayloadError, match="claims"):
        decode_counts(PayloadReader(encode_counts(np.array([9]), d=9), what="c"), batch=1, d=8)
