"""Index coding of per-sample selections (top-k, RandTopk, L1 non-zeros).

A selection is a boolean mask ``[B, d]``: which of each sample's ``d`` flattened values are
sent. The values themselves travel in row-major order of that mask (sample by sample, index
ascending), so the selection can be coded in either of two ways, whichever is smaller for the
payload at hand (a flag byte says which):

* :data:`MODE_PACKED` — the selected indices, sample-major and ascending, each at
  ``ceil(log2 d)`` bits (the papers' "offset encoding", RandTopk paper section 3.2), in one
  bit stream of ``ceil(total * w / 8)`` bytes;
* :data:`MODE_MASK` — the mask itself, ``ceil(B * d / 8)`` bytes. Cheaper as soon as more than
  one value in ``ceil(log2 d)`` is kept.

How many values each sample keeps is not in this block: fixed-``k`` schemes write ``k`` once,
L1 writes per-sample counts with :func:`encode_counts`.
"""

from __future__ import annotations

import numpy as np
import torch

from acpsl.cut.bitpack import pack_uint, packed_size, unpack_uint
from acpsl.cut.payload import PayloadReader, unpack_bits
from acpsl.errors import PayloadError

MODE_PACKED = 0
MODE_MASK = 1


def index_width(d: int) -> int:
    """Bits per index for ``d`` positions: ``ceil(log2 d)``, at least 1."""
    if d < 1:
        raise ValueError(f"need at least one position, got d={d}")
    return max(1, (d - 1).bit_length())


def count_width(d: int) -> int:
    """Bits per count of kept values (0..d inclusive): ``ceil(log2 (d + 1))``, at least 1."""
    return max(1, int(d).bit_length())


def selection_mode(*, total: int, batch: int, d: int) -> int:
    """The mode :func:`encode_selection` uses for ``total`` kept values of ``batch * d``."""
    packed = packed_size(count=total, width=index_width(d))
    return MODE_MASK if (batch * d + 7) // 8 <= packed else MODE_PACKED


def selection_size(*, total: int, batch: int, d: int) -> int:
    """Exact bytes of the block :func:`encode_selection` writes: flag byte + the smaller code."""
    packed = packed_size(count=total, width=index_width(d))
    return 1 + min(packed, (batch * d + 7) // 8)


def encode_selection(
    positions: np.ndarray, *, batch: int, d: int, mask: np.ndarray | None = None
) -> bytes:
    """Encode a selection as flag byte + packed indices or bit mask.

    Args:
        positions: the selected flat positions ``b * d + i`` into the ``[B, d]`` batch, in
            ascending order (sample by sample, index ascending), as ``np.flatnonzero`` of the
            mask gives them.
        batch: ``B``.
        d: values per sample.
        mask: the same selection as a ``[B, d]`` (or flat) bool array, if the caller has it;
            saves rebuilding it when the bit mask is the smaller code.
    """
    mode = selection_mode(total=int(positions.size), batch=batch, d=d)
    if mode == MODE_MASK:
        if mask is None:
            mask = np.zeros(batch * d, dtype=bool)
            mask[positions] = True
        return bytes([MODE_MASK]) + np.packbits(mask.reshape(-1), bitorder="little").tobytes()
    return bytes([MODE_PACKED]) + pack_uint(positions % d, width=index_width(d))


def decode_selection(
    reader: PayloadReader, *, counts: np.ndarray, batch: int, d: int
) -> np.ndarray:
    """Read a block written by :func:`encode_selection`.

    Args:
        reader: positioned at the flag byte.
        counts: values kept per sample (``[B]`` integers), already read from the payload.
        batch: ``B``.
        d: values per sample.

    Returns:
        The selected flat positions into ``[B, d]``, ascending (int64).

    Raises:
        PayloadError: unknown mode, wrong length, an index out of range or out of order, or a
            mask whose per-sample counts disagree with ``counts``.
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    mode = reader.u8()
    expected = selection_mode(total=total, batch=batch, d=d)
    if mode not in (MODE_PACKED, MODE_MASK):
        raise PayloadError(f"{reader.what}: unknown index coding mode {mode}")
    if mode != expected:
        raise PayloadError(
            f"{reader.what}: index coding mode {mode} for {total} of {batch}x{d} values; "
            f"an encoder writes mode {expected}"
        )
    if mode == MODE_MASK:
        raw = reader.take((batch * d + 7) // 8)
        positions = np.flatnonzero(unpack_bits(raw, batch * d).numpy())
        # Per-sample counts from where each sample's positions start (cheaper than counting
        # the mask row by row).
        ends = np.searchsorted(positions, np.arange(1, batch + 1, dtype=np.int64) * d)
        got = np.diff(ends, prepend=0)
        if not np.array_equal(got, counts):
            raise PayloadError(f"{reader.what}: bit mask keeps {got.tolist()} values per sample")
        return positions
    width = index_width(d)
    idx = unpack_uint(reader.take(packed_size(count=total, width=width)), count=total, width=width)
    if total and int(idx.max()) >= d:
        raise PayloadError(f"{reader.what}: index {int(idx.max())} out of range for d={d}")
    if total > 1:
        step = np.diff(idx)
        starts = np.cumsum(counts)[:-1]
        new_sample = np.zeros(total - 1, dtype=bool)
        new_sample[starts[(starts > 0) & (starts < total)] - 1] = True
        if np.any((step <= 0) & ~new_sample):
            raise PayloadError(f"{reader.what}: indices are not strictly ascending per sample")
    rows = np.repeat(np.arange(batch, dtype=np.int64) * d, counts)
    return rows + idx


def positions_of(mask: torch.Tensor) -> np.ndarray:
    """Ascending flat positions of the ``True`` entries of a bool tensor (any shape)."""
    return np.flatnonzero(mask.detach().to("cpu").numpy())


def encode_counts(counts: np.ndarray, *, d: int) -> bytes:
    """Per-sample counts (each in ``0..d``) packed at :func:`count_width` bits."""
    return pack_uint(np.asarray(counts, dtype=np.int64), width=count_width(d))


def decode_counts(reader: PayloadReader, *, batch: int, d: int) -> np.ndarray:
    """Inverse of :func:`encode_counts`; raises :class:`PayloadError` on a count above ``d``."""
    width = count_width(d)
    counts = unpack_uint(
        reader.take(packed_size(count=batch, width=width)), count=batch, width=width
    )
    if counts.size and int(counts.max()) > d:
        raise PayloadError(f"{reader.what}: a sample claims {int(counts.max())} of {d} values")
    return counts


def counts_size(*, batch: int, d: int) -> int:
    """Exact bytes of :func:`encode_counts` for ``batch`` samples."""
    return packed_size(count=batch, width=count_width(d))
