"""``acpsl report``: every file is written, and the table's numbers equal those computed
independently (plain loops) from the records."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from acpsl import plots
from acpsl.config import TrainConfig
from acpsl.errors import CheckpointError
from acpsl.experiments.cli import main as cli_main
from acpsl.experiments.cli import plans_for_schemes
from acpsl.experiments.compare import compare
from acpsl.experiments.report import write_report
from acpsl.plots import label_colors

TARGETS = [0.5, 0.8]
PANELS = {"mnist-iid": "MNIST, IID", "mnist-dir": "MNIST, Dirichlet(0.5)"}
LABELS = {"standard": "standard", "acp": "acp", "randtopk": "randtopk"}
SEEDS = [0, 1, 2]
ROUNDS = 6


#: Iterations per round of the synthetic runs.
ITERS = 10
#: The panel whose records predate ``ratios`` and ``gen_error`` (plots must fall back).
OLD_PANEL = "mnist-dir"


def _records(
    rng: np.random.RandomState, *, scheme: str, rounds: int, new_fields: bool = True
) -> list[dict[str, Any]]:
    up_per_round = {"standard": 100_000, "acp": 30_000, "randtopk": 31_000}[scheme]
    acc = 0.1
    out, up_total, down_total, labels_total, model_total = [], 0, 0, 0, 0
    for r in range(1, rounds + 1):
        acc = min(0.99, acc + float(rng.uniform(0.02, 0.25)))
        up = up_per_round + int(rng.randint(0, 50))
        down = up - 8
        up_total += up
        down_total += down
        labels_total += 120
        model_total += 5000
        # realised fraction dropped per iteration (standard drops nothing)
        dropped = [0.0] * ITERS if scheme == "standard" else list(rng.uniform(0.6, 0.8, ITERS))
        dropped = [float(v) for v in dropped]
        if new_fields:  # today's meanings: ratio_* = ACP-SL's P_t only, kept_frac_* for all
            ratios = dropped if scheme == "acp" else []
            kept = [1.0 - v for v in dropped]
        else:  # records written before kept_frac_*: ratio_* = fraction dropped, every scheme
            ratios, kept = dropped, []
        ratio = sum(ratios) / len(ratios) if ratios else None
        rec: dict[str, Any] = {
            "round": r,
            "iteration": ITERS * r,
            "train_loss": float(2.3 / r),
            "train_acc": min(1.0, acc + 0.02),
            "test_acc": acc,
            "test_loss": float(2.0 / r),
            "bytes_up": up,
            "bytes_down": down,
            "bytes_labels": 120,
            "bytes_model": 5000,
            "bytes_up_total": up_total,
            "bytes_down_total": down_total,
            "bytes_labels_total": labels_total,
            "bytes_model_total": model_total,
            "bytes_eval": 999,
            "ratio_mean": ratio,
            "ratio_min": min(ratios) if ratios else None,
            "ratio_max": max(ratios) if ratios else None,
            "kept_counts": None if scheme != "acp" else [int(v) for v in rng.randint(0, 100, 16)],
            "wall_s": float(r),
        }
        if new_fields:
            rec["ratios"] = ratios
            rec["kept_frac_mean"] = sum(kept) / len(kept)
            rec["kept_frac_min"] = min(kept)
            rec["kept_frac_max"] = max(kept)
            rec["gen_error"] = rec["train_acc"] - rec["test_acc"]
        out.append(rec)
    return out


def _write_grid(root: Path, *, with_meta: bool = True) -> dict[tuple[str, str, int], list[dict]]:
    rng = np.random.RandomState(1234)
    everything: dict[tuple[str, str, int], list[dict]] = {}
    runs = []
    for panel, title in PANELS.items():
        for label, scheme in LABELS.items():
            for seed in SEEDS:
                path = root / panel / label / f"seed{seed}"
                path.mkdir(parents=True)
                records = _records(rng, scheme=scheme, rounds=ROUNDS, new_fields=panel != OLD_PANEL)
                everything[(panel, label, seed)] = records
                config = TrainConfig(
                    scheme=scheme, seed=seed, rounds=ROUNDS, subset=600, target_acc=tuple(TARGETS)
                )
                (path / "config.toml").write_text(config.to_toml())
                (path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
                if with_meta:
                    meta = {
                        "panel": panel,
                        "panel_title": title,
                        "label": label,
                        "seed": seed,
                        "scheme": scheme,
                    }
                    (path / "run.json").write_text(json.dumps(meta))
                runs.append({"key": f"{panel}/{label}/seed{seed}"})
    if with_meta:
        grid = {
            "preset": {
                "title": "A synthetic grid",
                "description": "made in a test",
                "plots": [
                    "acc_round",
                    "acc_bytes",
                    "loss_round",
                    "ratio_round",
                    "ratio_iter",
                    "kept_hist",
                    "gen_gap",
                    "gen_gap_offset",
                ],
            },
            "scale": "small",
            "target_acc": TARGETS,
            "runs": runs,
        }
        (root / "compare.json").write_text(json.dumps(grid))
    return everything


def _naive_mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_report_writes_every_file_and_table_equals_records(tmp_path: Path) -> None:
    data = _write_grid(tmp_path)
    files = write_report(tmp_path)

    expected_plots = {
        "acc_vs_round.png",
        "acc_vs_bytes.png",
        "loss_vs_round.png",
        "ratio_vs_round.png",
        "ratio_vs_iteration.png",
        "kept_hist.png",
        "gen_gap.png",
        "gen_gap_offset.png",
    }
    assert {p.name for p in files.plots.values()} == expected_plots
    for path in files.all():
        assert path.exists() and path.stat().st_size > 0, path
    for png in files.plots.values():
        raw = png.read_bytes()
        assert raw[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(raw) < 600_000

    table = _read_csv(files.table_csv)
    assert [(r["panel"], r["label"]) for r in table] == [(p, lab) for p in PANELS for lab in LABELS]
    for row in table:
        runs = [data[(row["panel"], row["label"], s)] for s in SEEDS]
        assert int(row["seeds"]) == len(SEEDS)
        finals = [recs[-1]["test_acc"] for recs in runs]
        mean, std = _naive_mean_std(finals)
        assert float(row["final_acc_mean"]) == pytest.approx(mean, abs=1e-12)
        assert float(row["final_acc_std"]) == pytest.approx(std, abs=1e-12)
        bests = [max(r["test_acc"] for r in recs) for recs in runs]
        assert float(row["best_acc_mean"]) == pytest.approx(sum(bests) / 3, abs=1e-12)
        totals = [recs[-1]["bytes_up_total"] + recs[-1]["bytes_down_total"] for recs in runs]
        mean, std = _naive_mean_std([float(t) for t in totals])
        assert float(row["cut_bytes_total_mean"]) == pytest.approx(mean)
        assert float(row["cut_bytes_total_std"]) == pytest.approx(std)
        for target in TARGETS:
            key = f"{100 * target:g}"
            rounds, cut = [], []
            for recs in runs:
                for r in recs:
                    if r["test_acc"] >= target:
                        rounds.append(float(r["round"]))
                        cut.append(float(r["bytes_up_total"] + r["bytes_down_total"]))
                        break
            assert int(row[f"reached_{key}"]) == len(rounds)
            if rounds:
                m, s = _naive_mean_std(rounds)
                assert float(row[f"rounds_to_{key}_mean"]) == pytest.approx(m)
                assert float(row[f"rounds_to_{key}_std"]) == pytest.approx(s)
                m, s = _naive_mean_std(cut)
                assert float(row[f"cut_bytes_to_{key}_mean"]) == pytest.approx(m)
        # uplink relative to the standard run of the same seed and data
        fractions = []
        for seed in SEEDS:
            mine = data[(row["panel"], row["label"], seed)]
            ref = data[(row["panel"], "standard", seed)]
            fractions.append(
                (sum(r["bytes_up"] for r in mine) / ROUNDS)
                / (sum(r["bytes_up"] for r in ref) / ROUNDS)
            )
        assert float(row["up_fraction"]) == pytest.approx(sum(fractions) / 3)
        # mean pruning ratio: ACP-SL's P_t only (also from old records); kept fraction: all
        if row["label"] != "acp":
            assert math.isnan(float(row["ratio_mean"]))
        else:
            ratios = [r["ratio_mean"] for recs in runs for r in recs]
            per_run = [sum(ratios[i * ROUNDS : (i + 1) * ROUNDS]) / ROUNDS for i in range(3)]
            assert float(row["ratio_mean"]) == pytest.approx(sum(per_run) / 3)
        kept = [
            r["kept_frac_mean"] if "kept_frac_mean" in r else 1.0 - r["ratio_mean"]
            for recs in runs
            for r in recs
        ]
        per_run = [sum(kept[i * ROUNDS : (i + 1) * ROUNDS]) / ROUNDS for i in range(3)]
        assert float(row["kept_frac_mean"]) == pytest.approx(sum(per_run) / 3)
        # how much accuracy still rose over the last 20% of rounds: ceil(0.2 * 6) = 2 rounds
        rises = [recs[-1]["test_acc"] - recs[-3]["test_acc"] for recs in runs]
        mean, std = _naive_mean_std(rises)
        assert float(row["late_rise_mean"]) == pytest.approx(mean, abs=1e-12)
        assert float(row["late_rise_std"]) == pytest.approx(std, abs=1e-12)

    per_run = _read_csv(files.runs_csv)
    assert len(per_run) == len(PANELS) * len(LABELS) * len(SEEDS)
    for row in per_run:
        recs = data[(row["panel"], row["label"], int(row["seed"]))]
        assert float(row["final_acc"]) == recs[-1]["test_acc"]
        assert float(row["late_rise"]) == pytest.approx(recs[-1]["test_acc"] - recs[-3]["test_acc"])
        assert (
            int(row["cut_bytes_total"]) == recs[-1]["bytes_up_total"] + recs[-1]["bytes_down_total"]
        )
        assert int(row["training_bytes_total"]) == (
            recs[-1]["bytes_up_total"]
            + recs[-1]["bytes_down_total"]
            + recs[-1]["bytes_labels_total"]
            + recs[-1]["bytes_model_total"]
        )

    md = files.table_md.read_text()
    first = table[0]
    mean, std = float(first["final_acc_mean"]), float(first["final_acc_std"])
    assert f"{100 * mean:.2f} ± {100 * std:.2f}" in md
    assert "MNIST, IID" in md and "MNIST, Dirichlet(0.5)" in md
    assert "rise over last 20% of rounds (pts)" in md
    rise, rise_std = float(first["late_rise_mean"]), float(first["late_rise_std"])
    assert f"{100 * rise:.2f} ± {100 * rise_std:.2f}" in md
    report = files.report_md.read_text()
    assert report.startswith("# A synthetic grid")
    for png in files.plots.values():
        assert f"]({png.name})" in report


@pytest.mark.parametrize(
    ("accs", "expected"),
    [
        ([0.5], None),  # one round: nothing to compare with
        ([0.2, 0.6], 0.4),  # ceil(0.2 * 2) = 1 round
        ([0.1, 0.2, 0.3, 0.4, 0.5], 0.1),  # ceil(1.0) = 1 round
        ([0.1, 0.2, 0.3, 0.4, 0.5, 0.65], 0.25),  # ceil(1.2) = 2 rounds
        ([0.1, 0.3, 0.5, 0.6, 0.7, 0.75, 0.78, 0.77], 0.02),  # ceil(1.6) = 2 rounds
        ([0.1] * 10 + [0.2] * 6 + [0.4] * 4, 0.2),  # 20 rounds: round 20 vs round 16
    ],
)
def test_late_rise_is_the_gain_over_the_last_fifth_of_rounds(
    accs: list[float], expected: float | None
) -> None:
    from acpsl.experiments.report import run_metrics

    records = [
        {
            "round": i + 1,
            "test_acc": a,
            "bytes_up_total": 0,
            "bytes_down_total": 0,
            "bytes_labels_total": 0,
            "bytes_model_total": 0,
            "bytes_up": 0,
        }
        for i, a in enumerate(accs)
    ]
    rise = run_metrics(records, targets=()).late_rise
    if expected is None:
        assert rise is None
    else:
        assert rise == pytest.approx(expected, abs=1e-12)


def test_report_on_plain_run_directories(tmp_path: Path) -> None:
    """Runs made by ``acpsl train`` (no run.json, no compare.json) are labelled by scheme."""
    _write_grid(tmp_path, with_meta=False)
    files = write_report(tmp_path, targets=[0.5], plots=["acc_round"])
    table = _read_csv(files.table_csv)
    assert {r["label"] for r in table} == {"standard", "acp", "randtopk"}
    assert {r["panel"] for r in table} == set(PANELS)
    assert set(files.plots) == {"acc_round"}


def test_report_refuses_a_gap_in_the_records(tmp_path: Path) -> None:
    _write_grid(tmp_path)
    path = tmp_path / "mnist-iid" / "acp" / "seed0" / "records.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:2] + lines[3:]))
    with pytest.raises(CheckpointError, match="gap"):
        write_report(tmp_path)


def test_report_of_an_empty_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no run"):
        write_report(tmp_path)


def test_report_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_grid(tmp_path)
    assert (
        cli_main(["report", str(tmp_path), "--out", str(tmp_path / "r"), "--target-acc", "50"]) == 0
    )
    out = capsys.readouterr().out
    assert "rounds to 50%" in out
    assert (tmp_path / "r" / "table.csv").exists()
    assert cli_main(["report", str(tmp_path / "missing")]) == 1


def test_label_colors_are_stable_and_distinct() -> None:
    colors = label_colors(["acp-l0", "acp", "standard", "acp-random", "randtopk"])
    assert colors["acp"] == "#D55E00" and colors["standard"] == "#000000"
    assert len(set(colors.values())) == 5
    assert label_colors(["acp-l0", "acp", "standard", "acp-random", "randtopk"]) == colors


def _capture_figures(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, Any]]:
    """What each figure draws, keyed by file name: its title, and per panel the axis labels
    and every line (label, colour, x, y) and shaded band (count), read before it is saved."""
    figures: dict[str, dict[str, Any]] = {}
    real = plots._finish

    def finish(fig: Any, path: Path, *, title: str, axes: Any, **kw: Any) -> Path:
        panels = {}
        for ax in axes:
            panels[ax.get_title()] = {
                "xlabel": ax.get_xlabel(),
                "ylabel": ax.get_ylabel(),
                "lines": {
                    line.get_label(): (
                        line.get_color(),
                        [float(v) for v in line.get_xdata()],
                        [float(v) for v in line.get_ydata()],
                    )
                    for line in ax.get_lines()
                    if not line.get_label().startswith("_")
                },
                "raw": [
                    [float(v) for v in line.get_ydata()]
                    for line in ax.get_lines()
                    if line.get_label() == "_raw"
                ],
                "bands": len(ax.collections),
            }
        written = real(fig, path, title=title, axes=axes, **kw)
        legend = [t.get_text() for t in fig.legends[0].get_texts()] if fig.legends else []
        caption = [t.get_text() for t in fig.texts if t is not fig._suptitle]
        figures[path.name] = {
            "title": title,
            "panels": panels,
            "legend": legend,
            "caption": caption,
        }
        return written

    monkeypatch.setattr(plots, "_finish", finish)
    return figures


def test_ratio_vs_iteration_plot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """P_t against the global iteration: one point per iteration from ``ratios``, the mean
    over seeds, drawn faint, with its rolling mean on top; records without ``ratios`` fall
    back to one point per round. Only ACP-SL has a P_t (randtopk's old ratio_* are ignored)."""
    data = _write_grid(tmp_path)
    figures = _capture_figures(monkeypatch)
    files = write_report(tmp_path, plots=["ratio_iter"])
    assert set(files.plots) == {"ratio_iter"}
    fig = figures["ratio_vs_iteration.png"]
    assert "iteration" in fig["title"].lower() and "P_t" in fig["title"]
    assert fig["legend"] == ["ACP-SL"]  # standard and randtopk have no P_t: no line
    (caption,) = fig["caption"]
    assert "rolling mean over" in caption and "Faint" in caption and "band" in caption
    color = plots.SCHEME_STYLES["acp"][0]
    for panel, title in PANELS.items():
        drawn = fig["panels"][title]
        assert "iteration" in drawn["xlabel"] and "%" in drawn["ylabel"]
        assert set(drawn["lines"]) == {"ACP-SL"}
        assert drawn["bands"] == 1  # min-max over seeds (or within rounds)
        line_color, xs, ys = drawn["lines"]["ACP-SL"]
        assert line_color == color
        runs = [data[(panel, "acp", seed)] for seed in SEEDS]
        if panel == OLD_PANEL:  # per round, at its last iteration
            assert xs == [float(ITERS * r) for r in range(1, ROUNDS + 1)]
            want = [
                100 * sum(recs[i]["ratio_mean"] for recs in runs) / len(SEEDS)
                for i in range(ROUNDS)
            ]
        else:  # every iteration of every round
            assert xs == [float(i) for i in range(1, ITERS * ROUNDS + 1)]
            per_seed = [[v for r in recs for v in r["ratios"]] for recs in runs]
            want = [100 * sum(col) / len(SEEDS) for col in zip(*per_seed)]
        (raw,) = drawn["raw"]
        assert raw == pytest.approx(want)
        window = plots._ratio_window(len(want), 0 if panel == OLD_PANEL else ITERS)
        assert ys == pytest.approx(plots.rolling_mean(want, window))


def test_ratio_iteration_series_aligns_seeds_and_bands() -> None:
    a = [{"round": 1, "iteration": 3, "ratios": [0.6, 0.7, 0.8]}]
    b = [{"round": 1, "iteration": 3, "ratios": [0.8, 0.7, 0.6]}]
    assert plots.ratio_iteration_series([a, b]) == (
        [1.0, 2.0, 3.0],
        pytest.approx([0.7, 0.7, 0.7]),
        [0.6, 0.7, 0.6],
        [0.8, 0.7, 0.8],
    )
    old = [{"round": 1, "iteration": 4, "ratio_mean": 0.7, "ratio_min": 0.6, "ratio_max": 0.9}]
    assert plots.ratio_iteration_series([old]) == ([4.0], [0.7], [0.6], [0.9])
    assert plots.ratio_iteration_series([[{"round": 1, "iteration": 2, "ratios": []}]]) is None
    assert plots.ratio_iteration_series([[{"round": 1, "ratio_mean": None}]]) is None


def test_generalization_error_plots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """gen_gap plots the records' gen_error; gen_gap_offset the RandTopk Fig. 4(b) quantity
    gen_error - (0.5 train_acc - 0.2), both in points against the training accuracy."""
    data = _write_grid(tmp_path)
    figures = _capture_figures(monkeypatch)
    files = write_report(tmp_path, plots=["gen_gap", "gen_gap_offset"])
    assert set(files.plots) == {"gen_gap", "gen_gap_offset"}
    plain, offset = figures["gen_gap.png"], figures["gen_gap_offset.png"]
    assert "generalization error" in plain["title"].lower()
    assert "0.5 x train acc - 0.2" in offset["title"] and "Fig. 4(b)" in offset["title"]
    names = {"standard": "Standard SL", "acp": "ACP-SL", "randtopk": "RandTopk"}
    colors = {label: plots.SCHEME_STYLES[label][0] for label in LABELS}
    for panel, title in PANELS.items():
        assert "0.5 x train acc - 0.2" in offset["panels"][title]["ylabel"]
        assert "train - test" in plain["panels"][title]["ylabel"]
        for label in LABELS:
            recs = [r for seed in SEEDS for r in data[(panel, label, seed)]]
            pts = sorted((100 * r["train_acc"], r["train_acc"] - r["test_acc"]) for r in recs)
            color, xs, ys = plain["panels"][title]["lines"][names[label]]
            assert color == colors[label]
            assert xs == pytest.approx([x for x, _ in pts])
            assert ys == pytest.approx([100 * g for _, g in pts])
            _, xs, ys = offset["panels"][title]["lines"][names[label]]
            assert xs == pytest.approx([x for x, _ in pts])
            assert ys == pytest.approx([100 * (g - (0.5 * x / 100 - 0.2)) for x, g in pts])


def test_gen_error_prefers_the_record_field() -> None:
    rec = {"train_acc": 0.9, "test_acc": 0.7, "gen_error": 0.25}
    assert plots.gen_error(rec) == 0.25
    assert plots.gen_error_offset(rec) == pytest.approx(0.25 - (0.45 - 0.2))
    assert plots.gen_error({"train_acc": 0.9, "test_acc": 0.7}) == pytest.approx(0.2)
    assert plots.gen_error({"test_acc": 0.7}) is None
    assert plots.gen_error_offset({"test_acc": 0.7, "gen_error": 0.1}) is None


@pytest.fixture()
def one_thread() -> Any:
    """One PyTorch thread: tiny models on a shared CPU run several times faster so."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_report_of_a_real_grid_equals_its_records(
    tmp_path: Path, shared_data: Path, one_thread: None
) -> None:
    """A real 2 schemes x 2 seeds grid through compare, then report: the table's numbers are
    those computed here, directly from the records.jsonl files."""
    targets = [0.15, 0.5]
    plans = plans_for_schemes(
        ["standard", "acp"],
        base={
            "dataset": "mnist",
            "data_dir": str(shared_data),
            "model": "smallcnn",
            "cut": 1,
            "subset": 64,
            "test_subset": 64,
            "batch_size": 16,
            "clients": 2,
            "rounds": 3,
            "progress": False,
        },
        seeds=[0, 1],
    )
    result = compare(plans, out_dir=tmp_path, workers=1, progress=False)
    assert {v["status"] for v in result.results.values()} == {"done"}
    files = write_report(tmp_path, targets=targets)
    records = {
        (p.label, p.seed): [
            json.loads(ln) for ln in (tmp_path / p.key / "records.jsonl").read_text().splitlines()
        ]
        for p in plans
    }
    assert {len(r) for r in records.values()} == {3}
    acp = records[("acp", 0)][0]
    assert len(acp["ratios"]) == 4 and acp["ratio_mean"] == pytest.approx(
        sum(acp["ratios"]) / 4
    )  # 64 samples / batch 16: 4 iterations a round
    assert records[("standard", 0)][0]["ratios"] == []  # no pruning ratio (SPEC section 6)
    assert "ratio_iter" in files.plots and "gen_gap_offset" in files.plots

    table = {r["label"]: r for r in _read_csv(files.table_csv)}
    assert set(table) == {"standard", "acp"}
    md = files.table_md.read_text()
    reached_any = False
    for label, row in table.items():
        runs = [records[(label, seed)] for seed in (0, 1)]
        mean, std = _naive_mean_std([recs[-1]["test_acc"] for recs in runs])
        assert float(row["final_acc_mean"]) == pytest.approx(mean, abs=1e-12)
        assert float(row["final_acc_std"]) == pytest.approx(std, abs=1e-12)
        name = {"standard": "Standard SL", "acp": "ACP-SL"}[label]
        assert row["name"] == name
        assert f"| {name} | 2 | {100 * mean:.2f} ± {100 * std:.2f} |" in md
        for target in targets:
            key = f"{100 * target:g}"
            rounds, cut = [], []
            for recs in runs:
                hit = next((r for r in recs if r["test_acc"] >= target), None)
                if hit is not None:
                    rounds.append(float(hit["round"]))
                    cut.append(float(hit["bytes_up_total"] + hit["bytes_down_total"]))
            assert int(row[f"reached_{key}"]) == len(rounds)
            if not rounds:
                assert row[f"rounds_to_{key}_mean"] == "nan"
                continue
            reached_any = True
            m, sd = _naive_mean_std(rounds)
            assert float(row[f"rounds_to_{key}_mean"]) == pytest.approx(m)
            assert float(row[f"rounds_to_{key}_std"]) == pytest.approx(sd)
            m, sd = _naive_mean_std(cut)
            assert float(row[f"cut_bytes_to_{key}_mean"]) == pytest.approx(m)
            assert float(row[f"cut_bytes_to_{key}_std"]) == pytest.approx(sd)
    assert reached_any  # the checks above compared real numbers at least once


#: Every built-in scheme plus ACP-SL's ablations: the most curves a figure of ours shows.
_MANY = [
    ("standard", "standard", {}),
    ("acp", "acp", {}),
    ("randtopk", "randtopk", {}),
    ("topk", "topk", {}),
    ("sizered", "sizered", {}),
    ("quant", "quant", {}),
    ("l1", "l1", {}),
    ("dropgroup", "dropgroup", {}),
    ("acp-l0", "acp", {"scorer": "l0"}),
    ("acp-randscore", "acp", {"scorer": "random"}),
    ("acp-fixed", "acp", {"ratio": "fixed"}),
    ("acp-randratio", "acp", {"ratio": "random"}),
    ("acp-inst", "acp", {"score_mode": "inst"}),
    ("acp-paper", "acp", {"group_score": "paper"}),
]


def test_styles_are_distinct_in_colour_and_marker() -> None:
    from acpsl.experiments.names import display_name

    styles = plots.label_styles([(lab, s, display_name(s, p)) for lab, s, p in _MANY])
    assert len({st.color for st in styles.values()}) == len(_MANY)
    assert len({(st.marker, st.linestyle) for st in styles.values()}) == len(_MANY)
    assert len({st.name for st in styles.values()}) == len(_MANY)
    topk, randtopk = styles["topk"], styles["randtopk"]
    assert topk.color != randtopk.color and topk.marker != randtopk.marker
    assert topk.linestyle != randtopk.linestyle
    assert styles["acp-l0"].name == "ACP-SL, ℓ0 scores"


def test_figures_for_a_paper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Formats and DPI; a legend of 14 schemes below the panels, outside every axes and
    inside the saved area; a caption line; integer round ticks; labelled target lines."""
    from matplotlib.image import imread

    from acpsl.experiments.names import display_name

    rng = np.random.RandomState(0)
    styles = plots.label_styles([(lab, s, display_name(s, p)) for lab, s, p in _MANY])
    panels = [
        (
            title,
            {lab: [_records(rng, scheme="acp", rounds=7) for _ in SEEDS] for lab, _, _ in _MANY},
        )
        for title in PANELS.values()
    ]
    seen: dict[str, Any] = {}
    real = plots._finish

    def finish(fig: Any, path: Path, **kw: Any) -> Path:
        written = real(fig, path, **kw)
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        canvas = FigureCanvasAgg(fig)  # the last savefig (SVG) left another canvas
        canvas.draw()
        renderer = canvas.get_renderer()
        saved = fig.get_tightbbox(renderer)  # inches: what bbox_inches="tight" keeps
        legend = fig.legends[0].get_window_extent(renderer)
        seen.update(fig=fig, saved=saved, legend=legend, dpi=fig.dpi, renderer=renderer)
        return written

    monkeypatch.setattr(plots, "_finish", finish)
    out = plots.plot_curves(
        panels,
        kind="acc_round",
        path=tmp_path / "acc.png",
        title="Test accuracy vs round",
        styles=styles,
        targets=[0.5, 0.8],
        formats=["png", "pdf", "svg"],
        dpi=120,
    )
    assert out == tmp_path / "acc.png"
    for fmt in ("png", "pdf", "svg"):
        assert (tmp_path / f"acc.{fmt}").stat().st_size > 0
    assert (tmp_path / "acc.pdf").read_bytes()[:4] == b"%PDF"
    assert b"<svg" in (tmp_path / "acc.svg").read_bytes()[:1000]
    fig = seen["fig"]
    legend_texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend_texts == [styles[lab].name for lab, _, _ in _MANY]
    # the legend is inside the saved area and overlaps no axes
    saved, legend, dpi = seen["saved"], seen["legend"], seen["dpi"]
    assert saved.y0 * dpi <= legend.y0 and legend.y1 <= saved.y1 * dpi
    assert saved.x0 * dpi <= legend.x0 and legend.x1 <= saved.x1 * dpi
    for ax in fig.axes:
        assert not ax.get_window_extent(seen["renderer"]).overlaps(legend)
        ticks = [t for t in ax.get_xticks() if 1 <= t <= 7]
        assert ticks and all(float(t).is_integer() for t in ticks)
        labels = [t.get_text() for t in ax.texts]
        assert labels == ["target 50%", "target 80%"]
    caption = [t.get_text() for t in fig.texts if t is not fig._suptitle]
    assert caption == ["Lines: mean over 3 seeds; shaded band: the seeds' range (min-max)."]
    # the PNG holds the whole tight area (plus its padding) at the DPI asked for, 120
    height, width = imread(tmp_path / "acc.png").shape[:2]
    assert abs(width - (saved.width + 0.3) * 120) <= 3
    assert abs(height - (saved.height + 0.3) * 120) <= 3


def test_report_cli_formats_and_dpi(tmp_path: Path) -> None:
    from matplotlib.image import imread

    _write_grid(tmp_path)
    argv = ["report", str(tmp_path), "--plots", "acc_round", "--format", "png,svg", "--dpi", "100"]
    assert cli_main(argv) == 0
    png, svg = tmp_path / "report" / "acc_vs_round.png", tmp_path / "report" / "acc_vs_round.svg"
    assert svg.exists() and not (tmp_path / "report" / "acc_vs_round.pdf").exists()
    small = imread(png).shape
    assert cli_main([*argv[:-1], "200"]) == 0
    big = imread(png).shape
    assert big[0] == pytest.approx(2 * small[0], abs=4)  # twice the DPI, twice the pixels
    assert cli_main(["report", str(tmp_path), "--format", "gif"]) == 2


def test_count_hist_leaves_out_panels_without_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A grid's uncompressed panel has no top-k run: its histogram panel would be an empty
    frame in a paper figure, so only panels with counts get axes (shares still exact)."""
    seen: dict[str, Any] = {}
    real = plots._finish

    def spy(fig: Any, path: Path, **kwargs: Any) -> Path:
        seen["visible"] = [ax.get_title() for ax in fig.axes if ax.get_visible()]
        seen["lines"] = {
            ax.get_title(): [list(line.get_ydata()) for line in ax.get_lines()] for ax in fig.axes
        }
        return real(fig, path, **kwargs)

    monkeypatch.setattr(plots, "_finish", spy)
    written = plots.plot_count_hist(
        [
            ("no compression", {}),
            ("high", {"topk": [[3.0, 1.0], [1.0, 3.0]], "randtopk": [[0.0, 0.0]]}),
            ("low", {"topk": [[1.0, 0.0, 1.0, 2.0]]}),
        ],
        path=tmp_path / "hist.png",
        title="counts",
        xlabel="neuron rank",
    )
    assert written == tmp_path / "hist.png" and written.is_file()
    assert seen["visible"] == ["high", "low"]
    assert seen["lines"]["high"] == [[50.0, 50.0]]  # randtopk's all-zero counts: no line
    assert seen["lines"]["low"] == [[50.0, 25.0, 25.0, 0.0]]
