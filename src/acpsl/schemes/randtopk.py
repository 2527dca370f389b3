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
(``m`` with ``torch.binomial``, an exact sampler; the uniform subsets with Floyd's algorithm,
compiled: :mod:`acpsl.kernels.randtopk`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from acpsl.errors import ConfigError
from acpsl.kernels import randtopk as randtopk_kernels
from acpsl.schemes.registry import register
from acpsl.schemes.selection import (
    SelectionScheme,
    positions_mask,
    topk_buffer,
    topk_positions,
)


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
    array = flat.detach().to("cpu", torch.float32).contiguous().numpy()
    positions = randtopk_positions(array, k=k, alpha=alpha, generator=generator)
    return torch.from_numpy(positions_mask(positions, shape=array.shape))


def randtopk_positions(
    flat: np.ndarray, *, k: int, alpha: float, generator: torch.Generator
) -> np.ndarray:
    """:func:`randtopk_mask` on a float32 ``[B, d]`` array, as the selection's ascending flat
    positions.

    Draws, all from ``generator``: ``m`` per sample with ``torch.binomial`` (an exact
    sampler), then ``max(m)`` uniform float64 per sample for the top-k members dropped and as
    many for the others picked (:mod:`acpsl.kernels.randtopk`).

    Raises:
        TrainingError: ``flat`` holds NaN or infinity.
    """
    batch, d = flat.shape
    positions = topk_buffer(flat, k=k, scheme="randtopk")
    counts = torch.full((batch,), float(k))
    m = torch.binomial(counts, torch.full((batch,), float(alpha)), generator=generator)
    m = m.to(torch.int64).clamp_(max=d - k)
    most = int(m.max()) if batch else 0
    if most == 0:
        return positions[: batch * min(k, d)]
    drops = torch.rand((batch, most), generator=generator, dtype=torch.float64)
    picks = torch.rand((batch, most), generator=generator, dtype=torch.float64)
    randtopk_kernels.randtopk_rows(d, k, m.numpy(), drops.numpy(), picks.numpy(), positions)
    return positions[: batch * k]


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

    def select(self, flat: np.ndarray, *, k: int, training: bool) -> np.ndarray:
        if not training or self.alpha == 0.0:
            return topk_positions(flat, k=k, scheme=self.name)
        return randtopk_positions(flat, k=k, alpha=self.alpha, generator=self.generator)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["rng"])
