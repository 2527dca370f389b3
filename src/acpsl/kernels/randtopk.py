"""The random part of RandTopk (eq. 7 of the RandTopk paper), given the top-k and the draws.

Eq. 7 reduces to: per sample, ``m`` non-top-k picks (``m = min(Binomial(k, alpha), d - k)``,
drawn by the caller), which replace ``m`` uniformly chosen members of the top-k pool by ``m``
uniformly chosen members of the rest (see :mod:`acpsl.schemes.randtopk` for why). Both
uniform subsets come from Floyd's algorithm, which draws exactly ``m`` integers for an
``m``-subset of ``n``: for ``j = n - m .. n - 1`` take ``r`` uniform in ``0..j``, and ``j`` if
``r`` was taken before, else ``r``. ``r = floor(u (j + 1))`` for a uniform float64 ``u`` in
``[0, 1)`` (53 random bits: a bias below ``n / 2^53``, and a multiplication instead of an
integer division). A member of the rest pool is drawn by its rank ``r`` among the non-top-k
positions, i.e. its place in the list of those positions.

The 16-lane blocks come from :mod:`acpsl.kernels.simd` (AVX-512, AVX2 or scalar, per CPU).
"""

from __future__ import annotations

import numpy as np

from acpsl.kernels import block, kernel
from acpsl.kernels.simd import LANES, compress_index, mask_nonzero, popcount


@block
def _uniform_below(u: float, n: int) -> int:
    """An integer uniform in ``0..n-1`` from a float ``u`` uniform in ``[0, 1)``."""
    return min(int(u * n), n - 1)


@kernel
def _floyd(n: int, count: int, draws: np.ndarray, taken: np.ndarray, out: np.ndarray) -> None:
    """Floyd's algorithm: a uniform ``count``-subset of ``0..n-1`` into ``out[:count]``, from
    ``count`` uniform floats ``draws``; ``taken`` is zeroed scratch of at least ``n`` flags,
    left zeroed."""
    for t in range(count):
        j = n - count + t
        r = _uniform_below(draws[t], j + 1)
        pick = j if taken[r] else r
        taken[pick] = True
        out[t] = pick
    for t in range(count):
        taken[out[t]] = False


@kernel
def randtopk_rows(
    d: int,
    k: int,
    m: np.ndarray,
    drop_draws: np.ndarray,
    pick_draws: np.ndarray,
    positions: np.ndarray,
) -> None:
    """Turn each sample's top-k selection into its RandTopk selection, in place.

    Args:
        d: values per sample.
        k: values selected per sample.
        m: ``[B]`` non-top-k picks per sample (each ``<= min(k, d - k)``).
        drop_draws: ``[B, >= max(m)]`` uniform float64 in ``[0, 1)`` for the top-k members
            dropped.
        pick_draws: ``[B, >= max(m)]`` the same for the non-top-k members picked.
        positions: ``[B * k]`` ascending flat positions of each sample's top-k; overwritten
            with the RandTopk selection, still ascending per sample.
    """
    taken = np.zeros(max(k, d - k), np.bool_)
    ranks = np.empty(k, np.int64)
    # One sample's selection as float32 flags (1 = sent), so that the SIMD compress of
    # :mod:`acpsl.kernels.simd` turns it into ascending positions, and the others' positions.
    flags = np.zeros(d, np.float32)
    rest = np.empty(d + LANES, np.int64)
    selected = np.empty(k + LANES, np.int64)
    whole = d - d % LANES
    for b in range(m.shape[0]):
        count = m[b]
        if count == 0:
            continue
        base = b * d
        first = b * k
        for i in range(k):
            flags[positions[first + i] - base] = 1.0
        # The others, ascending: the rank of a non-top-k position is its index here.
        n_rest = 0
        for i in range(0, whole, LANES):
            others = ~mask_nonzero(flags, i) & 0xFFFF
            compress_index(i, others, rest, n_rest)
            n_rest += popcount(others)
        for i in range(whole, d):
            rest[n_rest] = i
            n_rest += np.int64(flags[i] == 0)
        # `count` of the k top-k slots to drop, `count` ranks of the d - k others to pick.
        _floyd(k, count, drop_draws[b], taken, ranks)
        for t in range(count):
            flags[positions[first + ranks[t]] - base] = 0.0
        _floyd(n_rest, count, pick_draws[b], taken, ranks)
        for t in range(count):
            flags[rest[ranks[t]]] = 1.0
        # The selection, ascending (into scratch: the compress may write past the k-th slot,
        # which is the next sample's), then into this sample's k slots; clear the flags.
        out = 0
        for i in range(0, whole, LANES):
            sent = mask_nonzero(flags, i)
            compress_index(base + i, sent, selected, out)
            out += popcount(sent)
        for i in range(whole, d):
            selected[out] = base + i
            out += np.int64(flags[i] != 0)
        for i in range(k):
            positions[first + i] = selected[i]
            flags[selected[i] - base] = 0.0
