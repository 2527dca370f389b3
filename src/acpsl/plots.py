"""Figures of a run grid, from the records the runs wrote (matplotlib, Agg, imported lazily).

Every function takes *panels*: a sequence of ``(panel title, {label: [records of seed 0,
records of seed 1, ...]})`` where a run's records are the dicts of its ``records.jsonl``
(SPEC section 7 field names). One figure has one subplot per panel and one curve per label
(the mean over seeds, with the seeds' min-max range shaded when there are several), and a
label has the same :class:`Style` (display name, colour, marker, line style) in every figure
of a report (:func:`label_styles`).

Figures are made for a paper: the legend sits below the panels, outside the axes, in as many
rows as the schemes need (never clipped); round axes have integer ticks; a caption line under
the title says what the lines and shaded bands are; target accuracies are labelled lines;
colours are the colour-blind-safe Okabe-Ito palette, each scheme also with its own marker, so
curves stay apart in greyscale too. Each figure is written in every format asked for (PNG,
PDF, SVG) at the DPI asked for (PNG, default 200).

Matplotlib is imported inside the functions, with the non-interactive Agg backend, so the
core package imports without it and plotting never needs a display.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acpsl.engine.records import gen_error as records_gen_error

Records = Sequence[Mapping[str, Any]]
PanelData = tuple[str, Mapping[str, Sequence[Records]]]

#: Figure formats ``acpsl report --format`` writes, and the default PNG resolution.
FORMATS = ("png", "pdf", "svg")
DEFAULT_DPI = 200


@dataclass(frozen=True)
class Style:
    """How one label is drawn: its display name, colour, marker and line style."""

    name: str
    color: str
    marker: str
    linestyle: str = "-"


#: Fixed styles of the schemes (Okabe-Ito colours), so that ACP-SL looks the same in every
#: report; top-k and RandTopk differ in colour, marker and line style.
SCHEME_STYLES: dict[str, tuple[str, str, str]] = {
    "standard": ("#000000", "o", "-"),
    "acp": ("#D55E00", "s", "-"),
    "randtopk": ("#0072B2", "^", "-"),
    "topk": ("#E69F00", "v", "--"),
    "sizered": ("#CC79A7", "D", "-."),
    "quant": ("#009E73", "P", "-"),
    "l1": ("#56B4E9", "X", ":"),
    "dropgroup": ("#7F7F7F", "*", "-."),
}
#: Colours of the scheme styles, by scheme (what :func:`label_colors` gives scheme labels).
KNOWN_COLORS = {name: style[0] for name, style in SCHEME_STYLES.items()}
#: Colours and markers handed out, in order, to labels without a fixed style (ablations,
#: a second variant of a scheme); distinct from the schemes' and from each other.
_CYCLE = (
    "#8C564B",
    "#9467BD",
    "#17BECF",
    "#BCBD22",
    "#E377C2",
    "#A50026",
    "#7570B3",
    "#A6761D",
    "#666666",
    "#F0E442",
    "#D62728",
    "#1F77B4",
)
_MARKERS = ("h", "p", "<", ">", "d", "8", "H", "x", "+", "1", "2", "3")
_LINESTYLES = ("--", "-.", ":", "-")
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
    "pareto": "acc_vs_cut_bytes_pareto.png",
}
#: The RandTopk paper's Fig. 4(b) plots the generalization error minus this line of the
#: training accuracy (both as fractions): ``gen_error - (0.5 * train_acc - 0.2)``.
GEN_OFFSET_SLOPE = 0.5
GEN_OFFSET_INTERCEPT = -0.2


def label_styles(entries: Sequence[tuple[str, str, str]]) -> dict[str, Style]:
    """One :class:`Style` per label, from ``(label, scheme, display name)`` entries.

    A scheme's main label (the one named like the scheme, else its first) gets the scheme's
    fixed style; every other label (an ablation, a second variant) gets the next unused
    colour, marker and line style of a fixed cycle, so the mapping depends only on
    ``entries`` and no two labels look alike.
    """
    styles: dict[str, Style] = {}
    main: dict[str, str] = {}
    for label, scheme, _name in entries:
        if scheme in SCHEME_STYLES:
            if label == scheme:
                main[scheme] = label
            else:
                main.setdefault(scheme, label)
    i = 0
    for label, scheme, name in entries:
        if label in styles:
            continue
        if main.get(scheme) == label:
            color, marker, linestyle = SCHEME_STYLES[scheme]
        else:
            color = _CYCLE[i % len(_CYCLE)]
            marker = _MARKERS[i % len(_MARKERS)]
            linestyle = _LINESTYLES[i % len(_LINESTYLES)]
            i += 1
        styles[label] = Style(name=name, color=color, marker=marker, linestyle=linestyle)
    return styles


def label_colors(labels: Sequence[str]) -> dict[str, str]:
    """One colour per label, treating each label as a scheme name (see :func:`label_styles`)."""
    styles = label_styles([(label, label, label) for label in labels])
    return {label: style.color for label, style in styles.items()}


def _style(styles: Mapping[str, Style], label: str) -> Style:
    return styles.get(label) or Style(name=label, color="#444444", marker="o")


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


def _legend(fig: Any, axes: Sequence[Any]) -> Any:
    """One legend for the whole figure, hanging below the panels (outside every axes, so
    it never hides a curve, in as many rows as it needs); ``None`` without curves."""
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if not handles:
        return None
    longest = max(len(lab) for lab in labels)
    # about 5.5 pt per character at 9 pt, plus the handle: as many columns as fit the width
    per_row = max(1, int(fig.get_figwidth() * 72 / (5.5 * longest + 40)))
    ncol = max(1, min(len(labels), per_row, 6))
    return fig.legend(
        handles,
        labels,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=ncol,
        frameon=False,
        fontsize=9,
    )


def seed_caption(panels: Sequence[PanelData]) -> str:
    """What a curve and its shaded band are: the mean over the seeds and their range."""
    counts = sorted({len(runs) for _, by_label in panels for runs in by_label.values()})
    if not counts or counts[-1] <= 1:
        return "One seed per curve (no band)."
    seeds = f"{counts[-1]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"Lines: mean over {seeds} seeds; shaded band: the seeds' range (min-max)."


def _finish(
    fig: Any,
    path: Path,
    *,
    title: str,
    axes: Sequence[Any],
    caption: str = "",
    formats: Sequence[str] = ("png",),
    dpi: int = DEFAULT_DPI,
) -> Path:
    """Title, legend and caption line, then write ``path`` in every format of ``formats``
    (``path``'s suffix is replaced); returns the first file written.

    The legend and the caption hang below the panels, outside the figure's frame; the
    saved area is grown to hold them and the title (``bbox_inches="tight"``), so none is
    ever clipped, whatever the number of schemes.
    """
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    legend = _legend(fig, axes)
    if caption:
        import textwrap

        # wrapped to the figure's width (about 15 characters of 9 pt per inch)
        caption = textwrap.fill(caption, width=max(40, int(fig.get_figwidth() * 15)))
        fig.canvas.draw()  # the legend's size is known only once drawn
        bottom = 0.0
        if legend is not None:
            box = legend.get_window_extent().transformed(fig.transFigure.inverted())
            bottom = box.y0
        fig.text(0.5, bottom - 0.01, caption, ha="center", va="top", fontsize=9, color="#333333")
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        if fmt not in FORMATS:
            raise ValueError(f"unknown figure format {fmt!r}; choose from {', '.join(FORMATS)}")
        target = path.with_suffix(f".{fmt}")
        fig.savefig(
            target,
            dpi=dpi,
            bbox_inches="tight",
            pad_inches=0.15,
            metadata={"Software": None} if fmt == "png" else None,
        )
        written.append(target)
    _pyplot().close(fig)
    return written[0]


def _draw(ax: Any, xs: Sequence[float], ys: Sequence[float], style: Style, **kw: Any) -> None:
    """One curve with its label's colour, marker (about ten per curve) and line style."""
    every = max(1, len(xs) // 10)
    ax.plot(
        xs,
        ys,
        label=style.name,
        color=style.color,
        marker=style.marker,
        markevery=every,
        ms=4.5,
        lw=1.6,
        ls=style.linestyle,
        **kw,
    )


def _target_lines(ax: Any, targets: Sequence[float]) -> None:
    """Dotted horizontal lines at the target accuracies, each labelled at its right end."""
    for target in targets:
        y = 100 * target
        ax.axhline(y, color="#777777", ls=":", lw=1)
        ax.annotate(
            f"target {y:g}%",
            xy=(0.0, y),
            xycoords=("axes fraction", "data"),
            xytext=(3, 2),
            textcoords="offset points",
            ha="left",
            va="bottom",
            fontsize=8,
            color="#555555",
        )


def _integer_ticks(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def rolling_mean(values: Sequence[float], window: int) -> list[float]:
    """Centred moving average over ``window`` points (shrinking at the ends)."""
    n, half = len(values), max(0, window // 2)
    prefix = [0.0]
    for v in values:
        prefix.append(prefix[-1] + v)
    out = []
    for i in range(n):
        lo, hi = max(0, i - half), min(n, i + half + 1)
        out.append((prefix[hi] - prefix[lo]) / (hi - lo))
    return out


def _ratio_window(points: int, per_round: int = 0) -> int:
    """Iterations per rolling mean of the P_t trace: about 1/25 of it, and at least a quarter
    of a round (longer than one client's turn in a 5-client round, so the step pattern of
    each client's first batches averages out); odd, 1 to 201."""
    window = max(1, min(201, max(points // 25, per_round // 4 + 1 if per_round else 1)))
    return window if window % 2 else window + 1


def plot_curves(
    panels: Sequence[PanelData],
    *,
    kind: str,
    path: str | Path,
    title: str,
    styles: Mapping[str, Style] | None = None,
    colors: Mapping[str, str] | None = None,
    targets: Sequence[float] = (),
    formats: Sequence[str] = ("png",),
    dpi: int = DEFAULT_DPI,
) -> Path | None:
    """One line per label and panel for a curve ``kind``.

    Args:
        panels: the grid's data (see the module docstring).
        kind: ``acc_round`` (test accuracy vs round), ``acc_bytes`` (test accuracy vs
            cumulative cut bytes, log axis), ``loss_round`` (training loss vs round),
            ``ratio_round`` (ACP-SL's pruning ratio ``P_t`` vs round: mean line, band from the
            round's min to max), ``ratio_iter`` (``P_t`` vs global iteration, from the
            records' ``ratios``: the raw trace faint, a rolling mean solid; see
            :func:`ratio_iteration_series`), ``gen_gap`` (generalization error, train minus
            test accuracy, vs train accuracy) or ``gen_gap_offset`` (the same minus
            ``0.5 * train_acc - 0.2``, as the RandTopk paper's Fig. 4(b) plots it).
        path: the file to write (its suffix is replaced by each of ``formats``).
        title: the figure's title.
        styles: label -> :class:`Style` (use :func:`label_styles` over the whole report).
        colors: label -> colour, for labels without a style (older callers).
        targets: accuracies drawn as labelled dotted lines on accuracy plots.
        formats: figure formats to write (``png``, ``pdf``, ``svg``).
        dpi: resolution of the PNG.

    Returns:
        The first file written, or ``None`` when no run has data for this kind.
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
        "ratio_round": ("round", "ratio_mean", "round", "pruning ratio P_t (%)", 100.0),
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
    all_styles = dict(styles or {})
    for label, color in (colors or {}).items():
        all_styles.setdefault(label, Style(name=label, color=color, marker="o"))
    plt = _pyplot()
    fig, axes = _grid(plt, len(panels))
    drawn = False
    windows: set[int] = set()
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
            style = _style(all_styles, label)
            ys = [v * scale for v in mean]
            if kind == "ratio_iter":
                per_round = max(
                    (len(r.get("ratios") or []) for records in runs for r in records), default=0
                )
                window = _ratio_window(len(xs), per_round)
                windows.add(window)
                # every iteration, faint (with several clients it zig-zags between their
                # batches; fainter the more curves share the panel); the rolling mean on
                # top is what the eye follows, and the seeds' band is smoothed alike
                faint = max(0.08, 0.35 / max(1.0, len(runs_by_label) / 2))
                ax.plot(xs, ys, color=style.color, lw=0.6, alpha=faint, label="_raw")
                _draw(ax, xs, rolling_mean(ys, window), style)
                lo, hi = rolling_mean(lo, window), rolling_mean(hi, window)
            elif kind in ("gen_gap", "gen_gap_offset"):
                ax.plot(
                    xs,
                    ys,
                    label=style.name,
                    color=style.color,
                    marker=style.marker,
                    ms=4,
                    lw=0,
                    alpha=0.8,
                )
            else:
                _draw(ax, xs, ys, style)
            if kind == "ratio_round":
                lo, hi = _ratio_band(runs)
            if any(a != b for a, b in zip(lo, hi)):
                ax.fill_between(
                    xs,
                    [v * scale for v in lo],
                    [v * scale for v in hi],
                    color=style.color,
                    alpha=0.15,
                    lw=0,
                )
            drawn = True
        if kind in ("acc_round", "acc_bytes"):
            _target_lines(ax, targets)
        if kind == "acc_bytes":
            _log_axis(ax)
        elif xkey in ("round", "iteration"):
            _integer_ticks(ax)
        if kind in ("gen_gap", "gen_gap_offset"):
            ax.axhline(0.0, color="#888888", ls=":", lw=1)
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    if not drawn:
        plt.close(fig)
        return None
    caption = _caption(kind, panels, windows)
    return _finish(
        fig, Path(path), title=title, axes=axes, caption=caption, formats=formats, dpi=dpi
    )


def _caption(kind: str, panels: Sequence[PanelData], windows: set[int]) -> str:
    """The caption line of a curve figure: what its lines and shaded bands are."""
    seeds = seed_caption(panels)
    if kind == "ratio_round":
        if "range" not in seeds:
            return (
                "One seed per curve; shaded band: smallest to largest P_t of the round's "
                "iterations."
            )
        return (
            seeds.split(";")[0]
            + "; shaded band: smallest to largest P_t of the round's iterations over the seeds."
        )
    if kind == "ratio_iter":
        sizes = sorted(windows) or [1]
        window = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
        old = any(
            r.get("ratios") is None and r.get("ratio_mean") is not None
            for _, by_label in panels
            for runs in by_label.values()
            for records in runs
            for r in records
        )
        if old:
            band = "shaded band: the round's min-max (records without per-iteration P_t)"
        elif "range" in seeds:
            band = "shaded band: the seeds' range (min-max)"
        else:
            band = "one seed: no band"
        return (
            f"Faint: P_t at every iteration (mean over seeds; with several clients it "
            f"alternates between their batches); solid: rolling mean over {window} "
            f"iterations; {band}."
        )
    if kind in ("gen_gap", "gen_gap_offset"):
        return "One point per round and seed."
    return seeds


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


def plot_pareto(
    panels: Sequence[tuple[str, Mapping[str, Sequence[Any]]]],
    *,
    path: str | Path,
    title: str,
    styles: Mapping[str, Style] | None = None,
    formats: Sequence[str] = ("png",),
    dpi: int = DEFAULT_DPI,
) -> Path | None:
    """Final test accuracy against total cut traffic: one curve per scheme through its
    compression levels (one point per run label), mean over seeds with the seeds' range as
    error bars on both axes. The Pareto view: for a byte budget, which scheme is best.

    Args:
        panels: ``[(panel title, {scheme: [(point name, [cut bytes per seed], [final
            accuracy per seed]), ...]})]`` (:func:`acpsl.experiments.report.pareto_points`).
        path: the file to write (its suffix is replaced by each of ``formats``).
        title: the figure's title.
        styles: label -> :class:`Style`; a scheme's curve takes the style of its main label.
        formats: figure formats to write.
        dpi: resolution of the PNG.

    Returns:
        The first file written, or ``None`` when no panel has a point.
    """
    if not any(per for _, per in panels):
        return None
    plt = _pyplot()
    fig, axes = _grid(plt, len(panels))
    scheme_styles = label_styles([(sch, sch, sch) for _, per in panels for sch in per])
    seeds = 1
    for ax, (panel_title, per_scheme) in zip(axes, panels):
        for scheme, points in per_scheme.items():
            style = scheme_styles[scheme]
            # the scheme's display name: the first point's name without its parameters
            main = (styles or {}).get(scheme)
            name = main.name if main is not None else str(points[0][0]).split(", ")[0]
            pts = sorted(
                (
                    sum(b) / len(b),
                    100 * sum(a) / len(a),
                    (min(b), max(b)),
                    (100 * min(a), 100 * max(a)),
                )
                for _, b, a in points
            )
            seeds = max(seeds, *(len(b) for _, b, _ in points))
            xs = [p[0] / 1e6 for p in pts]
            ys = [p[1] for p in pts]
            xerr = [[(p[0] - p[2][0]) / 1e6 for p in pts], [(p[2][1] - p[0]) / 1e6 for p in pts]]
            yerr = [[p[1] - p[3][0] for p in pts], [p[3][1] - p[1] for p in pts]]
            ax.errorbar(
                xs,
                ys,
                xerr=xerr,
                yerr=yerr,
                label=name,
                color=style.color,
                marker=style.marker,
                ls=style.linestyle,
                lw=1.6,
                ms=6,
                capsize=2.5,
                elinewidth=0.8,
            )
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel("total cut traffic of the run, up + down (MB, log)")
        ax.set_ylabel("final test accuracy (%)")
        _log_axis(ax)
        ax.grid(True, alpha=0.3)
    caption = "One point per compression level (run label); " + (
        f"mean over {seeds} seeds, error bars: the seeds' range (min-max)."
        if seeds > 1
        else "one seed per point (no error bars)."
    )
    return _finish(
        fig, Path(path), title=title, axes=axes, caption=caption, formats=formats, dpi=dpi
    )


def plot_kept_hist(
    panels: Sequence[PanelData],
    *,
    path: str | Path,
    title: str,
    styles: Mapping[str, Style] | None = None,
    colors: Mapping[str, str] | None = None,
    formats: Sequence[str] = ("png",),
    dpi: int = DEFAULT_DPI,
) -> Path | None:
    """How often each cut-layer channel was kept during training, from the last record's
    ``kept_counts`` (cumulative, summed over clients), summed over seeds.

    Returns:
        The first file written, or ``None`` when no run recorded ``kept_counts``.
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
        counts,
        path=path,
        title=title,
        styles=styles,
        colors=colors,
        xlabel="channel rank (most often kept first)",
        formats=formats,
        dpi=dpi,
    )


def plot_count_hist(
    panels: Sequence[tuple[str, Mapping[str, Sequence[Sequence[float]]]]],
    *,
    path: str | Path,
    title: str,
    xlabel: str,
    styles: Mapping[str, Style] | None = None,
    colors: Mapping[str, str] | None = None,
    formats: Sequence[str] = ("png",),
    dpi: int = DEFAULT_DPI,
) -> Path | None:
    """Per-position counts (channels or neurons), summed over seeds, as shares of all
    selections sorted from the most to the least selected position: a flat line means the
    selections are spread evenly (RandTopk Fig. 5, ACP-SL's kept channels).

    Args:
        panels: ``(panel title, {label: [counts of seed 0, counts of seed 1, ...]})``.
        path: the file to write (suffix replaced by each format).
        title: the figure's title.
        xlabel: what a position is.
        styles: label -> :class:`Style`.
        colors: label -> colour, for labels without a style.
        formats: figure formats to write.
        dpi: resolution of the PNG.

    Returns:
        The first file written, or ``None`` when there are no counts (nothing written).
    """
    all_styles = dict(styles or {})
    for label, color in (colors or {}).items():
        all_styles.setdefault(label, Style(name=label, color=color, marker="o"))
    # Per panel, each label's counts summed over seeds; labels without a selection and
    # panels without any (an uncompressed panel has no top-k run) get no line and no axes.
    summed: list[tuple[str, dict[str, list[float]]]] = []
    for panel_title, by_label in panels:
        lines = {}
        for label, seeds in by_label.items():
            totals = [sum(col) for col in zip(*seeds)]
            if sum(totals) > 0:
                lines[label] = totals
        if lines:
            summed.append((panel_title, lines))
    if not summed:
        return None
    plt = _pyplot()
    fig, axes = _grid(plt, len(summed))
    for ax, (panel_title, lines) in zip(axes, summed):
        for label, totals in lines.items():
            share = sorted((100.0 * v / sum(totals) for v in totals), reverse=True)
            style = _style(all_styles, label)
            ax.step(
                range(1, len(share) + 1),
                share,
                where="mid",
                label=style.name,
                color=style.color,
                ls=style.linestyle,
                lw=1.6,
            )
        _integer_ticks(ax)
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("share of all selections (%)")
        ax.grid(True, alpha=0.3)
    return _finish(
        fig,
        Path(path),
        title=title,
        axes=axes,
        caption="Counts summed over clients and seeds; a flat line = selections spread evenly.",
        formats=formats,
        dpi=dpi,
    )
