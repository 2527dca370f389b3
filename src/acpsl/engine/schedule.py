"""Learning-rate schedules of a run, as functions of the global iteration.

The learning rate of iteration ``t`` (1-based) of ``T`` is computed from ``t`` and ``T``
alone and written into the optimizer just before its step, so a resumed run (``t`` comes
from the checkpoint), a networked run (``t`` travels with each batch) and every client of a
relay see the same curve, and nothing else has to be checkpointed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from acpsl.config import LR_SCHEDULES
from acpsl.errors import ConfigError


@dataclass(frozen=True)
class LrSchedule:
    """A learning-rate schedule over a run's global iterations.

    Attributes:
        kind: ``constant`` or ``cosine``.
        base: the learning rate at the first iteration (``TrainConfig.lr``).
        floor: cosine's value at the last iteration (``TrainConfig.lr_min``).
    """

    kind: str = "constant"
    base: float = 0.01
    floor: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in LR_SCHEDULES:
            raise ConfigError(
                f"unknown lr_schedule {self.kind!r}; choose one of {', '.join(LR_SCHEDULES)}"
            )

    def lr(self, t: int, total: int) -> float:
        """The learning rate of global iteration ``t`` of ``total`` (both 1-based).

        ``cosine``: ``floor + (base - floor) (1 + cos(pi (t - 1) / (total - 1))) / 2``, so
        ``base`` at ``t = 1`` and ``floor`` at ``t = total``; iterations beyond ``total``
        (none in a run) stay at ``floor``.
        """
        if self.kind == "constant" or total <= 1:
            return self.base
        progress = min(max((t - 1) / (total - 1), 0.0), 1.0)
        return self.floor + (self.base - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def apply(self, optimizer: torch.optim.Optimizer, *, t: int, total: int) -> float:
        """Set every parameter group of ``optimizer`` to :meth:`lr` and return it."""
        value = self.lr(t, total)
        for group in optimizer.param_groups:
            group["lr"] = value
        return value
