"""Bit-level loops: fixed-width little-endian bit streams and per-sample bit masks.

The stream layout is the one of :mod:`acpsl.cut.bitpack`: value ``i`` of width ``w`` occupies
bits ``i*w .. i*w + w - 1`` of the stream, least-significant bit first, bytes in order, zero
padding to a whole byte. A bit mask over a ``[B, d]`` batch is the same stream with ``w = 1``
over the ``B * d`` flat positions (``np.packbits(..., bitorder="little")``).

Status codes returned by the decoding loops (the callers turn them into
:class:`~acpsl.errors.PayloadError` messages):

The 16-lane blocks come from :mod:`acpsl.kernels.simd` (AVX-512, AVX2 or scalar, per CPU).
"""

from __future__ import annotations

import sys

import numpy as np
from numba import prange

from acpsl.kernels import block, kernel, parallel_kernel
from acpsl.kernels.simd import LANES, compress_index, expand_tail, expand_values, popcount

#: Whether uint32 words in memory are the stream's bytes in order (little-endian machine).
LITTLE = sys.byteorder == "little"

OK = 0
#: Padding bits after the last value are set.
BAD_PADDING = 1
#: A sample's number of set mask bits differs from its declared count.
BAD_COUNT = 2
#: An index is ``>= d``.
OUT_OF_RANGE = 3
#: A sample's indices are not strictly ascending.
NOT_ASCENDING = 4


@kernel
def pack(values: np.ndarray, width: int, out: np.ndarray) -> None:
    """Write ``values`` (1-D, each in ``[0, 2**width)``, ``width`` in 1..32) as a bit stream
    into ``out``: uint32 words, zeroed, ``ceil(len(values) * width / 32)`` of them.

    Words, not bytes: one store per 32 bits of stream instead of one per byte. On a
    little-endian machine the words' memory is the byte stream (see :func:`words_to_stream`).
    """
    acc = np.uint64(0)
    filled = 0  # bits waiting in acc, < 32 between values
    j = 0
    for i in range(values.shape[0]):
        acc |= np.uint64(values[i]) << np.uint64(filled)
        filled += width
        if filled >= 32:
            out[j] = np.uint32(acc & np.uint64(0xFFFFFFFF))
            acc >>= np.uint64(32)
            filled -= 32
            j += 1
    if filled > 0:
        out[j] = np.uint32(acc & np.uint64(0xFFFFFFFF))


@kernel
def unpack(words: np.ndarray, width: int, out: np.ndarray) -> int:
    """Read ``len(out)`` values of ``width`` bits from a stream held in uint32 ``words``
    (the stream's bytes zero-padded to whole words, see :func:`stream_to_words`) into
    ``out``; returns :data:`OK`, or :data:`BAD_PADDING` if a bit after the last value is set.
    """
    acc = np.uint64(0)
    filled = 0
    src = 0
    low = np.uint64((1 << width) - 1)
    for i in range(out.shape[0]):
        if filled < width:
            acc |= np.uint64(words[src]) << np.uint64(filled)
            src += 1
            filled += 32
        out[i] = acc & low
        acc >>= np.uint64(width)
        filled -= width
    if acc != np.uint64(0):
        return BAD_PADDING
    for i in range(src, words.shape[0]):
        if words[i] != 0:
            return BAD_PADDING
    return OK


@kernel
def mask_of_positions(positions: np.ndarray, out: np.ndarray) -> None:
    """Set the bits of the flat ``positions`` in the zeroed bit mask ``out`` (uint8)."""
    for i in range(positions.shape[0]):
        p = positions[i]
        out[p >> 3] |= np.uint8(1 << (p & 7))


@block
def _lanes_of(word: np.uint64, following: np.uint64, shift: int) -> int:
    """The 16 bits from bit ``shift`` of the 128-bit ``following:word`` (a uint64-word bit
    mask read at ``p >> 6`` and the word after it, ``shift = p & 63``). Scalars only: an
    inlined block that took the array would pay a reference count per call."""
    bits = word >> np.uint64(shift)
    if shift > 64 - LANES:
        bits |= following << np.uint64(64 - shift)
    return np.int64(bits & np.uint64(0xFFFF))


@kernel
def _padding_clear(mask: np.ndarray, nbits: int) -> bool:
    """Whether every bit of ``mask`` from ``nbits`` on (padding and spare words) is zero."""
    if nbits & 63 and mask[nbits >> 6] >> np.uint64(nbits & 63):
        return False
    for i in range((nbits >> 6) + 1, mask.shape[0]):
        if mask[i]:
            return False
    return True


@kernel
def _scatter_sample(
    mask: np.ndarray,
    d: int,
    b: int,
    j: int,
    limit: int,
    values: np.ndarray,
    out: np.ndarray,
    positions: np.ndarray,
    want: bool,
) -> int:
    """Rebuild sample ``b`` of a :func:`scatter_mask` from its values ``values[j:limit]``:
    returns ``limit``, or -1 if its mask bits are not exactly ``limit - j``."""
    whole = d - d % LANES
    last = values.shape[0] - 1
    base = b * d
    for i in range(0, whole, LANES):
        p = base + i
        kept = _lanes_of(mask[p >> 6], mask[(p >> 6) + 1], p & 63)
        count = popcount(kept)
        if j + count > limit:
            return -1
        if j + LANES <= values.shape[0]:
            expand_values(kept, values, j, out, p)
        else:
            expand_tail(kept, values, j, out, p)
        if want:
            compress_index(p, kept, positions, j)
        j += count
    for i in range(whole, d):
        p = base + i
        bit = np.int64((mask[p >> 6] >> np.uint64(p & 63)) & np.uint64(1))
        if bit and j >= limit:
            return -1
        out[p] = values[min(j, last)] if bit else np.float32(0.0)
        if want and bit:
            positions[j] = p
        j += bit
    return j if j == limit else -1


@kernel
def scatter_mask(
    mask: np.ndarray,
    d: int,
    counts: np.ndarray,
    values: np.ndarray,
    out: np.ndarray,
    positions: np.ndarray,
) -> int:
    """Rebuild a dense ``[B, d]`` batch from a bit mask and the values it selects.

    Args:
        mask: the bit mask over the ``B * d`` flat positions as uint64 words (bit ``p`` of the
            stream = position ``p``), zero-padded with at least one word to spare
            (:func:`stream_to_words64`).
        d: values per sample.
        counts: ``[B]``, the number of bits each sample must have set.
        values: the selected values in mask order (``counts.sum()`` of them; may be a
            read-only view of the payload: exactly those are read).
        out: float32 ``B * d``, overwritten: ``values`` at the set bits, zero elsewhere.
        positions: room for ``counts.sum() + 16`` int64, filled with the ascending flat
            positions of the set bits; or an empty array to skip them.

    Returns:
        :data:`OK`, :data:`BAD_COUNT` (some sample has another number of set bits) or
        :data:`BAD_PADDING`.
    """
    want = positions.shape[0] > 0
    j = 0
    for b in range(counts.shape[0]):
        j = _scatter_sample(mask, d, b, j, j + counts[b], values, out, positions, want)
        if j < 0:
            return BAD_COUNT
    return OK if _padding_clear(mask, counts.shape[0] * d) else BAD_PADDING


@parallel_kernel
def scatter_mask_rows(
    mask: np.ndarray, d: int, counts: np.ndarray, values: np.ndarray, out: np.ndarray
) -> int:
    """:func:`scatter_mask` without the positions, its samples spread over threads (each
    sample's values start at the sum of the counts before it)."""
    batch = counts.shape[0]
    offsets = np.zeros(batch + 1, np.int64)
    for b in range(batch):
        offsets[b + 1] = offsets[b] + counts[b]
    no_positions = np.empty(0, np.int64)
    bad = np.zeros(batch, np.bool_)
    for b in prange(batch):
        end = _scatter_sample(
            mask, d, b, offsets[b], offsets[b + 1], values, out, no_positions, False
        )
        bad[b] = end < 0
    if bad.any():
        return BAD_COUNT
    return OK if _padding_clear(mask, batch * d) else BAD_PADDING


@kernel
def positions_of_words(mask: np.ndarray, nbits: int, out: np.ndarray) -> int:
    """The ascending positions of the set bits among the first ``nbits`` of the uint64 bit
    mask ``mask`` into ``out`` (room for their number + 16); returns how many."""
    n = 0
    whole = nbits - nbits % LANES
    for p in range(0, whole, LANES):
        kept = _lanes_of(mask[p >> 6], mask[(p >> 6) + 1], p & 63)
        compress_index(p, kept, out, n)
        n += popcount(kept)
    for p in range(whole, nbits):
        out[n] = p
        n += np.int64((mask[p >> 6] >> np.uint64(p & 63)) & np.uint64(1))
    return n


@kernel
def scatter_positions(positions: np.ndarray, values: np.ndarray, out: np.ndarray) -> None:
    """``out[positions[i]] = values[i]`` (``out`` zeroed by the caller)."""
    for i in range(positions.shape[0]):
        out[positions[i]] = values[i]


@kernel
def positions_of_indices(
    raw: np.ndarray, width: int, d: int, counts: np.ndarray, out: np.ndarray
) -> int:
    """Unpack per-sample indices (``width`` bits each, sample-major) into flat positions
    ``b * d + index`` in ``out`` (``counts.sum()`` of them), checking each sample's indices
    are ``< d`` and strictly ascending. Returns :data:`OK`, :data:`OUT_OF_RANGE`,
    :data:`NOT_ASCENDING` or :data:`BAD_PADDING`."""
    acc = np.uint64(0)
    filled = 0
    src = 0
    low = np.uint64((1 << width) - 1)
    j = 0
    for b in range(counts.shape[0]):
        base = b * d
        last = -1
        for _ in range(counts[b]):
            while filled < width:
                acc |= np.uint64(raw[src]) << np.uint64(filled)
                src += 1
                filled += 8
            idx = np.int64(acc & low)
            acc >>= np.uint64(width)
            filled -= width
            if idx >= d:
                return OUT_OF_RANGE
            if idx <= last:
                return NOT_ASCENDING
            last = idx
            out[j] = base + idx
            j += 1
    if filled > 0 and acc != np.uint64(0):
        return BAD_PADDING
    return OK


def stream_words(nbits: int) -> np.ndarray:
    """Zeroed uint32 words for a stream of ``nbits`` bits (the buffer :func:`pack` fills)."""
    return np.zeros((nbits + 31) // 32, dtype=np.uint32)


def words_to_stream(words: np.ndarray, nbytes: int) -> np.ndarray:
    """The first ``nbytes`` bytes of the stream held in ``words`` (a view where possible)."""
    if not LITTLE:
        words = words.byteswap()
    return words.view(np.uint8)[:nbytes]


def stream_to_words(raw: bytes | memoryview | np.ndarray) -> np.ndarray:
    """Stream bytes as zero-padded uint32 words (the input :func:`unpack` reads)."""
    data = np.frombuffer(raw, dtype=np.uint8) if not isinstance(raw, np.ndarray) else raw
    words = np.zeros((data.size + 3) // 4, dtype=np.uint32)
    words.view(np.uint8)[: data.size] = data
    if not LITTLE:
        words.byteswap(inplace=True)
    return words


def stream_to_words64(raw: bytes | memoryview | np.ndarray) -> np.ndarray:
    """Stream bytes as uint64 words, zero-padded with at least one spare word (the input of
    :func:`scatter_mask`, which reads one word past a position's own)."""
    data = np.frombuffer(raw, dtype=np.uint8) if not isinstance(raw, np.ndarray) else raw
    words = np.zeros(data.size // 8 + 2, dtype=np.uint64)
    words.view(np.uint8)[: data.size] = data
    if not LITTLE:
        words.byteswap(inplace=True)
    return words


def mask_words(nbits: int) -> np.ndarray:
    """Zeroed uint64 words for a bit mask of ``nbits`` positions, one spare word."""
    return np.zeros(mask_words_size(nbits), dtype=np.uint64)


def mask_words_size(nbits: int) -> int:
    """The number of words :func:`mask_words` holds."""
    return nbits // 64 + 2


def words64_to_stream(words: np.ndarray, nbytes: int) -> np.ndarray:
    """The first ``nbytes`` bytes of the bit stream held in uint64 ``words``."""
    if not LITTLE:
        words = words.byteswap()
    return words.view(np.uint8)[:nbytes]
