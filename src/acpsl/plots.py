"""Figures of a run grid, from the records the runs wrote (matplotlib, Agg, imported lazily).

Every function takes *panels*: a sequence of ``(panel title, {label: [records of seed 0,
records of seed 1, ...]})`` where a run's records are the dicts of its ``records.jsonl``
(SPEC section 7 field names). One figure has one subplot per panel and one curve per label
(the mean over seeds, with the seeds' min-max range shaded when there are several), and a
label has the same colour in every figure of a report (:func:`label_colors`).

Matplotlib is imported inside the functions, with the non-interactive Agg backend, so the
core package imports without it and plotting never needs a display.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from acpsl.engine.records import gen_error as records_gen_error

Records = Sequence[Mapping[str, Any]]
PanelData = tuple[str, Mapping[str, Sequence[Records]]]

#: Fixed colours of the papers' schemes, so that e.g. ACP-SL is red in every report.
KNOWN_COLORS = {
    "standard": "#222222",
    "acp": "#d62728",
    "randtopk": "#1f77b4",
    "topk": "#17becf",
    "sizered": "#8c564b",
    "quant": "#2ca02c",
    "l1": "#9467bd",
}
#: Colours handed out, in order, to labels without a fixed one.
_CYCLE = (
    "#ff7f0e",
    "#1f77b4",
    "#2ca02c",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#17becf",
    "#7f7f7f",
    "#d62728",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
    "#c5b0d5",
    "#c49c94",
    "#f7b6d2",
)
#: Plot kinds and the file each writes.
FILES = {
    "acc_round": "acc_vs_round.png",
    "acc_bytes": "acc_vs_bytes.png",
    "loss_round": "loss_vs_round.png",
    "ratio_round": "ratio_vs_round.png",
    "ratio_iter": "ratio_vs_iteration.png",
    "kept_hist": "kept_hist.png",
    "topk_hist": "topk_hist.png",
    "gen_gap": "gen_gap.png",
    "gen_gap_offset": "gen_gap_offset.png",
}
#: The RandTopk paper's Fig. 4(b) plots the generalization error minus this line of the
#: training accuracy (both as fractions): ``gen_error - (0.5 * train_acc - 0.2)``.
GEN_OFFSET_SLOPE = 0.5
GEN_OFFSET_INTERCEPT = -0.2


def label_colors(labels: Sequence[str]) -> dict[str, str]:
    """One colour per label: the scheme's fixed colour when the label is a scheme name, else
    the next unused colour of a fixed cycle (so the mapping depends only on ``labels``)."""
    colors: dict[str, str] = {}
    used: set[str] = set()
    for label in labels:
        if label in KNOWN_COLORS and label not in colors:
            colors[label] = KNOWN_COLORS[label]
            used.add(KNOWN_COLORS[label])
    cycle = [c for c in _CYCLE if c not in used] + [c for c in _CYCLE if c in used]
    i = 0
    for label in labels:
        if label not in colors:
            colors[label] = cycle[i % len(cycle)]
            i += 1
    return colors


def cut_bytes(record: Mapping[str, Any]) -> int:
    """Cumulative bytes of smashed data and gradients (up + down) after a record's round."""
    return int(record["bytes_up_total"]) + int(record["bytes_down_total"])


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _grid(plt: Any, count: int, *, width: float = 5.2, height: float = 3.8) -> tuple[Any, list]:
    cols = min(count, 2)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[count:]:
        ax.set_visible(False)
    return fig, flat[:count]


def _series(
    runs: Sequence[Records], *, x: str, y: str
) -> tuple[list[float], list[float], list[float], list[float]] | None:
    """Mean of ``y`` over seeds at each x position (rounds aligned by index), and min / max."""
    curves = []
    for records in runs:
        pts = []
        for r in records:
            value = r.get(y) if y != "gen_gap" else _gap(r)
            if value is None:
                continue
            xv = float(r["round"]) if x == "round" else cut_bytes(r) / 1e6
            pts.append((xv, float(value)))
        if pts:
            curves.append(pts)
    if not curves:
        return None
    length = min(len(c) for c in curves)
    xs = [sum(c[i][0] for c in curves) / len(curves) for i in range(length)]
    ys = [[c[i][1] for c in curves] for i in range(length)]
    return xs, [sum(v) / len(v) for v in ys], [min(v) for v in ys], [max(v) for v in ys]


def gen_error(record: Mapping[str, Any]) -> float | None:
    """A round's generalization error ``train_acc - test_acc`` as a fraction: the record's
    ``gen_error`` when it has one, else computed from its accuracies (older records)."""
    stored = record.get("gen_error")
    return float(stored) if stored is not None else records_gen_error(record)


def gen_error_offset(record: Mapping[str, Any]) -> float | None:
    """The quantity of the RandTopk paper's Fig. 4(b) y axis: the generalization error minus
    ``0.5 * train_acc - 0.2`` (fractions), or ``None`` without accuracies."""
    gap, train = gen_error(record), record.get("train_acc")
    if gap is None or train is None:
        return None
    return gap - (GEN_OFFSET_SLOPE * float(train) + GEN_OFFSET_INTERCEPT)


def _gap(record: Mapping[str, Any]) -> float | None:
    gap = gen_error(record)
    return None if gap is None else 100.0 * gap


def _legend(fig: Any, axes: Sequence[Any]) -> int:
    """One legend for the whole figure, below the panels; returns its number of rows."""
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if not handles:
        return 0
    ncol = min(len(labels), 6)
    fig.legend(
        handles, labels, loc="lower center", ncol=ncol, frameon=False, bbox_to_anchor=(0.5, 0.0)
    )
    return math.ceil(len(labels) / ncol)


def _finish(fig: Any, path: Path, *, title: str, axes: Sequence[Any]) -> Path:
    fig.suptitle(title, fontsize=12)
    legend_rows = _legend(fig, axes)
    # room at the bottom for the legend: about 0.3 inch per legend row
    bottom = min(0.4, (0.3 * legend_rows + 0.1) / fig.get_figheight())
    fig.tight_layout(rect=(0, bottom, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    _pyplot().close(fig)
    return path


def plot_curves(
    panels: Sequence[PanelData],
    *,
    kind: str,
    path: str | Path,
    title: str,
    colors: Mapping[str, str],
    targets: Sequence[float] = (),
) -> Path | None:
    """One line per label and panel for a curve ``kind``.

    Args:
        panels: the grid's data (see the module docstring).
        kind: ``acc_round`` (test accuracy vs round), ``acc_bytes`` (test accuracy vs
            cumulative cut bytes, log axis), ``loss_round`` (training loss vs round),
            ``ratio_round`` (pruning ratio vs round: mean line, min-max band),
            ``ratio_iter`` (pruning ratio ``P_t`` vs global iteration, from the records'
            ``ratios``; see :func:`ratio_iteration_series`), ``gen_gap`` (generalization
            error, train minus test accuracy, vs train accuracy) or ``gen_gap_offset`` (the
            same minus ``0.5 * train_acc - 0.2``, as the RandTopk paper's Fig. 4(b) plots it).
        path: the PNG to write.
        title: the figure's title.
        colors: label -> colour (use :func:`label_colors` over the whole report).
        targets: accuracies drawn as dotted horizontal lines on accuracy plots.

    Returns:
        ``path``, or ``None`` when no run has data for this kind (nothing written).
    """
    specs = {
        "acc_round": ("round", "test_acc", "round", "test accuracy (%)", 100.0),
        "acc_bytes": (
            "bytes",
            "test_acc",
            "cumulative cut traffic, up + down (MB, log)",
            "test accuracy (%)",
            100.0,
        ),
        "loss_round": ("round", "train_loss", "round", "training loss (cross-entropy)", 1.0),
        "ratio_round": ("round", "ratio_mean", "round", "pruning ratio (%)", 100.0),
        "ratio_iter": (
            "iteration",
            "ratios",
            "global iteration (mini-batch steps of all clients)",
            "P_t (% of cut channels pruned)",
            100.0,
        ),
        "gen_gap": (
            "train",
            "gen_gap",
            "training accuracy (%)",
            "generalization error: train - test accuracy (points)",
            1.0,
        ),
        "gen_gap_offset": (
            "train",
            "gen_gap",
            "training accuracy (%)",
            "gen. error - (0.5 x train acc - 0.2) (points)",
            1.0,
        ),
    }
    if kind not in specs:
        raise ValueError(f"unknown plot kind {kind!r}; choose one of {', '.join(specs)}")
    xkey, ykey, xlabel, ylabel, scale = specs[kind]
    plt = _pyplot()
    fig, axes = _grid(plt, len(panels))
    drawn = False
    for ax, (panel_title, runs_by_label) in zip(axes, panels):
        for label, runs in runs_by_label.items():
            if kind in ("gen_gap", "gen_gap_offset"):
                series = _gap_series(runs, offset=kind == "gen_gap_offset")
            elif kind == "ratio_iter":
                series = ratio_iteration_series(runs)
            else:
                series = _series(runs, x=xkey, y=ykey)
            if series is None:
                continue
            xs, mean, lo, hi = series
            if kind in ("ratio_round", "ratio_iter") and not any(mean):
                continue  # schemes that never prune (standard, quant) would sit on 0
            color = colors.get(label, "#444444")
            ax.plot(
                xs,
                [v * scale for v in mean],
                label=label,
                color=color,
                lw=1.8,
                marker="o" if len(xs) <= 12 else None,
                ms=3,
            )
            if kind == "ratio_round":
                lo, hi = _ratio_band(runs)
            if any(a != b for a, b in zip(lo, hi)):
                ax.fill_between(
                    xs,
                    [v * scale for v in lo],
                    [v * scale for v in hi],
                    color=color,
                    alpha=0.15,
                    lw=0,
                )
            drawn = True
        if kind in ("acc_round", "acc_bytes"):
            for target in targets:
                ax.axhline(100 * target, color="#888888", ls=":", lw=1)
        if kind == "acc_bytes":
            _log_axis(ax)
        if kind in ("gen_gap", "gen_gap_offset"):
            ax.axhline(0.0, color="#888888", ls=":", lw=1)
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    if not drawn:
        plt.close(fig)
        return None
    return _finish(fig, Path(path), title=title, axes=axes)


def _log_axis(ax: Any) -> None:
    """A log x axis labelled with plain numbers at 1, 2, 5 x 10^n (no crowded minor labels)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def gen_gap_points(
    runs: Sequence[Records], *, offset: bool = False
) -> tuple[list[float], list[float]] | None:
    """Every round of every seed as (training accuracy %, generalization error in points),
    sorted by training accuracy; with ``offset``, the y value is the RandTopk paper's
    Fig. 4(b) one (:func:`gen_error_offset`). ``None`` when no record has accuracies."""
    pts = []
    for records in runs:
        for r in records:
            value = gen_error_offset(r) if offset else gen_error(r)
            if value is not None and r.get("train_acc") is not None:
                pts.append((100.0 * float(r["train_acc"]), 100.0 * value))
    if not pts:
        return None
    pts.sort()
    return [p[0] for p in pts], [p[1] for p in pts]


def _gap_series(
    runs: Sequence[Records], *, offset: bool = False
) -> tuple[list[float], list[float], list[float], list[float]] | None:
    found = gen_gap_points(runs, offset=offset)
    if found is None:
        return None
    xs, ys = found
    return xs, ys, ys, ys


def ratio_iteration_series(
    runs: Sequence[Records],
) -> tuple[list[float], list[float], list[float], list[float]] | None:
    """Pruning ratio ``P_t`` against the global iteration: (iterations, mean over seeds,
    band low, band high), as fractions.

    A record with ``ratios`` contributes one point per iteration of its round (the first is
    iteration ``record["iteration"] - len(ratios) + 1``); the band is the seeds' min-max at
    that iteration. A record without ``ratios`` (written before the field existed)
    contributes one point at its round's last iteration: its ``ratio_mean``, with its
    ``ratio_min`` / ``ratio_max`` as the band. Seeds are aligned by iteration; only the
    iterations every seed with ratios has are drawn. ``None`` when no run has a ratio.
    """
    per_seed: list[dict[int, tuple[float, float, float]]] = []
    for records in runs:
        points: dict[int, tuple[float, float, float]] = {}
        for r in records:
            last = int(r.get("iteration") or r["round"])
            ratios = r.get("ratios")
            if ratios is not None:
                first = last - len(ratios) + 1
                for i, value in enumerate(ratios):
                    if value is not None:
                        v = float(value)
                        points[first + i] = (v, v, v)
            elif r.get("ratio_mean") is not None:
                avg = float(r["ratio_mean"])
                low = float(r["ratio_min"]) if r.get("ratio_min") is not None else avg
                high = float(r["ratio_max"]) if r.get("ratio_max") is not None else avg
                points[last] = (avg, low, high)
        if points:
            per_seed.append(points)
    if not per_seed:
        return None
    common = set(per_seed[0])
    for points in per_seed[1:]:
        common &= set(points)
    xs = sorted(common)
    if not xs:
        return None
    mean = [sum(p[x][0] for p in per_seed) / len(per_seed) for x in xs]
    lo = [min(p[x][1] for p in per_seed) for x in xs]
    hi = [max(p[x][2] for p in per_seed) for x in xs]
    return [float(x) for x in xs], mean, lo, hi


def _ratio_band(runs: Sequence[Records]) -> tuple[list[float], list[float]]:
    """Per round, the smallest ``ratio_min`` and largest ``ratio_max`` over seeds."""
    length = min(len(r) for r in runs)
    lo, hi = [], []
    for i in range(length):
        mins = [float(r[i]["ratio_min"]) for r in runs if r[i].get("ratio_min") is not None]
        maxs = [float(r[i]["ratio_max"]) for r in runs if r[i].get("ratio_max") is not None]
        lo.append(min(mins) if mins else 0.0)
        hi.append(max(maxs) if maxs else 0.0)
    return lo, hi


def plot_kept_hist(
    panels: Sequence[PanelData],
    *,
    path: str | Path,
    title: str,
    colors: Mapping[str, str],
) -> Path | None:
    """How often each cut-layer channel was kept during training, from the last record's
    ``kept_counts`` (cumulative, summed over clients), summed over seeds.

    Returns:
        ``path``, or ``None`` when no run recorded ``kept_counts``.
    """
    counts: list[tuple[str, dict[str, list[list[float]]]]] = []
    for panel_title, runs_by_label in panels:
        per_label: dict[str, list[list[float]]] = {}
        for label, runs in runs_by_label.items():
            found = [
                [float(v) for v in records[-1]["kept_counts"]]
                for records in runs
                if records and records[-1].get("kept_counts")
            ]
            if found:
                per_label[label] = found
        counts.append((panel_title, per_label))
    return plot_count_hist(
        counts, path=path, title=title, colors=colors, xlabel="channel rank (most often kept first)"
    )


def plot_count_hist(
    panels: Sequence[tuple[str, Mapping[str, Sequence[Sequence[float]]]]],
    *,
    path: str | Path,
    title: str,
    colors: Mapping[str, str],
    xlabel: str,
) -> Path | None:
    """Per-position counts (channels or neurons), summed over seeds, as shares of all
    selections sorted from the most to the least selected position: a flat line means the
    selections are spread evenly (RandTopk Fig. 5, ACP-SL's kept channels).

    Args:
        panels: ``(panel title, {label: [counts of seed 0, counts of seed 1, ...]})``.
        path: the PNG to write.
        title: the figure's title.
        colors: label -> colour.
        xlabel: what a position is.

    Returns:
        ``path``, or ``None`` when there are no counts (nothing written).
    """
    plt = _pyplot()
    fig, axes = _grid(plt, len(panels))
    drawn = False
    for ax, (panel_title, by_label) in zip(axes, panels):
        for label, seeds in by_label.items():
            if not seeds:
                continue
            totals = [sum(col) for col in zip(*seeds)]
            if sum(totals) <= 0:
                continue
            share = sorted((100.0 * v / sum(totals) for v in totals), reverse=True)
            ax.step(
                range(1, len(share) + 1),
                share,
                where="mid",
                label=label,
                color=colors.get(label, "#444444"),
                lw=1.6,
            )
            drawn = True
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("share of all selections (%)")
        ax.grid(True, alpha=0.3)
    if not drawn:
        plt.close(fig)
        return None
    return _finish(fig, Path(path), title=title, axes=axes)
