"""``acpsl report DIR``: tables and figures of a grid of runs, computed from their records.

Per run (``runs.csv``): final and best test accuracy, the first round whose test accuracy
reaches each target and the cumulative cut traffic (smashed data up + gradients down) at
that round, how much the test accuracy still rose over the last 20% of rounds (whether the
curve has flattened: ``acc[R] - acc[R - ceil(0.2 R)]``), the total cut traffic, the mean
pruning ratio, and the uplink size relative to an uncompressed (``standard``) run on the
same data. Per panel and label (``table.csv``, ``table.md``): the mean and the standard
deviation over seeds of each (sample standard deviation, ``ddof = 1``; 0 for one seed); a
target counts only the seeds that reached it, and the table says how many did.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acpsl.errors import CheckpointError, ConfigError
from acpsl.experiments.names import display_name, unique_names
from acpsl.experiments.runs import RunData, discover, read_grid, training_samples
from acpsl.experiments.verdicts import VerdictTable, parse_claims, verdict_table

#: Configuration keys that must agree for a standard run to be another run's reference.
_SAME_DATA_KEYS = ("dataset", "model", "cut", "stem", "subset", "batch_size", "clients")


def cut_bytes(record: Mapping[str, Any]) -> int:
    """Cumulative cut traffic after a record's round: smashed data up + gradients down."""
    return int(record["bytes_up_total"]) + int(record["bytes_down_total"])


def training_bytes(record: Mapping[str, Any]) -> int:
    """Cumulative training traffic: cut + labels + client-model hand-off / aggregation."""
    return cut_bytes(record) + int(record["bytes_labels_total"]) + int(record["bytes_model_total"])


@dataclass(frozen=True)
class RunMetrics:
    """Numbers of one run (see the module docstring)."""

    rounds: int
    final_acc: float
    best_acc: float
    rounds_to: dict[float, int | None]
    cut_bytes_to: dict[float, int | None]
    cut_bytes_total: int
    training_bytes_total: int
    ratio_mean: float | None
    kept_frac_mean: float | None
    up_per_round: float
    wall_s: float
    late_rise: float | None = None


def late_rise(accs: Sequence[float], *, fraction: float = 0.2) -> float | None:
    """How much the test accuracy still rose over the last ``fraction`` of the rounds:
    ``acc[R] - acc[R - n]`` with ``n = ceil(fraction * R)`` (at least one round); ``None``
    for a single round. Near 0 says the curve has flattened by the end of the run; a
    learning-rate schedule that decays to 0 flattens it by construction, so read it beside
    the accuracy itself."""
    if len(accs) < 2:
        return None
    n = min(len(accs) - 1, max(1, math.ceil(fraction * len(accs) - 1e-9)))
    return float(accs[-1]) - float(accs[-1 - n])


def run_metrics(records: Sequence[Mapping[str, Any]], *, targets: Sequence[float]) -> RunMetrics:
    """Compute :class:`RunMetrics` from a run's records (at least one)."""
    if not records:
        raise ValueError("a run needs at least one record to be reported")
    accs = [float(r["test_acc"]) for r in records]
    rounds_to: dict[float, int | None] = {}
    bytes_to: dict[float, int | None] = {}
    for target in targets:
        hit = next((r for r in records if float(r["test_acc"]) >= target), None)
        rounds_to[target] = None if hit is None else int(hit["round"])
        bytes_to[target] = None if hit is None else cut_bytes(hit)
    ratios = [float(r["ratio_mean"]) for r in records if r.get("ratio_mean") is not None]
    kept = [float(r["kept_frac_mean"]) for r in records if r.get("kept_frac_mean") is not None]
    last = records[-1]
    return RunMetrics(
        rounds=len(records),
        final_acc=accs[-1],
        best_acc=max(accs),
        rounds_to=rounds_to,
        cut_bytes_to=bytes_to,
        cut_bytes_total=cut_bytes(last),
        training_bytes_total=training_bytes(last),
        ratio_mean=sum(ratios) / len(ratios) if ratios else None,
        kept_frac_mean=sum(kept) / len(kept) if kept else None,
        up_per_round=sum(int(r["bytes_up"]) for r in records) / len(records),
        wall_s=float(last.get("wall_s", 0.0)),
        late_rise=late_rise(accs),
    )


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof = 1``; 0 for a single value)."""
    if not values:
        return math.nan, math.nan
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


@dataclass
class Row:
    """One panel x label line of the table: its runs and their metrics."""

    panel: str
    panel_title: str
    label: str
    scheme: str
    name: str = ""
    runs: list[RunData] = field(default_factory=list)
    metrics: list[RunMetrics] = field(default_factory=list)
    up_fraction: list[float] = field(default_factory=list)
    up_per_sample: list[float] = field(default_factory=list)
    down_per_sample: list[float] = field(default_factory=list)


def build_rows(runs: Sequence[RunData], *, targets: Sequence[float]) -> list[Row]:
    """Group runs by (panel, label), in first-seen order, with each run's metrics."""
    rows: dict[tuple[str, str], Row] = {}
    for run in runs:
        row = rows.setdefault(
            (run.panel, run.label),
            Row(panel=run.panel, panel_title=run.panel_title, label=run.label, scheme=run.scheme),
        )
        row.runs.append(run)
        row.metrics.append(run_metrics(run.records, targets=targets))
        samples = _samples_sent(run)
        if samples:
            last = run.records[-1]
            row.up_per_sample.append(int(last["bytes_up_total"]) / samples)
            row.down_per_sample.append(int(last["bytes_down_total"]) / samples)
    for row in rows.values():
        for run, m in zip(row.runs, row.metrics):
            ref = _reference(run, runs)
            if ref is not None:
                ref_up = run_metrics(ref.records, targets=()).up_per_round
                if ref_up > 0:
                    row.up_fraction.append(m.up_per_round / ref_up)
    names = display_names(list(rows.values()))
    for row in rows.values():
        row.name = names[row.label]
    return list(rows.values())


def _samples_sent(run: RunData) -> int | None:
    """Training samples whose smashed data crossed the cut in the run's recorded rounds
    (``None`` when the run directory has no partition record, e.g. copied records only)."""
    try:
        return training_samples(run.path) * len(run.records)
    except CheckpointError:
        return None


def display_names(rows: Sequence[Row]) -> dict[str, str]:
    """Label -> display name: the preset's ``name``, else the scheme's title and ablation
    (:mod:`acpsl.experiments.names`), made unique over the report."""
    firsts: dict[str, RunData] = {}
    for row in rows:
        if row.runs:
            firsts.setdefault(row.label, row.runs[0])
    labels = list(firsts)
    base = [
        (
            label,
            firsts[label].name or display_name(firsts[label].scheme, firsts[label].scheme_params),
        )
        for label in labels
    ]
    params = [firsts[label].scheme_params for label in labels]
    return dict(zip(labels, unique_names(base, params)))


def _reference(run: RunData, runs: Sequence[RunData]) -> RunData | None:
    """A standard run on the same data and seed (same panel first), or ``None``."""
    if run.scheme == "standard":
        return run
    candidates = [
        r
        for r in runs
        if r.scheme == "standard"
        and r.seed == run.seed
        and all(r.config.get(k) == run.config.get(k) for k in _SAME_DATA_KEYS)
    ]
    candidates.sort(key=lambda r: r.panel != run.panel)
    return candidates[0] if candidates else None


# ------------------------------------------------------------------------------ tables
def _pct(t: float) -> str:
    return f"{100 * t:g}%"


def table_csv_rows(rows: Sequence[Row], *, targets: Sequence[float]) -> list[dict[str, Any]]:
    """The per-row numbers of ``table.csv`` (accuracies as fractions, bytes as integers)."""
    out = []
    for row in rows:
        ms = row.metrics
        rec: dict[str, Any] = {
            "panel": row.panel,
            "label": row.label,
            "name": row.name,
            "scheme": row.scheme,
            "seeds": len(ms),
            "rounds": min(m.rounds for m in ms),
        }
        for name, values in (
            ("final_acc", [m.final_acc for m in ms]),
            ("best_acc", [m.best_acc for m in ms]),
            ("late_rise", [m.late_rise for m in ms if m.late_rise is not None]),
            ("cut_bytes_total", [float(m.cut_bytes_total) for m in ms]),
            ("training_bytes_total", [float(m.training_bytes_total) for m in ms]),
        ):
            rec[f"{name}_mean"], rec[f"{name}_std"] = mean_std(values)
        for t in targets:
            reached = [m for m in ms if m.rounds_to[t] is not None]
            key = f"{100 * t:g}"
            rec[f"reached_{key}"] = len(reached)
            rec[f"rounds_to_{key}_mean"], rec[f"rounds_to_{key}_std"] = mean_std(
                [float(m.rounds_to[t]) for m in reached]  # type: ignore[arg-type]
            )
            rec[f"cut_bytes_to_{key}_mean"], rec[f"cut_bytes_to_{key}_std"] = mean_std(
                [float(m.cut_bytes_to[t]) for m in reached]  # type: ignore[arg-type]
            )
        ratios = [m.ratio_mean for m in ms if m.ratio_mean is not None]
        rec["ratio_mean"] = statistics.fmean(ratios) if ratios else math.nan
        kept = [m.kept_frac_mean for m in ms if m.kept_frac_mean is not None]
        rec["kept_frac_mean"] = statistics.fmean(kept) if kept else math.nan
        rec["up_fraction"] = statistics.fmean(row.up_fraction) if row.up_fraction else math.nan
        for name, values in (
            ("up_per_sample", row.up_per_sample),
            ("down_per_sample", row.down_per_sample),
        ):
            rec[f"{name}_mean"], rec[f"{name}_std"] = mean_std(values)
        out.append(rec)
    return out


def run_csv_rows(
    rows: Sequence[Row], *, targets: Sequence[float], root: Path
) -> list[dict[str, Any]]:
    """One line per run (``runs.csv``)."""
    out = []
    for row in rows:
        for run, m in zip(row.runs, row.metrics):
            rec: dict[str, Any] = {
                "panel": row.panel,
                "label": row.label,
                "name": row.name,
                "scheme": row.scheme,
                "seed": run.seed,
                "rounds": m.rounds,
                "finished": run.finished,
                "final_acc": m.final_acc,
                "best_acc": m.best_acc,
                "late_rise": m.late_rise,
            }
            for t in targets:
                key = f"{100 * t:g}"
                rec[f"rounds_to_{key}"] = m.rounds_to[t]
                rec[f"cut_bytes_to_{key}"] = m.cut_bytes_to[t]
            rec["cut_bytes_total"] = m.cut_bytes_total
            rec["training_bytes_total"] = m.training_bytes_total
            rec["ratio_mean"] = m.ratio_mean
            rec["kept_frac_mean"] = m.kept_frac_mean
            rec["wall_s"] = round(m.wall_s, 2)
            rec["path"] = run.path.relative_to(root).as_posix() if run.path != root else "."
            out.append(rec)
    return out


def _fmt(mean: float, std: float, *, scale: float = 1.0, digits: int = 2, n: int = 1) -> str:
    if math.isnan(mean):
        return "—"
    if n > 1:
        return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f}"


def _fmt_rounds(mean: float, std: float, *, n: int) -> str:
    """Rounds as integers: ``"4"``; a mean over seeds that is not whole keeps one decimal
    (``"4.5 ± 0.7"``)."""
    if math.isnan(mean):
        return "—"
    whole = abs(mean - round(mean)) < 1e-9
    text = f"{round(mean)}" if whole else f"{mean:.1f}"
    return f"{text} ± {std:.1f}" if n > 1 else text


def markdown_table(
    table: Sequence[Mapping[str, Any]], *, targets: Sequence[float], titles: Mapping[str, str]
) -> str:
    """``table.md``: one line per panel and label, mean ± std over seeds."""
    header = [
        "panel",
        "scheme",
        "seeds",
        "final acc (%)",
        "best acc (%)",
        "rise over last 20% of rounds (pts)",
    ]
    for t in targets:
        header += [f"rounds to {_pct(t)}", f"cut MB to {_pct(t)}"]
    header += [
        "cut MB total",
        "uplink B/sample",
        "downlink B/sample",
        "uplink vs standard (%)",
        "mean pruning ratio P_t (%)",
        "values sent (%)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for rec in table:
        n = int(rec["seeds"])
        cells = [
            titles.get(str(rec["panel"]), str(rec["panel"])),
            str(rec.get("name") or rec["label"]),
            str(n),
            _fmt(rec["final_acc_mean"], rec["final_acc_std"], scale=100, n=n),
            _fmt(rec["best_acc_mean"], rec["best_acc_std"], scale=100, n=n),
            _fmt(rec["late_rise_mean"], rec["late_rise_std"], scale=100, n=n),
        ]
        for t in targets:
            key = f"{100 * t:g}"
            reached = int(rec[f"reached_{key}"])
            if reached == 0:
                cells += ["not reached", "—"]
                continue
            suffix = "" if reached == n else f" ({reached}/{n} seeds)"
            cells.append(
                _fmt_rounds(rec[f"rounds_to_{key}_mean"], rec[f"rounds_to_{key}_std"], n=reached)
                + suffix
            )
            cells.append(
                _fmt(
                    rec[f"cut_bytes_to_{key}_mean"],
                    rec[f"cut_bytes_to_{key}_std"],
                    scale=1e-6,
                    n=reached,
                )
            )
        cells.append(_fmt(rec["cut_bytes_total_mean"], rec["cut_bytes_total_std"], scale=1e-6, n=n))
        for name in ("up_per_sample", "down_per_sample"):
            cells.append(_fmt(rec[f"{name}_mean"], rec[f"{name}_std"], digits=0, n=n))
        cells.append(_fmt(rec["up_fraction"], 0.0, scale=100, n=1))
        cells.append(_fmt(rec["ratio_mean"], 0.0, scale=100, digits=1, n=1))
        cells.append(_fmt(rec["kept_frac_mean"], 0.0, scale=100, digits=1, n=1))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    fieldnames: list[str] = []
    for row in rows:
        fieldnames += [k for k in row if k not in fieldnames]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fieldnames)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})


# ------------------------------------------------------------------------------ report
@dataclass(frozen=True)
class ReportFiles:
    """What :func:`write_report` wrote."""

    out_dir: Path
    table_md: Path
    table_csv: Path
    runs_csv: Path
    report_md: Path
    plots: dict[str, Path]
    figures: list[Path] = field(default_factory=list)
    verdicts_md: Path | None = None
    verdicts_csv: Path | None = None

    def all(self) -> list[Path]:
        """Every file written (each figure in every format)."""
        figures = self.figures or list(self.plots.values())
        verdicts = [p for p in (self.verdicts_md, self.verdicts_csv) if p is not None]
        return [self.table_md, self.table_csv, self.runs_csv, self.report_md, *verdicts, *figures]


def write_report(
    root: str | Path,
    *,
    out_dir: str | Path | None = None,
    targets: Sequence[float] | None = None,
    plots: Sequence[str] | None = None,
    title: str | None = None,
    formats: Sequence[str] = ("png",),
    dpi: int | None = None,
) -> ReportFiles:
    """Write the tables and figures of the grid under ``root``.

    Args:
        root: a grid directory (``acpsl compare --out``) or any tree of run directories.
        out_dir: where to write (default: ``root/report``).
        targets: target accuracies (default: the grid's, else the runs' ``target_acc``).
        plots: plot kinds to draw (default: the preset's, else all that have data).
        title: heading of ``report.md`` (default: the preset's title).
        formats: figure formats, any of ``png``, ``pdf``, ``svg`` (each figure in each).
        dpi: resolution of the PNG figures (default: :data:`acpsl.plots.DEFAULT_DPI`, 200).

    Returns:
        The paths written (:class:`ReportFiles`).

    Raises:
        CheckpointError: ``root`` holds no run, or a run directory is corrupt.
    """
    from acpsl import plots as acpsl_plots

    # PNG first when asked for: report.md shows the first format of each figure
    formats = sorted(dict.fromkeys(formats), key=lambda f: f != "png") or ["png"]
    unknown = [f for f in formats if f not in acpsl_plots.FORMATS]
    if unknown:
        raise ConfigError(
            f"unknown figure formats {unknown}; choose from {', '.join(acpsl_plots.FORMATS)}"
        )
    dpi = acpsl_plots.DEFAULT_DPI if dpi is None else int(dpi)
    if dpi < 10:
        raise ConfigError(f"dpi={dpi} is too small for a figure; use e.g. 200 or 300")
    base = Path(root)
    runs = discover(base)
    grid = read_grid(base)
    preset = grid.get("preset") or {}
    if targets is None:
        targets = grid.get("target_acc") or sorted(
            {float(t) for r in runs for t in r.config.get("target_acc", [])}
        )
    targets = [float(t) for t in targets]
    out = Path(out_dir) if out_dir is not None else base / "report"
    out.mkdir(parents=True, exist_ok=True)

    rows = build_rows(runs, targets=targets)
    table = table_csv_rows(rows, targets=targets)
    titles = {r.panel: r.panel_title for r in rows}
    verdicts = grid_verdicts(preset, rows)
    files = ReportFiles(
        out_dir=out,
        table_md=out / "table.md",
        table_csv=out / "table.csv",
        runs_csv=out / "runs.csv",
        report_md=out / "report.md",
        plots={},
        verdicts_md=out / "verdicts.md" if verdicts.verdicts else None,
        verdicts_csv=out / "verdicts.csv" if verdicts.verdicts else None,
    )
    _write_csv(files.table_csv, table)
    _write_csv(files.runs_csv, run_csv_rows(rows, targets=targets, root=base))
    md_table = markdown_table(table, targets=targets, titles=titles)
    files.table_md.write_text(md_table, encoding="utf-8")
    if files.verdicts_md is not None and files.verdicts_csv is not None:
        files.verdicts_md.write_text(verdicts.markdown() + "\n", encoding="utf-8")
        _write_csv(files.verdicts_csv, verdicts.rows())
    else:  # no claims (any more): no stale verdicts of an earlier report beside the tables
        for stale in ("verdicts.md", "verdicts.csv"):
            (out / stale).unlink(missing_ok=True)

    styles = acpsl_plots.label_styles([(r.label, r.scheme, r.name) for r in rows])
    panel_data: list[acpsl_plots.PanelData] = []
    for panel in dict.fromkeys(r.panel for r in rows):
        panel_data.append(
            (
                titles[panel],
                {r.label: [run.records for run in r.runs] for r in rows if r.panel == panel},
            )
        )
    kinds = list(plots if plots is not None else preset.get("plots") or acpsl_plots.FILES)
    heading = title or preset.get("title") or f"Runs in {base.name}"
    written: dict[str, Path] = {}
    figure: dict[str, Any] = {"styles": styles, "formats": formats, "dpi": dpi}
    for kind in kinds:
        path = out / acpsl_plots.FILES[kind]
        what = _PLOT_TITLES[kind]
        result: Path | None
        if kind == "kept_hist":
            result = acpsl_plots.plot_kept_hist(panel_data, path=path, title=what, **figure)
        elif kind == "pareto":
            result = acpsl_plots.plot_pareto(pareto_points(rows), path=path, title=what, **figure)
        elif kind == "topk_hist":
            result = acpsl_plots.plot_count_hist(
                _topk_counts(rows, titles),
                path=path,
                title=what,
                xlabel="cut neuron rank (most often top-k first)",
                **figure,
            )
        else:
            result = acpsl_plots.plot_curves(
                panel_data, kind=kind, path=path, title=what, targets=targets, **figure
            )
        if result is not None:
            written[kind] = result
    files.plots.update(written)
    files.figures.extend(
        path.with_suffix(f".{fmt}") for path in written.values() for fmt in formats
    )
    files.report_md.write_text(
        _report_text(heading, preset, grid, runs, md_table, written, out, verdicts.markdown()),
        encoding="utf-8",
    )
    return files


def grid_verdicts(preset: Mapping[str, Any], rows: Sequence[Row]) -> VerdictTable:
    """The verdicts on the claims the grid's preset states (``compare.json`` keeps them),
    judged on ``rows`` (:mod:`acpsl.experiments.verdicts`); empty without claims."""
    raw = preset.get("claims") or []
    if not raw:
        return VerdictTable()
    labels = list(preset.get("runs") or dict.fromkeys(r.label for r in rows))
    claims = parse_claims(raw, preset=str(preset.get("name", "grid")), labels=labels)
    return verdict_table(claims, rows)


def pareto_points(rows: Sequence[Row]) -> list[tuple[str, dict[str, list[Any]]]]:
    """Per panel, per scheme: one point per run label (a compression level) of the final
    accuracy against the total cut traffic, each with its seeds' values.

    Returns:
        ``[(panel title, {scheme: [(display name, [cut bytes per seed], [final acc per
        seed]), ...]})]``, the points of a scheme in the order its labels appear.
    """
    out: list[tuple[str, dict[str, list[Any]]]] = []
    for panel in dict.fromkeys(r.panel for r in rows):
        per_scheme: dict[str, list[Any]] = {}
        title = ""
        for row in rows:
            if row.panel != panel:
                continue
            title = row.panel_title
            per_scheme.setdefault(row.scheme, []).append(
                (
                    row.name,
                    [float(m.cut_bytes_total) for m in row.metrics],
                    [m.final_acc for m in row.metrics],
                )
            )
        out.append((title, per_scheme))
    return out


_PLOT_TITLES = {
    "acc_round": "Test accuracy vs round",
    "acc_bytes": "Test accuracy vs cumulative cut traffic",
    "loss_round": "Training loss vs round",
    "ratio_round": "ACP-SL's pruning ratio P_t (eq. 13) vs round",
    "ratio_iter": "ACP-SL's pruning ratio P_t (eq. 13) vs global iteration",
    "kept_hist": "How often each channel was kept in training (cumulative)",
    "topk_hist": "How often each cut neuron is top-k at inference (training set)",
    "gen_gap": "Generalization error (train - test accuracy) vs training accuracy",
    "pareto": "Final test accuracy vs total cut traffic, one curve per scheme",
    "gen_gap_offset": "Generalization error minus (0.5 x train acc - 0.2), the RandTopk "
    "paper's Fig. 4(b) y axis, vs training accuracy",
}


def _topk_counts(
    rows: Sequence[Row], titles: Mapping[str, str]
) -> list[tuple[str, dict[str, list[list[float]]]]]:
    """Inference top-k counts of every finished top-k / RandTopk run, per panel and label."""
    from acpsl.experiments.neurons import TOPK_SCHEMES, inference_topk_counts

    out: list[tuple[str, dict[str, list[list[float]]]]] = []
    for panel in dict.fromkeys(r.panel for r in rows):
        per_label: dict[str, list[list[float]]] = {}
        for row in rows:
            if row.panel != panel or row.scheme not in TOPK_SCHEMES:
                continue
            for run in row.runs:
                if (run.path / "checkpoint.pt").exists():
                    counts = inference_topk_counts(run.path)
                    if counts is not None:
                        per_label.setdefault(row.label, []).append([float(c) for c in counts])
        out.append((titles[panel], per_label))
    return out


def _report_text(
    heading: str,
    preset: Mapping[str, Any],
    grid: Mapping[str, Any],
    runs: Sequence[RunData],
    md_table: str,
    plots: Mapping[str, Path],
    out: Path,
    verdicts_md: str = "",
) -> str:
    lines = [f"# {heading}", ""]
    if preset.get("description"):
        lines += [str(preset["description"]), ""]
    if grid.get("scale"):
        lines += [f"Scale: `{grid['scale']}`.", ""]
    if grid.get("sweep"):
        axes = "; ".join(f"`{k}` in {', '.join(map(str, v))}" for k, v in grid["sweep"].items())
        lines += [f"Swept (one label per combination): {axes}.", ""]
    unfinished = [r for r in runs if not r.finished]
    if unfinished:
        lines += [
            f"**{len(unfinished)} run(s) have not finished**; their numbers are those of the "
            "rounds recorded so far: "
            + ", ".join(f"`{r.path.name}` of {r.panel}/{r.label}" for r in unfinished),
            "",
        ]
    lines += [
        "Accuracy: test set, through the cut. Cut traffic: smashed data up + gradients down "
        "(training only; labels, model hand-off and evaluation bytes are counted apart). "
        "mean ± std over seeds.",
        "",
        md_table,
    ]
    if verdicts_md:
        lines += [
            "## Verdicts on the paper's claims",
            "",
            "Per claim and panel: **holds** when the gap of the means exceeds the seed spread "
            "(the larger of the two runs' max − min over seeds), **does not hold** when the "
            "opposite does, **undecided** otherwise and always with one seed.",
            "",
            verdicts_md,
            "",
        ]
    for kind, path in plots.items():
        lines += [f"![{_PLOT_TITLES[kind]}]({path.relative_to(out).as_posix()})", ""]
    return "\n".join(lines)
