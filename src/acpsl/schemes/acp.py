"""ACP-SL on the cut: LCIS channel scores + adaptive channel pruning of the smashed data.

Wire format (``wire_id = 2``):

* uplink: header (shape ``[B, N, ...]``) + the channel mask as ``N`` bits
  (``ceil(N / 8)`` bytes, least-significant bit first) + the kept channels' values as float32,
  laid out as ``x[:, kept]`` in C order (``B · kept · H · W · 4`` bytes);
* downlink: header + the gradient of the kept channels only, same layout; the mask is not
  resent — both sides remember it (state rule of :mod:`acpsl.schemes.base`).

The server rebuilds zeros in the pruned channels, and the client's gradient there is exactly
zero. One training iteration (:meth:`AcpScheme.compress` with ``training=True``):

1. the scorer gives instantaneous channel scores (LCIS eq. 6 by default);
2. they update the client's history ``S_hist`` (eq. 7) and combine into ``S_comb``
   (eqs. 8–9, with ``t``/``T`` from :meth:`~acpsl.schemes.base.Scheme.set_iteration`);
3. the ratio policy picks ``P_t`` (eqs. 10–13 by default);
4. the ``round(P_t · N)`` lowest-ranked channels are pruned (at least one channel is kept;
   of tied scores the lower channel index is kept).

A batch whose samples all share one label (``K < 2``: no label contrast; frequent with
Dirichlet β ≤ 0.1 or small batches) skips steps 2–3 whenever the configuration uses labels
(LCIS scorer or the separation group score): it enters no history and is pruned at the
previous ``P_t`` with the previous ranking (SPEC section 2). Label-free ablations (``l0`` or
``random`` scorer with the ``fixed`` or ``random`` ratio) never look at the labels.

Inference (``training=False``): channels are ranked by the latest ``S_hist`` and pruned at the
latest ``P_t``; before the first training iteration every channel is kept. Inference changes
no state apart from the remembered mask.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from acpsl import lcis, ratios, scorers
from acpsl.acp import GROUP_SCORES, PAPER_BOUNDS, keep_indices, prune_count
from acpsl.cut.payload import (
    KIND_FORWARD,
    KIND_GRAD,
    PayloadReader,
    ShapeLimit,
    decode_header,
    encode_header,
    float32_bytes,
    pack_bits,
    unpack_bits,
)
from acpsl.errors import CheckpointError, ConfigError, PayloadError, TrainingError
from acpsl.schemes.base import Scheme
from acpsl.schemes.perinstance import all_finite
from acpsl.schemes.registry import register

#: Score modes of the ablation of paper Fig. 3.
SCORE_MODES = ("inst", "hist", "comb")


def _component_seeds(seed: int) -> tuple[int, int]:
    """Two independent seeds (scorer, ratio policy) derived from the scheme's one seed."""
    gen = torch.Generator().manual_seed(seed)
    drawn = torch.randint(0, 2**62, (2,), generator=gen, dtype=torch.int64)
    return int(drawn[0]), int(drawn[1])


@register("acp")
class AcpScheme(Scheme):
    """ACP-SL: prune the least important channels of the smashed data (one mask per batch).

    Args:
        scorer: channel scorer, ``lcis`` (default) | ``l0`` | ``random`` (paper Fig. 5).
        score_mode: ranking scores, ``comb`` (default, eq. 8) | ``inst`` (eq. 6) |
            ``hist`` (eq. 7) (paper Fig. 3).
        ratio: ratio policy, ``adaptive`` (default, eqs. 10–13) | ``fixed`` | ``random``
            (paper Fig. 6).
        p_min: lower bound of the pruning ratio (paper: 0.6).
        p_base: base pruning ratio (paper: 0.7).
        p_max: upper bound of the pruning ratio (paper: 0.8).
        group_score: ``separation`` (default) or ``paper`` for the adaptive ratio
            (see :mod:`acpsl.acp`); ignored by the other policies.
        seed: seed of the random scorer and random ratio policy.
    """

    name = "acp"
    wire_id = 2
    uses_iteration = True

    def __init__(
        self,
        *,
        scorer: str = "lcis",
        score_mode: str = "comb",
        ratio: str = "adaptive",
        p_min: float = PAPER_BOUNDS[0],
        p_base: float = PAPER_BOUNDS[1],
        p_max: float = PAPER_BOUNDS[2],
        group_score: str = "separation",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if score_mode not in SCORE_MODES:
            raise ConfigError(
                f"unknown score_mode {score_mode!r}; choose one of {', '.join(SCORE_MODES)}"
            )
        if group_score not in GROUP_SCORES:
            raise ConfigError(
                f"unknown group_score {group_score!r}; choose one of {', '.join(GROUP_SCORES)}"
            )
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"invalid seed={seed!r}: must be a non-negative integer")
        scorer_seed, ratio_seed = _component_seeds(seed)
        self.scorer_name = scorer
        self.score_mode = score_mode
        self.ratio_name = ratio
        self.scorer = scorers.create(
            scorer, **({"seed": scorer_seed} if scorer == "random" else {})
        )
        bounds: dict[str, Any] = {"p_min": p_min, "p_base": p_base, "p_max": p_max}
        if ratio == "adaptive":
            bounds["group_score"] = group_score
        elif ratio == "random":
            bounds["seed"] = ratio_seed
        self.policy = ratios.create(ratio, **bounds)
        self.history = lcis.ScoreHistory()
        #: The ranking of the latest iteration that entered the histories (a K < 2 batch
        #: reuses it).
        self._ranking: torch.Tensor | None = None
        self._kept_counts: list[int] = []
        self._sent: tuple[tuple[int, ...], torch.Tensor] | None = None  # client: last compress
        self._received: tuple[tuple[int, ...], torch.Tensor] | None = None  # server: decompress

    # --------------------------------------------------------------------------- scoring
    def _training_mask(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Steps 1–4 of one training iteration; returns the kept channel indices."""
        needs_lcis = self.scorer.needs_labels or self.policy.needs_separation
        scores_lcis = None
        if needs_lcis:
            if labels is None:
                raise ConfigError(
                    "acp needs the batch labels in training (compress(x, labels=y)); "
                    "label-free ablations: scorer='l0' or 'random' with ratio='fixed' or 'random'"
                )
            scores_lcis = lcis.lcis_scores(x, labels)
            if scores_lcis.num_labels < 2:
                return self._single_label_mask(scores_lcis)
        elif not all_finite(x):
            raise TrainingError("acp got non-finite smashed data (NaN or inf): training diverged")
        inst = self.scorer.score(x, labels=labels, lcis=scores_lcis)
        hist = self.history.update(inst)
        alpha = lcis.combination_weight(t=self.iteration, total=self.total_iterations)
        if self.score_mode == "inst":
            ranking = inst
        elif self.score_mode == "hist":
            ranking = hist
        else:
            ranking = lcis.combine(instantaneous=inst, historical=hist, alpha=alpha)
        step = self.policy.step(
            combined=ranking,
            separation=None if scores_lcis is None else scores_lcis.separation,
            alpha=alpha,
        )
        self._ranking = ranking
        self._stats = {"p_target": step.ratio, "w": step.w, "alpha": alpha}
        return self._prune(ranking, ratio=step.ratio)

    def _single_label_mask(self, scores: lcis.LcisScores) -> torch.Tensor:
        """A batch with ``K < 2`` labels (SPEC section 2): no label contrast, so it enters no
        history — ``S_hist`` (eq. 7), the separation history and ``D_hist`` (eq. 11) stay as
        they were. It is pruned at the previous ``P_t`` with the previous ranking (``S_comb``
        of eq. 8 by default); before any history, at ``P_base`` ranked by its own intra score
        (eq. 2). ``t`` advances as usual (it is the run's counter)."""
        n = scores.intra.numel()
        ratio = self.policy.latest
        # A checkpoint written before the ranking was kept: the history's ranking.
        ranking = self.history.mean if self._ranking is None else self._ranking
        if ranking is not None and ranking.numel() != n:
            raise TrainingError(
                f"the number of channels changed from {ranking.numel()} to {n}; "
                "acp's state belongs to one cut layer"
            )
        if ratio is None or ranking is None:
            ratio, ranking = self.policy.p_base, scores.intra
        alpha = lcis.combination_weight(t=self.iteration, total=self.total_iterations)
        self._stats = {"p_target": ratio, "w": 1.0, "alpha": alpha, "single_label": 1.0}
        return self._prune(ranking, ratio=ratio)

    def _prune(self, ranking: torch.Tensor, *, ratio: float) -> torch.Tensor:
        """Step 4: the kept channels (``round(ratio · N)`` lowest-ranked pruned), counted."""
        n = ranking.numel()
        kept = keep_indices(ranking, keep=n - prune_count(ratio=ratio, channels=n))
        if not self._kept_counts:
            self._kept_counts = [0] * n
        for i in kept.tolist():
            self._kept_counts[i] += 1
        return kept

    def _inference_mask(self, n: int) -> torch.Tensor:
        """Latest ``S_hist`` ranking at the latest ``P_t``; keep all before any training."""
        hist = self.history.mean
        if hist is None or self.policy.latest is None:
            self._stats = {}
            return torch.arange(n)
        if hist.numel() != n:
            raise TrainingError(
                f"acp was trained on {hist.numel()} channels but got {n} at inference"
            )
        self._stats = {"p_target": self.policy.latest}
        return keep_indices(hist, keep=n - prune_count(ratio=self.policy.latest, channels=n))

    # ---------------------------------------------------------------------------- the cut
    def compress(
        self, x: torch.Tensor, *, labels: torch.Tensor | None = None, training: bool = True
    ) -> bytes:
        if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[0] < 1 or x.shape[1] < 1:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ConfigError(f"acp needs smashed data of shape [B, N, ...], got {shape}")
        x = x.detach()
        n = x.shape[1]
        kept = self._training_mask(x, labels) if training else self._inference_mask(n)
        mask = torch.zeros(n, dtype=torch.bool)
        mask[kept] = True
        values = x.index_select(1, kept.to(x.device))
        shape = tuple(int(s) for s in x.shape)
        data = (
            encode_header(scheme_id=self.wire_id, kind=KIND_FORWARD, shape=shape)
            + pack_bits(mask)
            + float32_bytes(values)
        )
        self._sent = (shape, kept)
        per_channel = math.prod(shape[2:])
        self._stats.update(
            {
                "ratio": (n - kept.numel()) / n,
                "kept": float(kept.numel()),
                "table2_bytes": 4.0 * shape[0] * kept.numel() * per_channel + n / 8,
            }
        )
        return data

    def decompress(self, data: bytes) -> torch.Tensor:
        reader = PayloadReader(data, what="acp forward payload")
        shape = decode_header(reader, scheme_id=self.wire_id, kind=KIND_FORWARD, limit=self.limit)
        if len(shape) < 2 or shape[0] < 1 or shape[1] < 1:
            raise PayloadError(f"acp forward payload: shape {shape} is not [B, N, ...]")
        mask = unpack_bits(reader.take((shape[1] + 7) // 8), shape[1])
        kept = torch.nonzero(mask).reshape(-1)
        if kept.numel() == 0:
            raise PayloadError("acp forward payload: the channel mask keeps no channel")
        # Every policy prunes at most p_max (eq. 13 clips there), so a valid mask keeps at
        # least this many channels: the rebuilt tensor is at most ~1 / (1 - p_max) times the
        # values the payload carries, never thousands of zero channels around one value.
        least = shape[1] - prune_count(ratio=self.policy.p_max, channels=shape[1])
        if kept.numel() < least:
            raise PayloadError(
                f"acp forward payload: the mask keeps {kept.numel()} of {shape[1]} channels, "
                f"this scheme prunes at most p_max={self.policy.p_max} (keeps at least {least})"
            )
        values = _read_kept(reader, shape=shape, kept=kept)
        self._received = (shape, kept)
        return _scatter(values, shape=shape, kept=kept)

    def compress_grad(self, g: torch.Tensor) -> bytes:
        if self._received is None:
            raise TrainingError("acp compress_grad called before any decompress (no mask known)")
        shape, kept = self._received
        if tuple(g.shape) != shape:
            raise TrainingError(
                f"acp gradient has shape {tuple(g.shape)}, the last uplink had {shape}"
            )
        values = g.detach().index_select(1, kept.to(g.device))
        return encode_header(scheme_id=self.wire_id, kind=KIND_GRAD, shape=shape) + float32_bytes(
            values
        )

    def decompress_grad(self, data: bytes) -> torch.Tensor:
        if self._sent is None:
            raise PayloadError("acp gradient payload arrived before any uplink was sent")
        shape, kept = self._sent
        reader = PayloadReader(data, what="acp gradient payload")
        got = decode_header(
            reader, scheme_id=self.wire_id, kind=KIND_GRAD, limit=ShapeLimit.exact(shape)
        )
        if got != shape:
            raise PayloadError(
                f"acp gradient payload declares shape {got}, the last uplink had {shape}"
            )
        values = _read_kept(reader, shape=shape, kept=kept)
        return _scatter(values, shape=shape, kept=kept)

    # --------------------------------------------------------------------------- records
    def kept_counts(self) -> list[int]:
        """How many training iterations kept each channel (empty before the first one)."""
        return list(self._kept_counts)

    def state_dict(self) -> dict[str, Any]:
        """Flat state: score history, ratio policy (with RNG), scorer RNG, kept counts."""
        state: dict[str, Any] = {"kept_counts": list(self._kept_counts)}
        if self._ranking is not None:
            state["ranking"] = self._ranking.clone()
        for prefix, part in (
            ("history.", self.history.state_dict()),
            ("policy.", self.policy.state_dict()),
            ("scorer.", self.scorer.state_dict()),
        ):
            state.update({prefix + k: v for k, v in part.items()})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (a resumed run continues identically)."""

        def part(prefix: str) -> dict[str, Any]:
            return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}

        try:
            self.history.load_state_dict(part("history."))
            self.policy.load_state_dict(part("policy."))
            self.scorer.load_state_dict(part("scorer."))
            self._kept_counts = [int(c) for c in state["kept_counts"]]
            ranking = state.get("ranking")
            self._ranking = (
                None if ranking is None else torch.as_tensor(ranking, dtype=lcis.SCORE_DTYPE)
            )
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"acp state does not match this scheme's configuration: {exc}"
            ) from None


def _read_kept(
    reader: PayloadReader, *, shape: tuple[int, ...], kept: torch.Tensor
) -> torch.Tensor:
    """Read ``x[:, kept]`` (float32) and check that nothing follows."""
    kept_shape = (shape[0], kept.numel(), *shape[2:])
    values = reader.float32(math.prod(kept_shape))
    reader.finish()
    return values.reshape(kept_shape)


def _scatter(values: torch.Tensor, *, shape: tuple[int, ...], kept: torch.Tensor) -> torch.Tensor:
    """The full tensor of ``shape`` with ``values`` in the kept channels and zeros elsewhere."""
    out = torch.zeros(shape, dtype=torch.float32)
    out.index_copy_(1, kept, values)
    return out
