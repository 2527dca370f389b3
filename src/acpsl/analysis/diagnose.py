"""Why a compressed run is less accurate: the toolkit's instruments on a finished run.

``acpsl diagnose RUN_DIR ...`` answers four questions from a run's records, its kept-channel
counts and its last checkpoint:

1. **Is the loss in the model or in the compressed evaluation?** Test accuracy of the final
   models with the cut compressed as the scheme does at inference (ACP-SL: the latest
   ``S_hist`` ranking at the latest ``P_t``) and uncompressed (:func:`evaluate_both`). A
   large gap says the server model relies on channels the inference mask drops; none says
   the model itself learned less.
2. **How does ACP-SL's pruning ratio move?** Over every iteration's ``P_t`` (eq. 13,
   recorded in ``ratios``): mean, standard deviation, mean change between consecutive
   iterations, and the share of iterations pinned at ``P_min`` or ``P_max``
   (:func:`ratio_trace_stats`). A ratio that jumps between the clip bounds acts like
   Fig. 6's random ratio.
3. **Which channels does the server see?** From ``kept_channels.json``: channels never sent,
   the share of all keeps taken by the most-kept quarter of the channels, and the effective
   number of channels (``exp`` of the entropy of the keep distribution)
   (:func:`kept_concentration`).
4. **Is the ranking stable?** The final client model's smashed data for ``batches`` training
   batches of the client that evaluates, each ranked by its own instantaneous score (eq. 6
   for LCIS, the run's scorer otherwise) and pruned at the final ``P_t``: the mean Jaccard
   overlap of consecutive batches' kept sets and of each with the inference kept set, beside
   the overlap two random sets of the same size would have (:func:`ranking_stability`).
   Early in training ``S_comb`` (eq. 8) is mostly this instantaneous score
   (``alpha_t = 1 - t/T``), so an unstable instantaneous ranking means the server sees
   changing channel subsets then. It also measures how much of each batch's between-class
   separation the kept channels hold, against the best ``keep`` channels.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from acpsl.config import TrainConfig
from acpsl.errors import CheckpointError

#: Tolerance for "at a clip bound".
_AT_BOUND = 1e-9


def ratio_trace_stats(
    records: Sequence[Mapping[str, Any]], *, p_min: float, p_max: float
) -> dict[str, float] | None:
    """Statistics of ACP-SL's per-iteration pruning ratio ``P_t`` over a run's records.

    Returns ``None`` when no record holds ``ratios`` (not an ACP-SL run, or old records).
    Keys: ``iterations``, ``mean``, ``std`` (population), ``mean_abs_step`` (mean
    ``|P_{t+1} - P_t|`` over consecutive iterations of the run), ``at_bounds`` (share of
    iterations with ``P_t`` equal to ``p_min`` or ``p_max``).
    """
    trace = [float(v) for r in records for v in (r.get("ratios") or [])]
    if not trace:
        return None
    steps = [abs(b - a) for a, b in itertools.pairwise(trace)]
    pinned = sum(1 for v in trace if abs(v - p_min) <= _AT_BOUND or abs(v - p_max) <= _AT_BOUND)
    return {
        "iterations": float(len(trace)),
        "mean": statistics.fmean(trace),
        "std": statistics.pstdev(trace),
        "mean_abs_step": statistics.fmean(steps) if steps else 0.0,
        "at_bounds": pinned / len(trace),
    }


def kept_concentration(counts: Sequence[int]) -> dict[str, float]:
    """How the keeps of a run spread over the channels (``counts[n]``: iterations in which
    channel ``n`` was sent).

    Keys: ``channels``, ``never`` (channels with no keep), ``top_quarter_share`` (share of
    all keeps held by the ``ceil(N/4)`` most-kept channels), ``effective`` (``exp`` of the
    Shannon entropy of ``counts / sum``: N when every channel is kept equally often, the
    number of channels kept when the same ones always are).
    """
    values = [int(c) for c in counts]
    total = sum(values)
    n = len(values)
    if n == 0 or total <= 0:
        return {"channels": float(n), "never": float(n), "top_quarter_share": 0.0, "effective": 0.0}
    top = sorted(values, reverse=True)[: math.ceil(n / 4)]
    entropy = -sum((c / total) * math.log(c / total) for c in values if c > 0)
    return {
        "channels": float(n),
        "never": float(sum(1 for c in values if c == 0)),
        "top_quarter_share": sum(top) / total,
        "effective": math.exp(entropy),
    }


def jaccard(a: torch.Tensor | Sequence[int], b: torch.Tensor | Sequence[int]) -> float:
    """``|A ∩ B| / |A ∪ B|`` of two index sets (1 for two empty sets)."""
    sa = {int(i) for i in (a.tolist() if isinstance(a, torch.Tensor) else a)}
    sb = {int(i) for i in (b.tolist() if isinstance(b, torch.Tensor) else b)}
    union = len(sa | sb)
    return 1.0 if union == 0 else len(sa & sb) / union


def random_jaccard(keep: int, channels: int) -> float:
    """Expected Jaccard overlap of two independent uniformly random ``keep``-subsets of
    ``channels`` items (hypergeometric intersection ``i``: overlap ``i / (2 keep - i)``)."""
    if not 0 < keep <= channels:
        raise ValueError(f"keep={keep} must be in 1..{channels}")
    total = math.comb(channels, keep)
    out = 0.0
    for i in range(max(0, 2 * keep - channels), keep + 1):
        p = math.comb(keep, i) * math.comb(channels - keep, keep - i) / total
        out += p * i / (2 * keep - i)
    return out


def ranking_stability(
    scheme: Any, smashed: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, float] | None:
    """Kept-set overlaps of per-batch instantaneous rankings (module docstring, item 4).

    Args:
        scheme: a trained :class:`acpsl.schemes.acp.AcpScheme` (left unchanged: a copy
            scores the batches); other schemes give ``None``.
        smashed: ``(x, y)`` pairs: the client model's smashed data ``[B, N, ...]`` and labels.

    Keys: ``batches``, ``keep`` (channels kept at the final ``P_t``), ``channels``,
    ``consecutive`` (mean Jaccard of consecutive batches' kept sets), ``vs_inference``
    (mean Jaccard of each with the inference kept set; NaN before any history), ``random``
    (:func:`random_jaccard`), ``separation_kept`` (mean over batches of the between-class
    separation ``intra - inter`` that the batch's kept channels hold, over the most any
    ``keep`` channels hold: 1 when the ranking keeps the most label-separating channels) and
    ``separation_kept_inference`` (the same for the inference kept set). Eq. 6 ranks by the
    *difference of shares* ``intra_i / Σ intra - inter_i / Σ |inter|``, not by the
    separation itself, so a channel with large, well-separated label means can rank low.
    """
    from acpsl import lcis
    from acpsl.acp import keep_indices, prune_count
    from acpsl.schemes.acp import AcpScheme

    if not isinstance(scheme, AcpScheme) or not smashed:
        return None
    probe = copy.deepcopy(scheme)
    n = int(smashed[0][0].shape[1])
    latest = probe.policy.latest
    ratio = float(latest if latest is not None else probe.policy.p_base)
    keep = n - prune_count(ratio=ratio, channels=n)
    hist = probe.history.mean
    inference = keep_indices(hist, keep=keep) if hist is not None else None
    kept: list[torch.Tensor] = []
    captured: list[float] = []
    captured_inference: list[float] = []
    for x, y in smashed:
        scores = lcis.lcis_scores(x, y)
        if scores.num_labels < 2:
            continue  # no label contrast: the scheme reuses its previous ranking there
        inst = probe.scorer.score(x, labels=y, lcis=scores if probe.scorer.needs_labels else None)
        kept.append(keep_indices(inst, keep=keep))
        # the batch's between-class separation (intra - inter, SPEC section 2) that the kept
        # channels hold, relative to the most a set of `keep` channels could hold
        sep = scores.separation
        best = float(torch.topk(sep, keep).values.sum())
        if best > 0:
            captured.append(float(sep[kept[-1]].sum()) / best)
            if inference is not None:
                captured_inference.append(float(sep[inference].sum()) / best)
    if not kept:
        return None
    consecutive = [jaccard(a, b) for a, b in itertools.pairwise(kept)]
    return {
        "batches": float(len(kept)),
        "keep": float(keep),
        "channels": float(n),
        "consecutive": statistics.fmean(consecutive) if consecutive else math.nan,
        "vs_inference": (
            statistics.fmean(jaccard(k, inference) for k in kept)
            if inference is not None
            else math.nan
        ),
        "random": random_jaccard(keep, n),
        "separation_kept": statistics.fmean(captured) if captured else math.nan,
        "separation_kept_inference": (
            statistics.fmean(captured_inference) if captured_inference else math.nan
        ),
    }


def evaluate_both(run: Any) -> tuple[float, float]:
    """``(compressed, uncompressed)`` test accuracy of a restored run
    (:func:`acpsl.engine.loop.restore_run` with ``eval_uncompressed=True``)."""
    from acpsl.engine.loop import evaluate

    out = evaluate(run)
    return float(out["test_acc"]), float(out["test_acc_uncompressed"])


def diagnose_run(
    run_dir: str | Path,
    *,
    data_dir: str | None = None,
    batches: int = 20,
    evaluate: bool = True,
) -> dict[str, Any]:
    """Every instrument of this module on one finished run (a JSON-friendly dict).

    Args:
        run_dir: a run directory (``config.toml``, ``records.jsonl``, ``checkpoint.pt``).
        data_dir: where the dataset lives, if not where the run read it.
        batches: training batches for the ranking stability.
        evaluate: restore the checkpoint for the accuracy and ranking instruments (False:
            only what the records and kept-channel counts say; no checkpoint or data needed).

    Raises:
        CheckpointError: the directory is not a run, or (with ``evaluate``) its checkpoint is
            missing or corrupt.
        DataError: (with ``evaluate``) the dataset is not available.
    """
    from acpsl.engine.records import read_records

    path = Path(run_dir)
    if not (path / "config.toml").exists():
        raise CheckpointError(f"{path / 'config.toml'} is missing: {path} is not a run directory")
    config = TrainConfig.from_toml(path / "config.toml")
    records = read_records(path / "records.jsonl")
    if not records:
        raise CheckpointError(f"{path} has no finished round to diagnose")
    params = dict(config.scheme_params)
    out: dict[str, Any] = {
        "run": str(path),
        "scheme": config.scheme,
        "scheme_params": params,
        "rounds": len(records),
        "test_acc_recorded": float(records[-1]["test_acc"]),
    }
    if config.scheme == "acp":
        from acpsl.acp import PAPER_BOUNDS

        out["ratio_trace"] = ratio_trace_stats(
            records,
            p_min=float(params.get("p_min", PAPER_BOUNDS[0])),
            p_max=float(params.get("p_max", PAPER_BOUNDS[2])),
        )
    kept_file = path / "kept_channels.json"
    if kept_file.exists():
        try:
            counts = json.loads(kept_file.read_text(encoding="utf-8"))["total"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{kept_file} is not a kept-channel record ({exc})") from None
        out["kept"] = kept_concentration(counts)
    if not evaluate:
        return out

    from acpsl.engine.loop import restore_run

    changes: dict[str, Any] = {"eval_uncompressed": True, "progress": False}
    if data_dir is not None:
        changes["data_dir"] = data_dir
    run = restore_run(path, config=config.replace(**changes))
    compressed, uncompressed = evaluate_both(run)
    out["test_acc_compressed"] = compressed
    out["test_acc_uncompressed"] = uncompressed
    # the client holding the newest client model evaluates (sequential SL: the round's
    # last); its own scheme state (histories, latest P_t) is what inference used
    c = run.holder if run.holder is not None else len(run.clients) - 1
    client = run.clients[c]
    indices = run.parts[c][: batches * run.config.batch_size]
    smashed = [
        (client.smash(x).to("cpu", torch.float32), y)
        for x, y in run.train_set.batches(indices, batch_size=run.config.batch_size)
    ]
    out["stability"] = ranking_stability(client.scheme, smashed)
    return out
