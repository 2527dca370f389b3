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
from acpsl.schemes.selection import SelectionScheme, topk_mask


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
    batch, d = flat.shape
    mask = topk_mask(flat, k=k)
    top = mask.clone()
    top_idx = torch.from_numpy(np.flatnonzero(mask.numpy()) % d).reshape(batch, k)
    counts = torch.full((batch,), float(k))
    m = torch.binomial(counts, torch.full((batch,), float(alpha)), generator=generator)
    m = m.to(torch.int64).clamp_(max=d - k)
    most = int(m.max()) if batch else 0
    if most == 0:
        return mask
    take = torch.arange(most).expand(batch, most) < m.unsqueeze(1)
    # Keep k - m uniform members of the top-k pool = drop m uniform ones: the m smallest of
    # k random keys (a top-k of size max(m), cheaper than a permutation of all k).
    drop_keys = torch.rand(batch, k, generator=generator)
    drop = drop_keys.topk(most, dim=1, largest=False, sorted=True).indices
    mask.scatter_(1, top_idx.gather(1, drop), ~take)
    # m uniform members of the rest pool.
    if 4 * most <= d - k:
        rest, take_rest = _sample_rest_by_rejection(top=top, m=m, generator=generator)
    else:  # a large share of the pool: the m smallest of d random keys, top-k keys pushed out
        keys = torch.rand(batch, d, generator=generator)
        keys.scatter_(1, top_idx, 2.0)
        rest = keys.topk(most, dim=1, largest=False, sorted=True).indices
        take_rest = take
    rows, cols = take_rest.nonzero(as_tuple=True)
    mask[rows, rest[rows, cols]] = True
    return mask


def _sample_rest_by_rejection(
    *, top: torch.Tensor, m: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
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
    positions = torch.zeros(batch, length, dtype=torch.int64)
    take = torch.zeros(batch, length, dtype=torch.bool)
    todo = torch.arange(batch)
    order = torch.arange(length)
    while todo.numel():
        rows = todo.numel()
        cand = torch.randint(0, d, (rows, length), generator=generator)
        first = torch.full((rows, d), length, dtype=torch.int64)
        first.scatter_reduce_(1, cand, order.expand(rows, length), reduce="amin")
        valid = (first.gather(1, cand) == order) & ~top[todo].gather(1, cand)
        rank = valid.cumsum(dim=1)
        want = m[todo].unsqueeze(1)
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

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["rng"])
