"""Eq. 2 of the RandTopk paper, per sample: ranges, codes and the rebuilt values.

The arithmetic is the equation's, one IEEE operation at a time, in float32 (float64 for a
sample whose range ``max - min`` overflows float32), so the codes do not depend on how the
loops are vectorized:

* ``step = (max - min) / 2^b`` (1 where ``max = min``, so the codes are 0),
* ``c = min(trunc((o - min) / step), 2^b - 1)`` (``o >= min``, so truncation is eq. 2's floor),
* rebuilt ``c * step' + (min + step' / 2)`` with ``step' = (max - min) / 2^b``: the bin centre.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from acpsl.kernels import block, parallel_kernel

_MAGNITUDE = np.int32(0x7FFFFFFF)
_FLOAT32_MAX = float(np.finfo(np.float32).max)
#: +inf and -inf in the integer order of :func:`_ordered` (NaNs lie beyond them).
_ORDERED_INF = np.int32(0x7F800000)
_ORDERED_NEG_INF = np.int32(np.array([0xFF800000 ^ 0x7FFFFFFF], dtype=np.uint32).view(np.int32)[0])


@block
def _ordered(bits: np.int32) -> np.int32:
    """The float32 with these bits as an int32 of the same order (and back: an involution).

    Negative floats have their magnitude bits flipped, so ``-0.0`` sorts just below ``+0.0``;
    min and max then run as integer reductions, which vectorize (float min/max with IEEE
    NaN and signed-zero rules do not).
    """
    return bits ^ ((bits >> np.int32(31)) & _MAGNITUDE)


@block
def _overflows(lo: float, hi: float) -> bool:
    """Whether ``max - min`` is not representable in float32 (the row is binned in float64)."""
    return np.float64(hi) - np.float64(lo) > _FLOAT32_MAX


@parallel_kernel
def encode_rows(
    flat: np.ndarray,
    bits: int,
    lo: np.ndarray,
    hi: np.ndarray,
    lo_bits: np.ndarray,
    hi_bits: np.ndarray,
    codes: np.ndarray,
) -> bool:
    """Eq. 2 (Comp) per row of the float32 ``[B, d]`` array ``flat``: the row's minimum and
    maximum into ``lo`` and ``hi`` (float32 ``[B]``; ``lo_bits`` / ``hi_bits`` are the same
    arrays seen as int32), and its codes into ``codes`` (uint8 or uint16 ``[B, d]``). One
    row at a time, so the second pass reads the row from cache.

    Returns ``False`` if a value is NaN or infinite (``codes`` are then incomplete): in the
    integer order an infinity or NaN lies beyond every finite value, so the row's extremes
    show it.
    """
    batch, d = flat.shape
    levels = 2**bits
    top = levels - 1
    bad = np.zeros(batch, np.bool_)
    for b in prange(batch):
        row = flat[b]
        keys = row.view(np.int32)
        small = np.int32(0x7FFFFFFF)
        large = np.int32(-0x80000000)
        for i in range(d):
            key = _ordered(keys[i])
            small = min(small, key)
            large = max(large, key)
        if large >= _ORDERED_INF or small <= _ORDERED_NEG_INF:
            bad[b] = True
            continue
        lo_bits[b] = _ordered(small)
        hi_bits[b] = _ordered(large)
        if _overflows(lo[b], hi[b]):
            lo64 = np.float64(lo[b])
            step64 = (np.float64(hi[b]) - lo64) / levels
            if not step64 > 0:
                step64 = 1.0
            for i in range(d):
                codes[b, i] = min((np.float64(row[i]) - lo64) / step64, np.float64(top))
        else:
            low = lo[b]
            step = (hi[b] - low) / np.float32(levels)
            if not step > 0:
                step = np.float32(1.0)
            limit = np.float32(top)
            for i in range(d):
                codes[b, i] = min((row[i] - low) / step, limit)
    return not bad.any()


@parallel_kernel
def decode_rows(
    codes: np.ndarray, lo: np.ndarray, hi: np.ndarray, bits: int, out: np.ndarray
) -> None:
    """Eq. 2 (Decomp): the bin centres of ``codes`` ``[B, d]`` into the float32 ``out``."""
    batch, d = codes.shape
    levels = 2**bits
    for b in prange(batch):
        if _overflows(lo[b], hi[b]):
            lo64 = np.float64(lo[b])
            step64 = (np.float64(hi[b]) - lo64) / levels
            centre64 = lo64 + step64 / 2
            for i in range(d):
                out[b, i] = np.float32(np.float64(codes[b, i]) * step64 + centre64)
        else:
            step = (hi[b] - lo[b]) / np.float32(levels)
            centre = lo[b] + step / np.float32(2.0)
            for i in range(d):
                out[b, i] = np.float32(codes[b, i]) * step + centre
