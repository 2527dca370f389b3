"""Adaptive channel pruning (ACP), eqs. 10–13 of ACP-SL, and the pruning step itself.

Eqs. 10–13 turn per-channel scores into a pruning ratio:

* ``D_inst^t = (1/N) Σ_i S_comb,i`` (eq. 10), ``D_hist^t = mean of D_inst^1..t`` (eq. 11),
* ``W_t = D_hist^t / D_inst^t`` (eq. 12), ``P_t = max(P_min, min(W_t · P_base, P_max))`` (eq. 13).

**The flaw.** After eqs. 3 and 5 both normalised scores sum to 1 over the channels, so
``Σ_i S_inst,i = 0`` and with it ``Σ_i S_comb,i = 0``: ``D_inst ≡ 0`` and eq. 12 is 0/0.
Literally applied, ``W_t`` is rounding noise and ``P_t`` jumps between the bounds. Hence
two group scores (:data:`GROUP_SCORES`):

* ``"separation"`` (default): eqs. 10–13 on the raw separation ``R_i = intra_i − inter_i``
  (``≥ 0``), combined with its own history exactly like eq. 8. ``D_inst > 0`` whenever the
  classes differ at all, and ``W_t < 1`` (fewer channels pruned) when the features separate
  the labels better than they did on average — the paper's intent.
* ``"paper"``: eqs. 10–13 literally on ``S_comb``, guarded: ``|D_inst|`` below
  :data:`PAPER_RTOL` times the mean ``|S_comb|`` gives ``W_t = 1`` (``P_t = P_base``).

Which channels are pruned never depends on this choice: the ``round(P_t · N)`` lowest-scored
channels go (:func:`prune_count`, :func:`keep_indices`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from acpsl.errors import ConfigError

#: Group scores eqs. 10–13 can run on (see the module docstring).
GROUP_SCORES = ("separation", "paper")
#: ``(P_min, P_base, P_max)`` of the paper's experiments.
PAPER_BOUNDS = (0.6, 0.7, 0.8)
#: Relative size under which the literal ``D_inst`` counts as zero (``group_score="paper"``).
PAPER_RTOL = 1e-6


def validate_bounds(*, p_min: float, p_base: float, p_max: float) -> tuple[float, float, float]:
    """Check ``0 <= P_min <= P_base <= P_max < 1``; returns them as floats.

    Raises:
        ConfigError: a bound is not a finite number in ``[0, 1)`` or the order is violated.
    """
    values = {"p_min": p_min, "p_base": p_base, "p_max": p_max}
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"invalid {name}={value!r}: a pruning ratio must be a number")
        if not (math.isfinite(value) and 0.0 <= value < 1.0):
            raise ConfigError(
                f"invalid {name}={value!r}: a pruning ratio must be in [0, 1) "
                "(at least one channel is always kept)"
            )
    if not p_min <= p_base <= p_max:
        raise ConfigError(
            f"pruning ratios must satisfy p_min <= p_base <= p_max, got "
            f"p_min={p_min}, p_base={p_base}, p_max={p_max}"
        )
    return float(p_min), float(p_base), float(p_max)


def group_score(scores: torch.Tensor) -> float:
    """Channel group importance score ``D = (1/N) Σ_i s_i`` (eq. 10)."""
    return float(scores.to(torch.float64).mean())


def scaling_factor(*, d_hist: float, d_inst: float, tolerance: float = 0.0) -> float:
    """``W_t = D_hist / D_inst`` (eq. 12), guarded.

    Args:
        d_hist: historical group score (eq. 11).
        d_inst: instantaneous group score (eq. 10).
        tolerance: ``|d_inst| <= tolerance`` counts as zero and gives ``W_t = 1``.

    Returns:
        A finite float; 1.0 where eq. 12 is undefined (0/0 or an overflow).
    """
    if abs(d_inst) <= tolerance or d_inst == 0.0:
        return 1.0
    w = d_hist / d_inst
    return w if math.isfinite(w) else 1.0


def pruning_ratio(*, w: float, p_min: float, p_base: float, p_max: float) -> float:
    """``P_t = max(P_min, min(W_t · P_base, P_max))`` (eq. 13)."""
    return max(p_min, min(w * p_base, p_max))


def prune_count(*, ratio: float, channels: int) -> int:
    """Channels to prune: ``round(ratio · N)`` (half up), at most ``N − 1`` (keep at least 1)."""
    if channels < 1:
        raise ConfigError(f"need at least one channel to prune from, got {channels}")
    if not (math.isfinite(ratio) and 0.0 <= ratio <= 1.0):
        raise ConfigError(f"pruning ratio must be in [0, 1], got {ratio}")
    return min(math.floor(ratio * channels + 0.5), channels - 1)


def keep_indices(scores: torch.Tensor, *, keep: int) -> torch.Tensor:
    """Indices (ascending) of the ``keep`` highest-scored channels.

    Ties are broken by channel index: of equal scores the lower index is kept, so the mask
    is a deterministic function of the scores.
    """
    n = scores.numel()
    if not 1 <= keep <= n:
        raise ConfigError(f"must keep between 1 and {n} channels, got {keep}")
    order = torch.sort(scores.detach().cpu().reshape(-1), descending=True, stable=True).indices
    return torch.sort(order[:keep]).values


@dataclass(frozen=True)
class AcpStep:
    """What one application of eqs. 10–13 computed (for records and tests)."""

    ratio: float
    w: float
    d_inst: float
    d_hist: float


class AdaptiveRatio:
    """Eqs. 10–13 with their state (one per client).

    Args:
        p_min: lower bound of ``P_t``.
        p_base: base ratio ``P_base``.
        p_max: upper bound of ``P_t``.
        group_score: ``"separation"`` (default) or ``"paper"`` (see the module docstring).
    """

    def __init__(
        self,
        *,
        p_min: float = PAPER_BOUNDS[0],
        p_base: float = PAPER_BOUNDS[1],
        p_max: float = PAPER_BOUNDS[2],
        group_score: str = "separation",
    ) -> None:
        self.p_min, self.p_base, self.p_max = validate_bounds(
            p_min=p_min, p_base=p_base, p_max=p_max
        )
        if group_score not in GROUP_SCORES:
            raise ConfigError(
                f"unknown group_score {group_score!r}; choose one of {', '.join(GROUP_SCORES)}"
            )
        self.group_score = group_score
        # Separation history (eq. 7 applied to R): only its channel mean is ever needed,
        # since mean_i(α R_inst + (1 − α) R_hist) = α mean R_inst + (1 − α) mean R_hist.
        self.sep_total = 0.0
        self.sep_count = 0
        self.d_total = 0.0  # Σ_τ D_inst^τ (eq. 11)
        self.d_count = 0

    def step(
        self, *, combined: torch.Tensor, separation: torch.Tensor | None, alpha: float
    ) -> AcpStep:
        """Advance one iteration and return ``P_t``.

        Args:
            combined: the ranking scores ``S_comb`` ``[N]`` (used by ``group_score="paper"``).
            separation: raw ``R_inst = intra − inter`` ``[N]`` (needed by ``"separation"``).
            alpha: ``α_t`` of eq. 9.
        """
        if self.group_score == "separation":
            if separation is None:
                raise ConfigError("group_score='separation' needs the raw LCIS separation scores")
            r_inst = group_score(separation)
            self.sep_total += r_inst
            self.sep_count += 1
            r_hist = self.sep_total / self.sep_count
            d_inst = alpha * r_inst + (1.0 - alpha) * r_hist  # eq. 10 on eq. 8 of R
            tolerance = 0.0
        else:
            d_inst = group_score(combined)  # eq. 10, ≈ 0 by the flaw
            tolerance = PAPER_RTOL * float(combined.to(torch.float64).abs().mean())
        self.d_total += d_inst
        self.d_count += 1
        d_hist = self.d_total / self.d_count  # eq. 11
        w = scaling_factor(d_hist=d_hist, d_inst=d_inst, tolerance=tolerance)  # eq. 12
        ratio = pruning_ratio(w=w, p_min=self.p_min, p_base=self.p_base, p_max=self.p_max)
        return AcpStep(ratio=ratio, w=w, d_inst=d_inst, d_hist=d_hist)

    def state_dict(self) -> dict[str, Any]:
        """Flat JSON-able state (the running sums of eqs. 7 on ``R`` and 11)."""
        return {
            "sep_total": self.sep_total,
            "sep_count": self.sep_count,
            "d_total": self.d_total,
            "d_count": self.d_count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.sep_total = float(state["sep_total"])
        self.sep_count = int(state["sep_count"])
        self.d_total = float(state["d_total"])
        self.d_count = int(state["d_count"])
