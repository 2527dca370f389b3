"""Fixed-width unsigned integer bit packing, vectorized with NumPy.

Quantization codes (``b`` bits each) and indices (``ceil(log2 d)`` bits each) cross the cut as
one continuous little-endian bit stream: value ``i`` occupies bits ``i*w .. i*w + w - 1``,
least-significant bit first, and the stream is padded with zero bits to a whole byte. So
``count`` values of width ``w`` take exactly ``ceil(count * w / 8)`` bytes.

Widths 8, 16 and 32 are plain little-endian integers; every other width goes through one
compiled pass (:mod:`acpsl.kernels.bits`) that shifts values into a 64-bit accumulator and
stores 32 bits at a time.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from acpsl.errors import PayloadError
from acpsl.kernels import bits as bit_kernels

#: Widest value the packer handles (indices of up to 2**32 positions).
MAX_WIDTH = 32


def packed_size(*, count: int, width: int) -> int:
    """Bytes of ``count`` values packed at ``width`` bits: ``ceil(count * width / 8)``."""
    _check_width(width)
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    return (count * width + 7) // 8


def pack_uint(values: np.ndarray, *, width: int) -> bytes:
    """Pack non-negative integers into a little-endian bit stream of ``width`` bits each.

    :func:`packed_buffer` as ``bytes``.

    Args:
        values: integers in ``[0, 2**width)`` (any shape; flattened in C order).
        width: bits per value, 1 to 32.

    Returns:
        ``ceil(values.size * width / 8)`` bytes; padding bits are zero.

    Raises:
        ValueError: if ``width`` is out of range or a value does not fit in ``width`` bits.
    """
    return packed_buffer(values, width=width).tobytes()


def packed_buffer(values: np.ndarray, *, width: int) -> np.ndarray:
    """:func:`pack_uint` as a uint8 array, without the copy into ``bytes`` (``b"".join``
    takes the array as it is); for widths 8, 16 and 32 it is a view of ``values`` when their
    dtype is the matching little-endian unsigned type."""
    _check_width(width)
    flat = np.ascontiguousarray(values).reshape(-1)
    count = flat.size
    if count == 0:
        return np.zeros(0, dtype=np.uint8)
    if flat.dtype.kind not in "ui":
        raise ValueError(f"pack_uint needs integers, got dtype {flat.dtype}")
    if flat.dtype.kind == "i" and int(flat.min()) < 0:
        raise ValueError("pack_uint needs non-negative integers")
    # An unsigned dtype no wider than the width cannot overflow it: skip the pass over the data.
    if not (flat.dtype.kind == "u" and 8 * flat.dtype.itemsize <= width):
        top = int(flat.max())
        if top >> width:
            raise ValueError(f"a value does not fit in {width} bits (max {top})")
    if width in (8, 16, 32):
        return flat.astype(f"<u{width // 8}", copy=False).view(np.uint8)
    words = bit_kernels.stream_words(count * width)
    bit_kernels.pack(flat, width, words)
    return bit_kernels.words_to_stream(words, packed_size(count=count, width=width))


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
    out = np.empty(count, dtype=dtype)
    if bit_kernels.unpack(bit_kernels.stream_to_words(raw), width, out) != bit_kernels.OK:
        raise PayloadError("bit stream has padding bits set; payload is corrupt")
    return out


def _check_width(width: int) -> None:
    if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= MAX_WIDTH:
        raise ValueError(f"bit width must be an integer in 1..{MAX_WIDTH}, got {width!r}")
