"""Randomized top-k sparsification, RandTopk (eq. 7 of the RandTopk paper).

Eq. 7 draws ``k`` of the ``d`` neurons without replacement; while both pools are non-empty a
draw comes from the remaining top-k neurons with probability ``1 - alpha`` and from the
remaining others with probability ``alpha``, uniformly within the pool. Couple the process
with ``k`` independent Bernoulli(``alpha``) coins, one per draw: a draw goes to the non-top-k
pool exactly when its coin says so and that pool is not yet empty, and the top-k pool (``k``
neurons, ``k`` draws) can only run out on the last draw. So the number of non-top-k picks is
exactly ``m = min(Binomial(k, alpha), d - k)`` — ``Binomial(k, alpha)`` when ``d - k >= k`` —
and, given ``m``, the picks are ``k - m`` uniform neurons of the top-k pool and ``m`` uniform
neurons of the rest. That is what :func:`randtopk_mask` samples, for a whole batch at once
(``m`` with ``torch.binomial``, an exact sampler; the uniform subsets as the smallest of
random keys).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from acpsl.errors import ConfigError
from acpsl.schemes.registry import register
from acpsl.schemes.selection import SelectionScheme, topk_mask, topk_mask_np


def randtopk_mask(
    flat: torch.Tensor, *, k: int, alpha: float, generator: torch.Generator
) -> torch.Tensor:
    """Sample eq. 7 of the RandTopk paper for every row of ``flat`` ``[B, d]``.

    Args:
        flat: the batch, one flattened sample per row (CPU).
        k: neurons selected per sample.
        alpha: probability of a draw from the non-top-k pool while it is non-empty.
        generator: the CPU generator all randomness comes from.

    Returns:
        ``[B, d]`` bool mask with exactly ``k`` entries set per row.
    """
    mask, _ = randtopk_select(flat.detach().cpu().numpy(), k=k, alpha=alpha, generator=generator)
    return torch.from_numpy(mask)


def randtopk_select(
    flat: np.ndarray, *, k: int, alpha: float, generator: torch.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`randtopk_mask` on a float32 ``[B, d]`` array, also returning the selection's
    ascending flat positions (built from the per-row picks, without a scan of the mask)."""
    batch, d = flat.shape
    mask = topk_mask_np(flat, k=k)
    counts = torch.full((batch,), float(k))
    m = torch.binomial(counts, torch.full((batch,), float(alpha)), generator=generator)
    m = m.to(torch.int64).clamp_(max=d - k)
    most = int(m.max()) if batch else 0
    positions = np.flatnonzero(mask)
    if most == 0:
        return mask, positions
    m_np = m.numpy()
    top_idx = (positions % d).reshape(batch, k)  # each row's top-k, ascending
    rows_d = (np.arange(batch, dtype=np.int64) * d)[:, None]
    # Keep k - m uniform members of the top-k pool = drop m uniform ones: the m smallest of
    # k random keys.
    drop_keys = torch.rand(batch, k, generator=generator)
    dropped = _smallest(drop_keys, m_np, most=most)
    # m uniform members of the rest pool (the top-k mask is still unmodified here).
    if 4 * most <= d - k:
        rest, take_rest = _sample_rest_by_rejection(top=mask, m=m_np, generator=generator)
    else:  # a large share of the pool: the m smallest of d random keys, top-k keys pushed out
        keys = torch.rand(batch, d, generator=generator)
        keys.scatter_(1, torch.from_numpy(top_idx), 2.0)
        rest = keys.topk(most, dim=1, largest=False, sorted=True).indices.numpy()
        take_rest = np.arange(most) < m_np[:, None]
    picks = rest[take_rest]  # row-major: m[b] picks of row b, like the dropped slots below
    flat_mask = mask.reshape(-1)
    flat_mask[(top_idx + rows_d)[dropped]] = False
    selected = top_idx.copy()
    selected[dropped] = picks
    flat_mask[(selected + rows_d)[dropped]] = True
    selected.sort(axis=1)
    return mask, (selected + rows_d).reshape(-1)


def _smallest(keys: torch.Tensor, m: np.ndarray, *, most: int) -> np.ndarray:
    """Bool ``[B, k]``: the ``m[b]`` smallest of each row of ``keys`` (uniform random floats).

    Found as ``keys <= `` the row's ``m[b]``-th smallest key (a NumPy sort of the small
    ``[B, k]`` keys). Only when the ``m[b]``-th and the next smallest key of some row are equal
    does the choice between them depend on tie order; then, to keep exactly the selection of
    ``torch.topk`` (which this replaces), that tie is left to ``torch.topk`` itself.
    """
    batch, k = keys.shape
    arr = keys.numpy()
    ordered = np.sort(arr, axis=1)
    rows = np.arange(batch)
    has = m > 0
    kth = np.where(has, ordered[rows, np.maximum(m - 1, 0)], -1.0).astype(arr.dtype)
    after = ordered[rows, np.minimum(m, k - 1)]
    if bool((has & (m < k) & (after == kth)).any()):
        drop = keys.topk(most, dim=1, largest=False, sorted=True).indices.numpy()
        out = np.zeros((batch, k), dtype=bool)
        take = np.arange(most) < m[:, None]
        np.put_along_axis(out, drop, take, axis=1)
        return out
    return arr <= kth[:, None]


def _sample_rest_by_rejection(
    *, top: np.ndarray, m: np.ndarray, generator: torch.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Per row ``b``, ``m[b]`` distinct uniform positions where ``top`` is ``False``.

    Draws positions uniformly with replacement and keeps, per row, the first ``m[b]`` distinct
    ones outside the top-k pool: by symmetry that is a uniform ``m[b]``-subset of the pool
    (also conditionally on a row having enough candidates, so a row short of them simply
    draws again). Costs ``O(B max(m))`` random numbers instead of ``O(B d)``; efficient when
    ``4 max(m) <= d - k`` (then a row falls short with negligible probability).

    Returns:
        ``(positions, take)``: ``[B, L]`` candidate positions and the bool ``[B, L]`` mask of
        the chosen ones (exactly ``m[b]`` per row, distinct, none in the top-k pool).
    """
    batch, d = top.shape
    length = 2 * int(m.max()) + 16
    positions = np.zeros((batch, length), dtype=np.int64)
    take = np.zeros((batch, length), dtype=bool)
    todo = np.arange(batch)
    order = np.arange(length)
    top_flat = top.reshape(-1)
    # Scratch: per position, the first draw (of this round) that hit it.
    first = np.full(batch * d, length, dtype=np.int16 if length < 2**15 else np.int64)
    while todo.size:
        rows = todo.size
        cand = torch.randint(0, d, (rows, length), generator=generator).numpy()
        lin = cand + (todo * d)[:, None]
        np.minimum.at(first, lin.reshape(-1), np.tile(order.astype(first.dtype), rows))
        valid = (first[lin] == order) & ~top_flat[lin]
        first[lin] = length  # reset the scratch for a redraw
        rank = valid.cumsum(axis=1)
        want = m[todo][:, None]
        done = rank[:, -1] >= want[:, 0]
        positions[todo[done]] = cand[done]
        take[todo[done]] = (valid & (rank <= want))[done]
        todo = todo[~done]
    return positions, take


@register("randtopk")
class RandTopkScheme(SelectionScheme):
    """RandTopk: eq. 7 in training (seeded), plain top-k at inference.

    Args:
        k: neurons kept per sample.
        keep_ratio: fraction of each sample's ``d`` values kept when ``k`` is not given
            (default 0.1).
        alpha: randomness, in ``[0, 1]``: 0 is top-k, 1 picks uniformly (dropout-like).
        seed: seed of the scheme's own ``torch.Generator``.
    """

    name = "randtopk"
    wire_id = 3

    def __init__(
        self,
        *,
        k: int | None = None,
        keep_ratio: float | None = None,
        alpha: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__(k=k, keep_ratio=keep_ratio)
        if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and 0 <= alpha <= 1):
            raise ConfigError(f"randtopk: alpha must be in [0, 1], got {alpha!r}")
        self.alpha = float(alpha)
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def select(self, flat: torch.Tensor, *, k: int, training: bool) -> torch.Tensor:
        if not training or self.alpha == 0.0:
            return topk_mask(flat, k=k)
        return randtopk_mask(flat, k=k, alpha=self.alpha, generator=self.generator)

    def select_positions(
        self, flat: torch.Tensor, *, k: int, training: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        if not training or self.alpha == 0.0:
            return super().select_positions(flat, k=k, training=training)
        return randtopk_select(flat.numpy(), k=k, alpha=self.alpha, generator=self.generator)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["rng"])
