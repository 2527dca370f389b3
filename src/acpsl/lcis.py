"""Label-aware channel importance scoring (LCIS), eqs. 1–9 of ACP-SL.

For one batch of smashed data ``A`` (shape ``[B, N, ...]``) and its labels, LCIS gives every
channel ``i`` a score: high when the label-wise mean feature maps ``M[n, i]`` (eq. 1) of the
different labels are far apart, low when they look alike.

Only the labels present in the batch count (``K`` = their number). The paper's sums are never
formed literally; three identities (SPEC section 2) make them cheap:

* ``intra_i = (1/K) Σ_n ||M[n, i]||²`` — the inner average of ``<A[b, i], M[n, i]>`` over the
  samples of label ``n`` in eq. 2 is exactly ``||M[n, i]||²``;
* ``Σ_{n<m} <M_n, M_m> = (||Σ_n M_n||² − Σ_n ||M_n||²) / 2``, so eq. 4 needs no label pairs;
* ``intra_i − inter_i = ½ · mean over label pairs ||M[n, i] − M[m, i]||² ≥ 0`` — the raw
  score is the between-class *separation* of channel ``i``
  (``= (K Σ_n ||M_n||² − ||Σ_n M_n||²) / (K (K − 1))``).

``M[n] = sums[n] / |B_n|`` with the label sums built by one ``index_add_`` (no loop over
labels), ``Σ_n ||M_n||² = Σ_n ||sums_n||² / |B_n|²`` is the only pass over the ``K`` maps, and
``Σ_n M_n = Σ_b A_b / |B_{y_b}|`` is one pass over the batch: the cost is
``O(B·N·H·W + K·N·H·W)``, never ``O(K²·N·H·W)``. Scores are accumulated in float64 because
the identities subtract close quantities.

Edge cases (SPEC section 2): ``K = 1`` has no label pair, so ``inter = 0`` and the separation
is 0; a normalisation (eqs. 3, 5) whose denominator is zero yields all-zero normalised scores;
non-finite features raise :class:`~acpsl.errors.TrainingError`.

Normalisation (eqs. 3, 5) divides by ``Σ_i |s_i|``. For ``intra`` (always ``≥ 0``) and for
``inter`` of non-negative features (ReLU/max-pool outputs, the paper's cut) this is exactly the
paper's ``Σ_i s_i``; for features of mixed sign ``inter`` may be negative, and dividing by a
negative or near-zero sum would invert or blow up the ranking, which ``Σ|s_i|`` avoids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from acpsl.errors import ConfigError, TrainingError

#: dtype every score is computed and kept in (the identities subtract close quantities).
SCORE_DTYPE = torch.float64


@dataclass(frozen=True)
class LcisScores:
    """Every per-channel quantity LCIS derives from one batch (all ``[N]``, float64, CPU).

    Attributes:
        intra: raw intra-label similarity score, eq. 2.
        inter: raw inter-label similarity score, eq. 4 (0 when ``num_labels == 1``).
        separation: ``intra − inter`` (``½`` mean pairwise ``||M_n − M_m||²``; 0 for one label).
        instantaneous: ``S_inst`` of eq. 6 (normalised intra minus normalised inter).
        num_labels: ``K``, the number of distinct labels present in the batch.
    """

    intra: torch.Tensor
    inter: torch.Tensor
    separation: torch.Tensor
    instantaneous: torch.Tensor
    num_labels: int


def _validate(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Check shapes and dtypes; returns ``features`` as ``[B, N, D]`` and labels ``[B]``."""
    if not isinstance(features, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise ConfigError("LCIS needs features and labels as torch tensors")
    if features.dim() < 2:
        raise ConfigError(
            f"LCIS needs features of shape [B, N, ...] (batch, channels, ...), "
            f"got shape {tuple(features.shape)}"
        )
    batch, channels = features.shape[0], features.shape[1]
    if batch == 0 or channels == 0:
        raise ConfigError(f"LCIS needs a non-empty batch, got shape {tuple(features.shape)}")
    if features.dtype.is_complex or not features.dtype.is_floating_point:
        raise ConfigError(f"LCIS needs real floating-point features, got {features.dtype}")
    if labels.dim() != 1 or labels.shape[0] != batch:
        raise ConfigError(
            f"LCIS needs one label per sample: labels of shape [{batch}], got {tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype.is_complex:
        raise ConfigError(f"labels must be integer class indices, got dtype {labels.dtype}")
    return features.reshape(batch, channels, -1), labels.to(features.device)


def lcis_scores(features: torch.Tensor, labels: torch.Tensor) -> LcisScores:
    """Eqs. 1–6 of ACP-SL for one batch, through the identities in the module docstring.

    Args:
        features: smashed data ``[B, N, ...]`` (any trailing shape, e.g. ``[B, N, H, W]``).
        labels: ``[B]`` integer labels; only the labels present count.

    Returns:
        The raw, separation and instantaneous scores, each ``[N]`` float64 on the CPU.

    Raises:
        ConfigError: wrong shapes or dtypes.
        TrainingError: non-finite features.
    """
    feats, labels = _validate(features, labels)
    batch, channels, spatial = feats.shape
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    k = int(counts.numel())
    flat = feats.reshape(batch, channels * spatial).to(SCORE_DTYPE)
    counts64 = counts.to(SCORE_DTYPE)
    sums = torch.zeros(k, channels * spatial, dtype=SCORE_DTYPE, device=flat.device)
    sums.index_add_(0, inverse, flat)  # label sums; M[n] = sums[n] / |B_n| (eq. 1)
    # Σ_n ||M_n||² = Σ_n ||sums_n||² / |B_n|²: the only pass over K maps.
    energy = sums.square_().reshape(k, channels, spatial).sum(dim=2)
    energy_sum = (energy / counts64.square().unsqueeze(1)).sum(dim=0)
    # Σ_n M_n = Σ_b A_b / |B_{y_b}|, a pass over the batch instead of over the K means.
    total = (1.0 / counts64)[inverse] @ flat
    total_energy = (total * total).reshape(channels, spatial).sum(dim=1)  # ||Σ_n M_n||²
    intra = energy_sum / k  # eq. 2
    # A NaN or inf anywhere in the batch reaches the scores of its channel through the label
    # sums, so checking the [N] result replaces a (slow) full pass over the features.
    if not bool(torch.isfinite(intra).all() and torch.isfinite(total_energy).all()):
        raise TrainingError(
            "LCIS got non-finite smashed data (NaN or inf): training has diverged; "
            "lower the learning rate or check the input data"
        )
    if k >= 2:
        pairs = k * (k - 1) / 2
        inter = (total_energy - energy_sum) / 2 / pairs  # eq. 4
        # intra − inter = (K Σ||M_n||² − ||Σ M_n||²) / (K (K − 1)) ≥ 0; clamp the rounding.
        separation = ((k * energy_sum - total_energy) / (k * (k - 1))).clamp_(min=0.0)
    else:
        inter = torch.zeros_like(intra)
        separation = torch.zeros_like(intra)
    intra, inter, separation = intra.cpu(), inter.cpu(), separation.cpu()
    inst = normalize(intra) - normalize(inter)
    return LcisScores(
        intra=intra, inter=inter, separation=separation, instantaneous=inst, num_labels=k
    )


def raw_scores(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The raw intra- and inter-label similarity scores (eqs. 2 and 4), each ``[N]`` float64.

    Args:
        features: smashed data ``[B, N, ...]``.
        labels: ``[B]`` integer labels.
    """
    scores = lcis_scores(features, labels)
    return scores.intra, scores.inter


def instantaneous_scores(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``S_inst`` of eq. 6 (normalised intra minus normalised inter), ``[N]`` float64.

    Args:
        features: smashed data ``[B, N, ...]``.
        labels: ``[B]`` integer labels.
    """
    return lcis_scores(features, labels).instantaneous


def normalize(scores: torch.Tensor) -> torch.Tensor:
    """Eqs. 3 and 5: divide per-channel scores by their sum over channels.

    The denominator is ``Σ_i |s_i|`` (equal to the paper's ``Σ_i s_i`` for non-negative
    scores, and sign-preserving otherwise); when it is zero the result is all zeros, not NaN.
    """
    total = scores.abs().sum()
    if float(total) == 0.0:
        return torch.zeros_like(scores)
    return scores / total


def combination_weight(*, t: int, total: int) -> float:
    """``α_t = 1 − t / T`` (eq. 9), clipped to ``[0, 1]`` for ``t`` outside ``1..T``."""
    if total < 1:
        raise ConfigError(f"total iterations must be >= 1, got {total}")
    return min(1.0, max(0.0, 1.0 - t / total))


def combine(*, instantaneous: torch.Tensor, historical: torch.Tensor, alpha: float) -> torch.Tensor:
    """``S_comb = α S_inst + (1 − α) S_hist`` (eq. 8)."""
    return alpha * instantaneous + (1.0 - alpha) * historical


class ScoreHistory:
    """Running mean of per-channel scores: ``S_hist`` of eq. 7 (one per client).

    ``update`` adds the current iteration's scores first, so ``S_hist^t`` includes
    ``S_inst^t`` as eq. 7 writes it (``τ = 1..t``).
    """

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.count = 0

    def update(self, scores: torch.Tensor) -> torch.Tensor:
        """Add one iteration's scores ``[N]``; returns the updated historical mean."""
        scores = scores.detach().to("cpu", SCORE_DTYPE)
        if self.total is None:
            self.total = torch.zeros_like(scores)
        elif self.total.shape != scores.shape:
            raise TrainingError(
                f"the number of channels changed from {self.total.numel()} to "
                f"{scores.numel()}; a score history belongs to one cut layer"
            )
        self.total += scores
        self.count += 1
        return self.total / self.count

    @property
    def mean(self) -> torch.Tensor | None:
        """``S_hist`` after the latest update, or ``None`` before the first one."""
        if self.total is None or self.count == 0:
            return None
        return self.total / self.count

    def state_dict(self) -> dict[str, Any]:
        """Flat state: ``total`` (tensor, only once updated) and ``count``."""
        state: dict[str, Any] = {"count": self.count}
        if self.total is not None:
            state["total"] = self.total.clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.count = int(state["count"])
        total = state.get("total")
        self.total = None if total is None else torch.as_tensor(total, dtype=SCORE_DTYPE).clone()
