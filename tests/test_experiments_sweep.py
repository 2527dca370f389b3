"""``acpsl compare --sweep``: training options as extra grid axes, one label per combination."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from acpsl.config import TrainConfig
from acpsl.errors import ConfigError
from acpsl.experiments.cli import main as cli_main
from acpsl.experiments.cli import plans_for_schemes
from acpsl.experiments.runs import GRID_FILE
from acpsl.experiments.sweep import expand, parse_sweep


def test_parse_sweep_values_as_toml_scalars() -> None:
    axes = parse_sweep(["lr=0.01,3e-2", "optimizer=sgd,adam", "channels-last=true,false"])
    assert [a.key for a in axes] == ["lr", "optimizer", "channels_last"]
    assert axes[0].values == (0.01, 0.03) and axes[0].texts == ("0.01", "3e-2")
    assert axes[1].values == ("sgd", "adam") and axes[2].values == (True, False)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (["lr"], "use KEY=V1,V2"),
        (["lr=0.1,,0.2"], "use KEY=V1,V2"),
        (["learning_rate=0.1"], "unknown option 'learning_rate'"),
        (["seed=1,2"], "seed is already an axis"),
        (["scheme=acp,topk"], "scheme is already an axis"),
        (["lr=0.1", "lr=0.2"], "lr is swept twice"),
        (["lr=0.1,0.1"], "a value is repeated"),
    ],
)
def test_parse_sweep_refuses_bad_specs(spec, match) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_sweep(spec)


def test_expand_gives_one_label_and_config_per_combination() -> None:
    plans = plans_for_schemes(["standard", "acp"], base={"rounds": 1}, seeds=[0, 1])
    axes = parse_sweep(["lr=0.01,0.1", "augment=none,crop-flip"])
    grid = expand(plans, axes)
    assert len(grid) == 2 * 2 * 2 * 2
    labels = sorted({p.label for p in grid})
    assert labels == sorted(
        f"{s}-lr={lr}-augment={a}"
        for s in ("standard", "acp")
        for lr in ("0.01", "0.1")
        for a in ("none", "crop-flip")
    )
    one = next(p for p in grid if p.label == "acp-lr=0.1-augment=crop-flip" and p.seed == 1)
    assert one.config.lr == 0.1 and one.config.augment == "crop-flip" and one.config.scheme == "acp"
    assert one.key == "mnist/acp-lr=0.1-augment=crop-flip/seed1"
    assert expand(plans, []) == plans
    with pytest.raises(ConfigError, match=r"sweep combination standard-lr=-1: invalid lr"):
        expand(plans, parse_sweep(["lr=-1"]))


def test_compare_sweep_runs_reports_and_resumes(tmp_path: Path, shared_data: Path, capsys) -> None:
    out = tmp_path / "grid"
    args = [
        "compare",
        *("--schemes", "standard"),
        *("--sweep", "lr=0.003,0.01", "lr-schedule=constant,cosine"),
        *("--out", str(out), "--data-dir", str(shared_data), "--dataset", "mnist"),
        *("--model", "smallcnn", "--cut", "1", "--subset", "48", "--test-subset", "16"),
        *("--batch-size", "16", "--clients", "1", "--rounds", "1", "--seeds", "0"),
        *("--optimizer", "adam", "--no-progress"),
    ]
    assert cli_main(args) == 0
    first = capsys.readouterr().out
    assert "4 runs trained" in first
    grid = json.loads((out / GRID_FILE).read_text())
    assert grid["sweep"] == {"lr": [0.003, 0.01], "lr_schedule": ["constant", "cosine"]}
    labels = {r["label"] for r in grid["runs"]}
    assert labels == {
        f"standard-lr={lr}-lr_schedule={s}"
        for lr in ("0.003", "0.01")
        for s in ("constant", "cosine")
    }
    config = TrainConfig.from_toml(
        out / "mnist" / "standard-lr=0.01-lr_schedule=cosine" / "seed0" / "config.toml"
    )
    assert config.lr == 0.01 and config.lr_schedule == "cosine"
    table = (out / "report" / "table.md").read_text()
    assert all(label in table for label in labels)
    assert "Swept (one label per combination)" in (out / "report" / "report.md").read_text()
    # the same command again: every run is found finished and skipped
    assert cli_main(args) == 0
    assert "0 runs trained, 4 already finished" in capsys.readouterr().out
    # dry run lists the combinations
    assert cli_main([*args, "--dry-run"]) == 0
    assert "4 runs" in capsys.readouterr().out


def test_matched_runs_follow_the_reference_of_their_own_combination() -> None:
    """A baseline matched to ACP-SL's realised bytes waits for the ACP-SL run with the same
    swept values (and dataset panel), not for a run the sweep renamed away."""
    plans = plans_for_schemes(["acp", "randtopk"], base={"dataset": "mnist"}, seeds=[0])
    axes = parse_sweep(["dataset=mnist,fashion-mnist", "lr=0.01,0.1"])
    swept = {p.key: p.match_run for p in expand(plans, axes)}
    assert swept["fashion-mnist/randtopk-dataset=fashion-mnist-lr=0.1/seed0"] == (
        "fashion-mnist/acp-dataset=fashion-mnist-lr=0.1/seed0"
    )
    assert (
        swept["mnist/randtopk-dataset=mnist-lr=0.01/seed0"]
        == "mnist/acp-dataset=mnist-lr=0.01/seed0"
    )
    assert all(ref is None or ref in swept for ref in swept.values())
