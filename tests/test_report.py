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

from acpsl.config import TrainConfig
from acpsl.errors import CheckpointError
from acpsl.experiments.cli import main as cli_main
from acpsl.experiments.report import write_report
from acpsl.plots import label_colors

TARGETS = [0.5, 0.8]
PANELS = {"mnist-iid": "MNIST, IID", "mnist-dir": "MNIST, Dirichlet(0.5)"}
LABELS = {"standard": "standard", "acp": "acp", "randtopk": "randtopk"}
SEEDS = [0, 1, 2]
ROUNDS = 6


def _records(rng: np.random.RandomState, *, scheme: str, rounds: int) -> list[dict[str, Any]]:
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
        ratio = None if scheme == "standard" else float(rng.uniform(0.6, 0.8))
        rec: dict[str, Any] = {
            "round": r,
            "iteration": 10 * r,
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
            "ratio_min": None if ratio is None else ratio - 0.05,
            "ratio_max": None if ratio is None else ratio + 0.05,
            "kept_counts": None if scheme != "acp" else [int(v) for v in rng.randint(0, 100, 16)],
            "wall_s": float(r),
        }
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
                records = _records(rng, scheme=scheme, rounds=ROUNDS)
                everything[(panel, label, seed)] = records
                config = TrainConfig(
                    scheme=scheme, seed=seed, rounds=ROUNDS, subset=600, target_acc=TARGETS
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
                    "kept_hist",
                    "gen_gap",
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
        "kept_hist.png",
        "gen_gap.png",
    }
    assert {p.name for p in files.plots.values()} == expected_plots
    for path in files.all():
        assert path.exists() and path.stat().st_size > 0, path
    for png in files.plots.values():
        raw = png.read_bytes()
        assert raw[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(raw) < 200_000

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
        if row["label"] == "standard":
            assert math.isnan(float(row["ratio_mean"]))
        else:
            ratios = [r["ratio_mean"] for recs in runs for r in recs]
            per_run = [sum(ratios[i * ROUNDS : (i + 1) * ROUNDS]) / ROUNDS for i in range(3)]
            assert float(row["ratio_mean"]) == pytest.approx(sum(per_run) / 3)

    per_run = _read_csv(files.runs_csv)
    assert len(per_run) == len(PANELS) * len(LABELS) * len(SEEDS)
    for row in per_run:
        recs = data[(row["panel"], row["label"], int(row["seed"]))]
        assert float(row["final_acc"]) == recs[-1]["test_acc"]
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
    report = files.report_md.read_text()
    assert report.startswith("# A synthetic grid")
    for png in files.plots.values():
        assert f"]({png.name})" in report


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
    assert colors["acp"] == "#d62728" and colors["standard"] == "#222222"
    assert len(set(colors.values())) == 5
    assert label_colors(["acp-l0", "acp", "standard", "acp-random", "randtopk"]) == colors
