"""Pruning-ratio policies of ACP-SL and its ablations (paper Fig. 6): a registry.

* ``adaptive``: eqs. 10–13 (:class:`acpsl.acp.AdaptiveRatio`), the paper's ACP;
* ``fixed``: always ``P_base`` (the paper's "F-based" ablation);
* ``random``: uniform in ``[P_min, P_max]`` each iteration (the "R-based" ablation).

Every policy validates ``0 <= P_min <= P_base <= P_max < 1`` and remembers the latest ratio it
chose (``latest``), which inference uses.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from acpsl.acp import PAPER_BOUNDS, AcpStep, AdaptiveRatio, validate_bounds
from acpsl.registry import Registry


class RatioPolicy(ABC):
    """Chooses the pruning ratio ``P_t`` of each training iteration.

    Args:
        p_min: lower bound.
        p_base: base ratio.
        p_max: upper bound.
    """

    name: ClassVar[str] = ""

    def __init__(
        self,
        *,
        p_min: float = PAPER_BOUNDS[0],
        p_base: float = PAPER_BOUNDS[1],
        p_max: float = PAPER_BOUNDS[2],
    ) -> None:
        self.p_min, self.p_base, self.p_max = validate_bounds(
            p_min=p_min, p_base=p_base, p_max=p_max
        )
        self.latest: float | None = None

    def step(
        self, *, combined: torch.Tensor, separation: torch.Tensor | None, alpha: float
    ) -> AcpStep:
        """Choose ``P_t`` for this iteration and remember it as :attr:`latest`.

        Args:
            combined: ranking scores ``[N]`` of the iteration.
            separation: raw LCIS separation ``[N]`` (``None`` when not computed).
            alpha: ``α_t`` of eq. 9.
        """
        result = self._step(combined=combined, separation=separation, alpha=alpha)
        self.latest = result.ratio
        return result

    @abstractmethod
    def _step(
        self, *, combined: torch.Tensor, separation: torch.Tensor | None, alpha: float
    ) -> AcpStep:
        """The policy's own choice (see :meth:`step`)."""

    @property
    def needs_separation(self) -> bool:
        """Whether :meth:`step` needs the LCIS separation scores (so labels in training)."""
        return False

    def state_dict(self) -> dict[str, Any]:
        """Flat state: tensors or JSON-able scalars."""
        return {} if self.latest is None else {"latest": self.latest}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        latest = state.get("latest")
        self.latest = None if latest is None else float(latest)


RATIOS: Registry[RatioPolicy] = Registry("pruning-ratio policy")


@RATIOS.register("adaptive")
class AdaptivePolicy(RatioPolicy):
    """ACP: eqs. 10–13 (see :mod:`acpsl.acp`).

    Args:
        group_score: ``"separation"`` (default) or ``"paper"``.
    """

    name = "adaptive"

    def __init__(
        self,
        *,
        p_min: float = PAPER_BOUNDS[0],
        p_base: float = PAPER_BOUNDS[1],
        p_max: float = PAPER_BOUNDS[2],
        group_score: str = "separation",
    ) -> None:
        super().__init__(p_min=p_min, p_base=p_base, p_max=p_max)
        self.acp = AdaptiveRatio(p_min=p_min, p_base=p_base, p_max=p_max, group_score=group_score)

    @property
    def needs_separation(self) -> bool:
        return self.acp.group_score == "separation"

    def _step(
        self, *, combined: torch.Tensor, separation: torch.Tensor | None, alpha: float
    ) -> AcpStep:
        return self.acp.step(combined=combined, separation=separation, alpha=alpha)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update({f"acp.{k}": v for k, v in self.acp.state_dict().items()})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.acp.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("acp.")})


@RATIOS.register("fixed")
class FixedPolicy(RatioPolicy):
    """Always ``P_base`` (the "F-based" ablation of Fig. 6)."""

    name = "fixed"

    def _step(
        self, *, combined: torch.Tensor, separation: torch.Tensor | None, alpha: float
    ) -> AcpStep:
        return AcpStep(ratio=self.p_base, w=1.0, d_inst=0.0, d_hist=0.0)


@RATIOS.register("random")
class RandomPolicy(RatioPolicy):
    """Uniform in ``[P_min, P_max]`` each iteration (the "R-based" ablation of Fig. 6).

    Args:
        seed: seed of the policy's own :class:`torch.Generator`.
    """

    name = "random"

    def __init__(
        self,
        *,
        p_min: float = PAPER_BOUNDS[0],
        p_base: float = PAPER_BOUNDS[1],
        p_max: float = PAPER_BOUNDS[2],
        seed: int = 0,
    ) -> None:
        super().__init__(p_min=p_min, p_base=p_base, p_max=p_max)
        self.generator = torch.Generator().manual_seed(int(seed))

    def _step(
        self, *, combined: torch.Tensor, separation: torch.Tensor | None, alpha: float
    ) -> AcpStep:
        u = float(torch.rand((), generator=self.generator, dtype=torch.float64))
        ratio = self.p_min + (self.p_max - self.p_min) * u
        return AcpStep(
            ratio=ratio, w=ratio / self.p_base if self.p_base else 1.0, d_inst=0.0, d_hist=0.0
        )

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.generator.set_state(torch.as_tensor(state["generator"], dtype=torch.uint8).clone())


def create(name: str, **params: Any) -> RatioPolicy:
    """Build the ratio policy registered as ``name`` (``adaptive``, ``fixed``, ``random``)."""
    return RATIOS.create(name, **params)


def names() -> list[str]:
    """Registered ratio-policy names."""
    return RATIOS.names()
