"""Channel scorers of ACP-SL and its ablations (paper Fig. 5): a registry.

A scorer gives every channel of one batch an *instantaneous* score (higher = keep); the
scheme turns those into historical and combined scores (eqs. 7–9, :mod:`acpsl.lcis`) the
same way for every scorer.

* ``lcis``: ``S_inst`` of eq. 6 (:func:`acpsl.lcis.lcis_scores`), label-aware;
* ``l0``: fraction of non-zero elements of the channel over the batch (the paper's
  "ℓ0-based" method; a fraction rather than a count so batches of different sizes weigh alike);
* ``random``: i.i.d. uniform scores from the scorer's own seeded generator.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from acpsl.errors import ConfigError
from acpsl.lcis import SCORE_DTYPE, LcisScores, lcis_scores
from acpsl.registry import Registry


class ChannelScorer(ABC):
    """Scores the channels of one smashed-data batch ``[B, N, ...]``."""

    name: ClassVar[str] = ""
    #: Whether :meth:`score` needs the batch labels.
    needs_labels: ClassVar[bool] = False

    @abstractmethod
    def score(
        self,
        features: torch.Tensor,
        *,
        labels: torch.Tensor | None = None,
        lcis: LcisScores | None = None,
    ) -> torch.Tensor:
        """Instantaneous per-channel scores ``[N]`` (float64, CPU).

        Args:
            features: smashed data ``[B, N, ...]``.
            labels: the batch labels (required when :attr:`needs_labels`).
            lcis: LCIS scores already computed for this batch, reused instead of recomputed.
        """

    def state_dict(self) -> dict[str, Any]:
        """Flat state (tensors or JSON-able scalars); empty for stateless scorers."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        del state


SCORERS: Registry[ChannelScorer] = Registry("channel scorer")


def _channels(features: torch.Tensor) -> int:
    if not isinstance(features, torch.Tensor) or features.dim() < 2:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else None
        raise ConfigError(f"channel scorers need features of shape [B, N, ...], got {shape}")
    return int(features.shape[1])


@SCORERS.register("lcis")
class LcisScorer(ChannelScorer):
    """LCIS: ``S_inst = S̄_intra − S̄_inter`` (eqs. 1–6)."""

    name = "lcis"
    needs_labels = True

    def score(
        self,
        features: torch.Tensor,
        *,
        labels: torch.Tensor | None = None,
        lcis: LcisScores | None = None,
    ) -> torch.Tensor:
        if lcis is not None:
            return lcis.instantaneous
        if labels is None:
            raise ConfigError("the lcis scorer needs the batch labels (pass labels=...)")
        return lcis_scores(features, labels).instantaneous


@SCORERS.register("l0")
class L0Scorer(ChannelScorer):
    """ℓ0: the fraction of non-zero elements of each channel over the batch."""

    name = "l0"

    def score(
        self,
        features: torch.Tensor,
        *,
        labels: torch.Tensor | None = None,
        lcis: LcisScores | None = None,
    ) -> torch.Tensor:
        n = _channels(features)
        nonzero = (features.detach() != 0).transpose(0, 1).reshape(n, -1)
        return nonzero.to(SCORE_DTYPE).mean(dim=1).cpu()


@SCORERS.register("random")
class RandomScorer(ChannelScorer):
    """Uniform random scores, redrawn every batch from a seeded generator.

    Args:
        seed: seed of the scorer's own :class:`torch.Generator`.
    """

    name = "random"

    def __init__(self, *, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(int(seed))

    def score(
        self,
        features: torch.Tensor,
        *,
        labels: torch.Tensor | None = None,
        lcis: LcisScores | None = None,
    ) -> torch.Tensor:
        return torch.rand(_channels(features), generator=self.generator, dtype=SCORE_DTYPE)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(torch.as_tensor(state["generator"], dtype=torch.uint8).clone())


def create(name: str, **params: Any) -> ChannelScorer:
    """Build the scorer registered as ``name`` (``lcis``, ``l0``, ``random``)."""
    return SCORERS.create(name, **params)


def names() -> list[str]:
    """Registered scorer names."""
    return SCORERS.names()
