"""Record fields of SPEC section 6: ``ratio_*`` = ACP-SL's P_t of eq. 13 (null for schemes
without one), ``kept_frac_*`` = the realised fraction sent (every scheme); old records still
load in the report; the real cut in ``--help`` and in the log (issue 10, defect 8)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from acpsl import models
from acpsl.config import TrainConfig
from acpsl.engine import train
from acpsl.engine.cli_args import MODEL_DEFAULT_CUTS
from acpsl.engine.records import RECORD_FIELDS, upgrade_record
from acpsl.experiments.report import write_report

CHANNELS = 32  # smallcnn's channels at cut 1
ITERATIONS = 4  # 96 samples, 2 clients, batch 24


def tiny(shared_data: Path, **changes: object) -> TrainConfig:
    base: dict[str, object] = dict(
        scheme="standard",
        dataset="mnist",
        data_dir=str(shared_data),
        subset=96,
        test_subset=32,
        model="smallcnn",
        clients=2,
        rounds=1,
        batch_size=24,
        optimizer="adam",
        lr=1e-3,
        progress=False,
        device="cpu",
    )
    base.update(changes)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_acp_records_p_t_and_the_realised_kept_fraction_apart(shared_data, tmp_path):
    """With P in [0.6, 0.6], round(0.6 * 32) = 19 channels are pruned: the fraction dropped is
    19/32 = 0.594 < P_min. ratio_* must hold P_t itself (0.6), kept_frac_* the 13/32 sent."""
    config = tiny(
        shared_data, scheme="acp", scheme_params={"p_min": 0.6, "p_base": 0.6, "p_max": 0.6}
    )
    summary = train(config, out_dir=tmp_path / "acp", log=None)
    (r,) = summary.records
    for key in ("kept_frac_mean", "kept_frac_min", "kept_frac_max"):
        assert key in RECORD_FIELDS and key in r
    assert r["ratio_mean"] == r["ratio_min"] == r["ratio_max"] == pytest.approx(0.6)
    assert r["ratios"] == pytest.approx([0.6] * ITERATIONS)
    kept = (CHANNELS - round(0.6 * CHANNELS)) / CHANNELS
    assert r["kept_frac_mean"] == r["kept_frac_min"] == r["kept_frac_max"] == pytest.approx(kept)


def test_adaptive_acp_ratio_stays_within_its_bounds(shared_data, tmp_path):
    config = tiny(shared_data, scheme="acp")  # P_min 0.6, P_max 0.8
    (r,) = train(config, out_dir=tmp_path / "acp", log=None).records
    assert 0.6 <= r["ratio_min"] <= r["ratio_mean"] <= r["ratio_max"] <= 0.8
    assert all(0.6 <= v <= 0.8 for v in r["ratios"]) and len(r["ratios"]) == ITERATIONS
    # kept = (N - round(P_t N)) / N: within half a channel of 1 - P_t
    assert abs(r["kept_frac_mean"] - (1 - r["ratio_mean"])) <= 0.5 / CHANNELS + 1e-12


@pytest.mark.parametrize(
    ("scheme", "params", "kept"),
    [
        ("standard", {}, 1.0),
        ("randtopk", {"k": 98}, 98 / (32 * 14 * 14)),
        ("topk", {"k": 98}, 98 / (32 * 14 * 14)),
    ],
)
def test_schemes_without_a_pruning_ratio_record_null_and_their_kept_fraction(
    shared_data, tmp_path, scheme, params, kept
):
    config = tiny(shared_data, scheme=scheme, scheme_params=params)
    (r,) = train(config, out_dir=tmp_path / scheme, log=None).records
    assert r["ratio_mean"] is None and r["ratio_min"] is None and r["ratio_max"] is None
    assert r["ratios"] == []
    assert r["kept_frac_mean"] == r["kept_frac_min"] == r["kept_frac_max"] == pytest.approx(kept)


def test_upgrade_of_records_written_before_kept_frac():
    old_acp = {"ratio_mean": 0.7, "ratio_min": 0.59375, "ratio_max": 0.8, "ratios": [0.7]}
    new = upgrade_record(old_acp, scheme="acp")
    assert new["ratio_mean"] == 0.7 and new["ratios"] == [0.7]
    assert new["kept_frac_mean"] == pytest.approx(0.3)
    assert new["kept_frac_min"] == pytest.approx(0.2)  # from the old max dropped
    assert new["kept_frac_max"] == pytest.approx(0.40625)
    old_rtk = {"ratio_mean": 0.9, "ratio_min": 0.9, "ratio_max": 0.9, "ratios": [0.9]}
    new = upgrade_record(old_rtk, scheme="randtopk")
    assert new["ratio_mean"] is None and new["ratios"] == []
    assert new["kept_frac_mean"] == pytest.approx(0.1)
    current = {"ratio_mean": None, "kept_frac_mean": 0.5}
    assert upgrade_record(current, scheme="randtopk") == current


def _old_run(path: Path, *, scheme: str, dropped: float) -> None:
    """A run directory as acpsl wrote it before kept_frac_* existed."""
    path.mkdir(parents=True)
    (path / "config.toml").write_text(TrainConfig(scheme=scheme, rounds=1).to_toml())
    rec = {
        "round": 1,
        "iteration": 4,
        "train_loss": 1.0,
        "test_acc": 0.5,
        "bytes_up": 10,
        "bytes_down": 10,
        "bytes_labels": 1,
        "bytes_model": 0,
        "bytes_up_total": 10,
        "bytes_down_total": 10,
        "bytes_labels_total": 1,
        "bytes_model_total": 0,
        "ratio_mean": dropped,
        "ratio_min": dropped,
        "ratio_max": dropped,
    }
    (path / "records.jsonl").write_text(json.dumps(rec) + "\n")


def test_report_of_old_records_shows_a_dash_for_schemes_without_a_ratio(tmp_path):
    _old_run(tmp_path / "grid" / "p" / "randtopk" / "seed0", scheme="randtopk", dropped=0.9)
    _old_run(tmp_path / "grid" / "p" / "acp" / "seed0", scheme="acp", dropped=0.7)
    _old_run(tmp_path / "grid" / "p" / "standard" / "seed0", scheme="standard", dropped=0.0)
    files = write_report(tmp_path / "grid", plots=["ratio_round"])
    md = files.table_md.read_text()
    lines = {line.split("|")[2].strip(): line for line in md.splitlines()[2:]}
    header = [c.strip() for c in md.splitlines()[0].strip("|").split("|")]
    ratio_col = next(i for i, c in enumerate(header) if c.startswith("mean pruning ratio"))
    sent_col = next(i for i, c in enumerate(header) if c.startswith("values sent"))

    def cell(label_start: str, col: int) -> str:
        line = next(v for k, v in lines.items() if k.startswith(label_start))
        return line.strip().strip("|").split("|")[col].strip()

    assert cell("RandTopk", ratio_col) == "—"
    assert cell("Standard", ratio_col) == "—"
    assert cell("ACP-SL", ratio_col) == "70.0"
    assert cell("RandTopk", sent_col) == "10.0"
    assert cell("Standard", sent_col) == "100.0"
    assert "ratio_round" in files.plots  # drawn from ACP-SL alone


def test_cut_help_names_the_models_defaults_and_they_are_true():
    from acpsl import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    text = sub.choices["train"].format_help()
    flat = " ".join(text.split())
    assert "(default: all)" not in flat.split("--cut", 1)[1][:200]
    for name, cut in MODEL_DEFAULT_CUTS.items():
        assert f"{name} {cut}" in flat
        split = models.create(name, in_channels=1, num_classes=10, cut=None, seed=0)
        assert split.cut == cut
    assert set(MODEL_DEFAULT_CUTS) == set(models.names())


def test_the_log_names_the_real_cut(shared_data, tmp_path):
    lines: list[str] = []
    train(tiny(shared_data), out_dir=tmp_path / "run", log=lines.append)
    start = next(line for line in lines if line.startswith("training "))
    assert "cut None" not in start
    assert "smallcnn cut 1 (client: block1)" in start
