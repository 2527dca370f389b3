"""Fixed-width unsigned integer bit packing, vectorized with NumPy.

Quantization codes (``b`` bits each) and indices (``ceil(log2 d)`` bits each) cross the cut as
one continuous little-endian bit stream: value ``i`` occupies bits ``i*w .. i*w + w - 1``,
least-significant bit first, and the stream is padded with zero bits to a whole byte. So
``count`` values of width ``w`` take exactly ``ceil(count * w / 8)`` bytes.

Why not a bit-by-bit expansion: for widths that are not 1, 8, 16 or 32 the values are handled
in groups of eight, which always fill exactly ``w`` bytes; each of the (at most 8 * 5) byte
slots of a group is one vectorized NumPy operation over all groups, so the cost is a few passes
over the data instead of ``w`` passes over a ``count * w`` bit array.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import numpy.typing as npt

from acpsl.errors import PayloadError

#: Widest value the packer handles (indices of up to 2**32 positions).
MAX_WIDTH = 32
#: Streams of at most this many bits go through a bit matrix (fewer NumPy calls for small
#: inputs such as per-sample counts); longer ones through the byte-slot plan below.
SMALL_BITS = 1 << 15


def packed_size(*, count: int, width: int) -> int:
    """Bytes of ``count`` values packed at ``width`` bits: ``ceil(count * width / 8)``."""
    _check_width(width)
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    return (count * width + 7) // 8


def pack_uint(values: np.ndarray, *, width: int) -> bytes:
    """Pack non-negative integers into a little-endian bit stream of ``width`` bits each.

    Args:
        values: integers in ``[0, 2**width)`` (any shape; flattened in C order).
        width: bits per value, 1 to 32.

    Returns:
        ``ceil(values.size * width / 8)`` bytes; padding bits are zero.

    Raises:
        ValueError: if ``width`` is out of range or a value does not fit in ``width`` bits.
    """
    _check_width(width)
    flat = np.ascontiguousarray(values).reshape(-1)
    count = flat.size
    if count == 0:
        return b""
    if flat.dtype.kind not in "ui":
        raise ValueError(f"pack_uint needs integers, got dtype {flat.dtype}")
    if flat.dtype.kind == "i" and int(flat.min()) < 0:
        raise ValueError("pack_uint needs non-negative integers")
    # An unsigned dtype no wider than the width cannot overflow it: skip the pass over the data.
    if not (flat.dtype.kind == "u" and 8 * flat.dtype.itemsize <= width):
        top = int(flat.max())
        if top >> width:
            raise ValueError(f"a value does not fit in {width} bits (max {top})")
    if width == 8:
        return flat.astype(np.uint8, copy=False).tobytes()
    if width == 16:
        return flat.astype("<u2", copy=False).tobytes()
    if width == 32:
        return flat.astype("<u4", copy=False).tobytes()
    if width == 1:
        return np.packbits(flat.astype(bool), bitorder="little").tobytes()
    if width in (2, 4):
        per_byte = 8 // width
        padded = np.zeros(-(-count // per_byte) * per_byte, dtype=np.uint8)
        padded[:count] = flat
        lanes = padded.reshape(-1, per_byte)
        packed = lanes[:, 0].copy()
        for j in range(1, per_byte):
            packed |= lanes[:, j] << np.uint8(j * width)
        return packed.tobytes()
    if count * width <= SMALL_BITS:
        # Few values: expand to a bit matrix (value i's bits in row i, least-significant
        # first) and let np.packbits write the stream; a handful of calls in all.
        bits = (flat.astype(np.uint64)[:, None] >> _shifts(width)) & np.uint64(1)
        return np.packbits(bits.astype(np.uint8).reshape(-1), bitorder="little").tobytes()
    groups = -(-count // 8)
    vals = np.zeros((groups, 8), dtype=np.uint64)
    vals.reshape(-1)[:count] = flat
    out = np.zeros((groups, width), dtype=np.uint8)
    for i, byte, shift in _plan(width):
        column = vals[:, i]
        # A negative shift means the byte holds bits of value i that start below the byte.
        part = (column << np.uint64(shift)) if shift >= 0 else (column >> np.uint64(-shift))
        out[:, byte] |= (part & np.uint64(0xFF)).astype(np.uint8)
    return out.reshape(-1)[: packed_size(count=count, width=width)].tobytes()


def unpack_uint(
    data: bytes | memoryview, *, count: int, width: int, dtype: npt.DTypeLike = np.int64
) -> np.ndarray:
    """Inverse of :func:`pack_uint`: ``count`` values of ``width`` bits.

    Args:
        data: the packed stream.
        count: number of values in it.
        width: bits per value, 1 to 32.
        dtype: integer dtype of the result (int64 by default; a narrower one such as uint16
            for quantization codes saves a conversion pass). For widths 8, 16 and 32 with the
            matching dtype the result is a read-only view of ``data`` (no copy).

    Raises:
        PayloadError: if ``data`` is not exactly ``ceil(count * width / 8)`` bytes or a padding
            bit is set (so a corrupted stream is not silently accepted).
    """
    _check_width(width)
    expected = packed_size(count=count, width=width)
    if len(data) != expected:
        raise PayloadError(f"{count} values of {width} bits need {expected} bytes, got {len(data)}")
    if count == 0:
        return np.zeros(0, dtype=dtype)
    raw = np.frombuffer(data, dtype=np.uint8)
    if width == 8:
        return raw.astype(dtype, copy=False)
    if width == 16:
        return np.frombuffer(data, dtype="<u2").astype(dtype, copy=False)
    if width == 32:
        return np.frombuffer(data, dtype="<u4").astype(dtype, copy=False)
    spare = expected * 8 - count * width
    if spare and int(raw[-1]) >> (8 - spare):
        raise PayloadError("bit stream has padding bits set; payload is corrupt")
    if width == 1:
        return np.unpackbits(raw, bitorder="little")[:count].astype(dtype)
    if width in (2, 4):
        shifts = np.arange(0, 8, width, dtype=np.uint8)
        lanes = (raw[:, None] >> shifts) & np.uint8((1 << width) - 1)
        return lanes.reshape(-1)[:count].astype(dtype)
    if count * width <= SMALL_BITS:
        bits = np.unpackbits(raw, count=count * width, bitorder="little").reshape(count, width)
        vals_small = (bits.astype(np.uint64) << _shifts(width)).sum(axis=1, dtype=np.uint64)
        return vals_small.astype(dtype)
    groups = -(-count // 8)
    padded = np.zeros(groups * width, dtype=np.uint8)
    padded[:expected] = raw
    block = padded.reshape(groups, width).astype(np.uint64)
    vals = np.zeros((groups, 8), dtype=np.uint64)
    for i, byte, shift in _plan(width):
        column = block[:, byte]
        part = (column >> np.uint64(shift)) if shift >= 0 else (column << np.uint64(-shift))
        vals[:, i] |= part
    vals &= np.uint64((1 << width) - 1)
    return vals.reshape(-1)[:count].astype(dtype)


@lru_cache(maxsize=MAX_WIDTH + 1)
def _shifts(width: int) -> np.ndarray:
    """``[0, 1, ..., width - 1]`` as uint64 (the bit positions within a value)."""
    return np.arange(width, dtype=np.uint64)


@lru_cache(maxsize=MAX_WIDTH + 1)
def _plan(width: int) -> tuple[tuple[int, int, int], ...]:
    """For a group of 8 values of ``width`` bits (exactly ``width`` bytes): every
    ``(value index, byte index, shift)`` such that byte ``byte`` holds
    ``(value << shift) & 0xFF`` (a negative shift is a right shift)."""
    plan = []
    for i in range(8):
        start = i * width
        for byte in range(start // 8, (start + width - 1) // 8 + 1):
            plan.append((i, byte, start - 8 * byte))
    return tuple(plan)


def _check_width(width: int) -> None:
    if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= MAX_WIDTH:
        raise ValueError(f"bit width must be an integer in 1..{MAX_WIDTH}, got {width!r}")
