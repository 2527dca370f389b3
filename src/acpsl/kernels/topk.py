"""Per-sample selections: the ``k`` largest magnitudes (top-k), and the non-zeros (L1).

Top-k by radix select. The magnitude ``|x|`` of a finite float32 is ordered like the integer
of its bits with the sign bit cleared (a non-negative IEEE float's bits are monotone in its
value), so the ``k``-th largest magnitude of a row is found digit by digit on those 31-bit
keys: a histogram of the top 11 bits says which bucket holds the ``k``-th largest key and how
many keys above it are certainly in; only that bucket's keys are refined on the next 11 and
the last 9 bits. Two passes over a row (histogram; collect the keys at or above the bucket)
and a few over the few keys of one bucket, instead of a sort of the row.

Ties at the ``k``-th magnitude go to the lowest indices (the library's documented rule, so the
selection does not depend on an algorithm's order of equal values). The values must be finite;
the callers check that first (one reduction), as a NaN's key sorts above every number.

The 16-lane blocks come from :mod:`acpsl.kernels.simd` (AVX-512, AVX2 or scalar, per CPU).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from acpsl.kernels import kernel, parallel_kernel
from acpsl.kernels.simd import (
    LANES,
    compress_index,
    compress_values,
    mask_at_least,
    mask_finite,
    mask_nonzero,
    popcount,
)

_SIGN_OFF = np.uint32(0x7FFFFFFF)
#: Sign-cleared bits at or above this are an infinity or a NaN.
_NON_FINITE = np.uint32(0x7F800000)


#: Rows at least this long, keeping at most a quarter of their values, first estimate the
#: threshold from a sample (below: every value is a candidate).
SAMPLE_MIN_D = 512
#: One value in SAMPLE_STEP is sampled.
SAMPLE_STEP = 4


@kernel
def _bucket(hist: np.ndarray, top: int, need: int) -> tuple[int, int]:
    """Scan the 4-way histogram ``hist[4, :]`` down from bucket ``top`` (the highest one in
    use): the bucket that holds the ``need``-th largest key, and how many keys of it are
    still needed. If fewer than ``need`` keys are counted in all, returns bucket 0."""
    dig = top
    while dig > 0:
        count = hist[0, dig] + hist[1, dig] + hist[2, dig] + hist[3, dig]
        if count >= need:
            return dig, need
        need -= count
        dig -= 1
    return 0, need


@kernel
def _sample_floor(bits: np.ndarray, k: int, hist: np.ndarray) -> np.uint32:
    """A key most likely below the ``k``-th largest of the row ``bits``, from a histogram of
    one value in :data:`SAMPLE_STEP`: the top of the bucket holding the sample's
    ``k / step + 3 sqrt(k / step) + 2``-th largest key (a margin of three standard deviations
    of the sampled count), or 0 when the sample is too small to say.

    ``hist`` must be all zeros and is left so (only the buckets used are cleared)."""
    d = bits.shape[0]
    top = 0
    for i in range(0, d, SAMPLE_STEP):
        dig = np.int64((bits[i] & _SIGN_OFF) >> 20)
        hist[(i >> 2) & 3, dig] += 1
        top = max(top, dig)
    expected = k / SAMPLE_STEP
    target = int(expected + 3.0 * np.sqrt(expected)) + 2
    dig, _ = _bucket(hist, top, target)
    for i in range(0, d, SAMPLE_STEP):
        hist[(i >> 2) & 3, (bits[i] & _SIGN_OFF) >> 20] = 0
    return np.uint32(dig) << np.uint32(20)


@kernel
def _collect(bits: np.ndarray, floor: np.uint32, out: np.ndarray) -> int:
    """Write the indices of the row's keys ``>= floor`` to ``out`` (16 spare slots), in
    order; returns how many."""
    d = bits.shape[0]
    n = 0
    whole = d - d % LANES
    for i in range(0, whole, LANES):
        kept = mask_at_least(bits, i, floor)
        compress_index(i, kept, out, n)
        n += popcount(kept)
    for i in range(whole, d):
        out[n] = i
        n += np.int64((bits[i] & _SIGN_OFF) >= floor)
    return n


@kernel
def topk_rows(flat: np.ndarray, k: int, positions: np.ndarray) -> None:
    """Each row's ``k`` largest magnitudes of the float32 ``[B, d]`` array ``flat``
    (``1 <= k <= d``), ties to the lowest indices.

    Writes the ascending flat positions ``b * d + i`` of the selection into ``positions``
    (int64, ``B * k`` and 16 spare). The values must be finite (the caller checks: a NaN's
    key sorts above every number).

    Per row: a floor below the ``k``-th largest key is guessed (one bucket below the previous
    row's threshold, as the samples of a batch are alike; else from a sample of the row, for
    long rows keeping few values; else 0), and one pass collects the indices of the keys at or
    above it (the candidates). Fewer than ``k`` candidates means a bad guess: the next guess
    is tried, down to 0, so the guess only affects speed. The exact threshold among the
    candidates is then found digit by digit, and the candidates are filtered in index order.
    """
    batch, d = flat.shape
    cand_idx = np.empty(d + LANES, np.int32)
    cand_key = np.empty(d, np.uint32)
    member_key = np.empty(d, np.uint32)
    # Four histograms, used round robin: consecutive equal keys (ReLU zeros) would otherwise
    # make each increment wait for the previous one. Kept zeroed between uses by clearing
    # just the buckets used.
    hist = np.zeros((4, 2048), np.int32)
    sample = d >= SAMPLE_MIN_D and 4 * k <= d
    previous = -1  # the previous row's threshold bucket (bits 30..20)
    out = 0
    for b in range(batch):
        bits = flat[b].view(np.uint32)
        n = 0
        for attempt in range(3):
            if attempt == 0:
                if previous < 1:
                    continue
                floor = np.uint32(previous - 1) << np.uint32(20)
            elif attempt == 1:
                if not sample:
                    continue
                floor = _sample_floor(bits, k, hist)
            else:
                floor = np.uint32(0)
            n = _collect(bits, floor, cand_idx)
            if n >= k:
                break
        for i in range(n):
            cand_key[i] = bits[cand_idx[i]] & _SIGN_OFF
        # Digit by digit (bits 30..20, 19..9, 8..0): the bucket holding the k-th largest key,
        # until the keys left at the prefix are exactly the ones still needed. `members`
        # holds the keys sharing the prefix so far (all candidates at first).
        prefix = np.uint32(0)
        shift = 31
        need = k
        members = cand_key
        count = n
        for level in range(3):
            width = 9 if level == 2 else 11
            low = shift - width
            digit_mask = np.uint32((1 << width) - 1)
            top = 0
            for i in range(count):
                dig = np.int64((members[i] >> low) & digit_mask)
                hist[i & 3, dig] += 1
                top = max(top, dig)
            dig, need = _bucket(hist, top, need)
            for i in range(count):
                hist[i & 3, (members[i] >> low) & digit_mask] = 0
            # Keep the members in the chosen bucket (branch-free compaction, in place).
            kept = 0
            for i in range(count):
                key = members[i]
                member_key[kept] = key
                kept += ((key >> low) & digit_mask) == dig
            members = member_key
            count = kept
            prefix = (prefix << width) | np.uint32(dig)
            shift = low
            if level == 0:
                previous = dig
            if count == need:
                break
        bucket = count
        base = b * d
        if bucket == need:
            for i in range(n):
                positions[out] = base + cand_idx[i]
                out += (cand_key[i] >> shift) >= prefix
        else:  # the k-th magnitude is tied: the first `need` keys equal to it are in
            seen = 0
            for i in range(n):
                top = cand_key[i] >> shift
                tied = top == prefix
                seen += tied
                positions[out] = base + cand_idx[i]
                out += (top > prefix) | (tied & (seen <= need))


@parallel_kernel
def nonzero_rows(
    flat: np.ndarray,
    starts: np.ndarray,
    counts: np.ndarray,
    values: np.ndarray,
    totals: np.ndarray,
    mask: np.ndarray,
) -> bool:
    """The non-zero values of each row of the float32 ``[B, d]`` array ``flat``, in groups of
    rows spread over threads.

    Args:
        flat: the batch.
        starts: ``[G + 1]`` first row of each group (and ``B``); a group's first bit in the
            mask, ``starts[g] * d``, must be a multiple of 64 (groups own whole mask words).
        counts: ``[B]``, filled with each row's number of non-zeros.
        values: room for ``B * d + 16 (G + 1)``; group ``g`` writes its values in row-major
            order from offset ``starts[g] * d + 16 g`` on.
        totals: ``[G]``, filled with each group's number of values.
        mask: uint64 words, zeroed, at least ``B * d / 64 + 1``: the bits of the non-zeros
            over the ``B * d`` flat positions (bit ``p`` = position ``p``).

    Returns:
        ``False`` if a value is NaN or infinite (the outputs are then incomplete).
    """
    d = flat.shape[1]
    groups = starts.shape[0] - 1
    whole = d - d % LANES
    bad = np.zeros(groups, np.bool_)
    for g in prange(groups):
        first = starts[g] * d + LANES * g
        out = first
        for b in range(starts[g], starts[g + 1]):
            row = flat[b]
            keys = row.view(np.uint32)
            finite = 0xFFFF
            top = np.uint32(0)
            start = out
            base = b * d
            for i in range(0, whole, LANES):
                finite &= mask_finite(row, i)
                kept = mask_nonzero(row, i)
                compress_values(row, i, kept, values, out)
                out += popcount(kept)
                p = base + i
                shift = p & 63
                mask[p >> 6] |= np.uint64(kept) << np.uint64(shift)
                if shift > 64 - LANES:
                    mask[(p >> 6) + 1] |= np.uint64(kept) >> np.uint64(64 - shift)
            for i in range(whole, d):
                top = max(top, keys[i] & _SIGN_OFF)
                keep = row[i] != 0
                values[out] = row[i]
                out += np.int64(keep)
                p = base + i
                mask[p >> 6] |= np.uint64(keep) << np.uint64(p & 63)
            if top >= _NON_FINITE or finite != 0xFFFF:
                bad[g] = True
                break
            counts[b] = out - start
        totals[g] = out - first
    return not bad.any()
