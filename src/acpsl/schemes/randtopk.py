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

``sampling="official"`` reproduces instead what the authors' public code does
(``NaiveRandomTopKModifier`` in ``split_learn/modifiers.py`` of github.com/zfscgy/SplitLearning,
the modifier their experiment scripts use): fixed weights ``(1 - alpha) / k`` on each top-k
neuron and ``alpha / (d - k)`` on each other one, and ``torch.multinomial(weights, k)``
without replacement. That is successive sampling, where every draw renormalises over the
neurons not yet drawn: as the top-k pool empties, its share of the remaining weight falls
below ``1 - alpha`` while the others' stays near ``alpha``, so it picks more non-top-k
neurons than eq. 7 — for ``d >> k`` a fraction ``alpha x`` of the ``k`` picks, with ``x`` the
root of ``alpha x = exp(-(1 - alpha) x)``: 0.1866 at ``alpha = 0.1`` (1.87x eq. 7's 0.1).
:func:`official_positions` samples it, batched over the rows.
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

#: How :class:`RandTopkScheme` draws (see the module docstring).
SAMPLINGS = ("eq7", "official")


def randtopk_mask(
    flat: torch.Tensor,
    *,
    k: int,
    alpha: float,
    generator: torch.Generator,
    sampling: str = "eq7",
) -> torch.Tensor:
    """Sample eq. 7 of the RandTopk paper (or the authors' code) for every row of ``flat``.

    Args:
        flat: the batch ``[B, d]``, one flattened sample per row (CPU).
        k: neurons selected per sample.
        alpha: probability of a draw from the non-top-k pool while it is non-empty.
        generator: the CPU generator all randomness comes from.
        sampling: ``"eq7"`` (:func:`randtopk_positions`) or ``"official"``
            (:func:`official_positions`).

    Returns:
        ``[B, d]`` bool mask with exactly ``k`` entries set per row.
    """
    array = flat.detach().to("cpu", torch.float32).contiguous().numpy()
    sample = official_positions if _sampling(sampling) == "official" else randtopk_positions
    positions = sample(array, k=k, alpha=alpha, generator=generator)
    return torch.from_numpy(positions_mask(positions, shape=array.shape))


def _sampling(sampling: object) -> str:
    if sampling not in SAMPLINGS:
        raise ConfigError(
            f"randtopk: unknown sampling {sampling!r}; choose one of {', '.join(SAMPLINGS)}"
        )
    return str(sampling)


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


def official_positions(
    flat: np.ndarray, *, k: int, alpha: float, generator: torch.Generator
) -> np.ndarray:
    """The authors' RandTopk sampling on a float32 ``[B, d]`` array, as the selection's
    ascending flat positions (``B k``, int64).

    Weights ``(1 - alpha) / k`` on each row's top-k (:func:`topk_positions`: ties to the
    lowest indices) and ``alpha / (d - k)`` elsewhere, float32 as in their code; ``k`` draws
    without replacement by ``torch.multinomial`` from ``generator``, all rows in one call.

    Raises:
        TrainingError: ``flat`` holds NaN or infinity.
        ConfigError: ``alpha = 1`` with ``d - k < k`` (fewer positive weights than draws).
    """
    batch, d = flat.shape
    positions = topk_buffer(flat, k=k, scheme="randtopk")
    if k >= d or batch == 0:
        return positions[: batch * min(k, d)]
    if alpha == 1.0 and d - k < k:
        raise ConfigError(
            f"randtopk: sampling='official' with alpha=1 gives the top-k zero weight and "
            f"cannot draw k={k} of the d - k = {d - k} others"
        )
    weights = torch.full((batch * d,), alpha / (d - k), dtype=torch.float32)
    weights[torch.from_numpy(positions[: batch * k])] = (1.0 - alpha) / k
    drawn = torch.multinomial(weights.view(batch, d), k, replacement=False, generator=generator)
    drawn = drawn.sort(dim=1).values
    drawn += torch.arange(0, batch * d, d, dtype=torch.int64).unsqueeze(1)
    return drawn.reshape(-1).numpy()


@register("randtopk")
class RandTopkScheme(SelectionScheme):
    """RandTopk: eq. 7 in training (seeded), plain top-k at inference.

    Args:
        k: neurons kept per sample.
        keep_ratio: fraction of each sample's ``d`` values kept when ``k`` is not given
            (default 0.1).
        alpha: randomness, in ``[0, 1]``: 0 is top-k, 1 picks uniformly (dropout-like).
        seed: seed of the scheme's own ``torch.Generator``.
        sampling: ``"eq7"`` (default: eq. 7 exactly) or ``"official"`` (the authors' public
            code: ``torch.multinomial`` on fixed weights, about 1.87x as many non-top-k picks
            at ``alpha = 0.1``; see the module docstring). Same wire format either way.
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
        sampling: str = "eq7",
    ) -> None:
        super().__init__(k=k, keep_ratio=keep_ratio)
        if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and 0 <= alpha <= 1):
            raise ConfigError(f"randtopk: alpha must be in [0, 1], got {alpha!r}")
        self.alpha = float(alpha)
        self.sampling = _sampling(sampling)
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def select(self, flat: np.ndarray, *, k: int, training: bool) -> np.ndarray:
        if not training or self.alpha == 0.0:
            return topk_positions(flat, k=k, scheme=self.name)
        if self.sampling == "official":
            return official_positions(flat, k=k, alpha=self.alpha, generator=self.generator)
        return randtopk_positions(flat, k=k, alpha=self.alpha, generator=self.generator)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["rng"])
