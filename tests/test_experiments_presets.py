"""Presets: every shipped preset loads, plans, and runs its whole tiny grid end to end."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from acpsl import data, models, schemes
from acpsl.config import TrainConfig
from acpsl.errors import ConfigError
from acpsl.experiments import presets
from acpsl.experiments.cli import main as cli_main
from acpsl.experiments.compare import compare
from acpsl.experiments.matching import resolve_match
from acpsl.experiments.neurons import inference_topk_counts
from acpsl.experiments.report import write_report

PAPER_PRESETS = {
    "acp-fig2",
    "acp-fig3",
    "acp-fig4",
    "acp-fig5",
    "acp-fig6",
    "randtopk-table3",
    "randtopk-fig3",
    "randtopk-fig4",
    "randtopk-fig5",
    "acp-mnist",
    "acp-levels",
}


def test_every_paper_experiment_has_a_preset() -> None:
    assert set(presets.names()) == PAPER_PRESETS


@pytest.mark.parametrize("name", sorted(PAPER_PRESETS))
def test_preset_plans_are_valid_at_every_scale(name: str) -> None:
    preset = presets.load(name)
    assert {"full", "small", "tiny"} <= set(preset.scale_names())
    for scale in preset.scale_names():
        plans = preset.plan(scale=scale)
        keys = [p.key for p in plans]
        assert len(keys) == len(set(keys))
        for plan in plans:
            cfg = plan.config
            assert cfg.scheme in schemes.names()
            assert cfg.dataset in data.names()
            assert cfg.model in models.names()
            if plan.match_fraction is None and plan.match_acp is None:
                schemes.create(cfg.scheme, **cfg.scheme_params)  # parameters are accepted
    full = preset.plan(scale="full")
    assert len({p.seed for p in full}) == len(preset.seeds)
    tiny = preset.plan(scale="tiny")
    assert all(p.config.dataset == "mnist" and p.config.rounds == 1 for p in tiny)
    for plan, declared in zip(tiny, full):
        if declared.config.dataset != "mnist":  # the override is visible in the figures
            assert plan.panel_title.endswith("[run on mnist]")


def test_paper_settings_of_fig4_and_table3() -> None:
    fig4 = presets.load("acp-fig4").plan(scale="full")
    assert len(fig4) == 16
    cfg = fig4[0].config
    assert (cfg.batch_size, cfg.clients, cfg.lr, cfg.model, cfg.cut) == (
        128,
        5,
        0.00015,
        "resnet18",
        4,
    )
    assert {p.config.partition for p in fig4} == {"iid", "dirichlet"}
    assert {p.config.dataset for p in fig4} == {"cifar-10", "fashion-mnist"}
    acp = next(p for p in fig4 if p.label == "acp").config.scheme_params
    assert (acp["p_min"], acp["p_base"], acp["p_max"]) == (0.6, 0.7, 0.8)
    assert next(p for p in fig4 if p.label == "randtopk").match_acp == acp

    table3 = presets.load("randtopk-table3").plan(scale="full")
    assert {p.seed for p in table3} == {0, 1, 2, 3, 4}
    levels = {(p.panel, p.label): p for p in table3 if p.seed == 0}
    assert levels[("high", "topk")].match_fraction == 0.0286
    assert levels[("low", "randtopk")].match_fraction == 0.1238
    assert ("high", "quant") not in levels and ("high", "l1") not in levels  # infeasible there
    assert levels[("medium", "quant")].config.scheme_params == {"bits": 2}
    assert levels[("low", "quant")].config.scheme_params == {"bits": 4}
    # vanilla: standard; high: both RandTopk samplings, top-k, size reduction;
    # medium and low: those and quantization, L1
    assert len(table3) == 5 * (1 + 4 + 6 + 6)


def test_plan_precedence_seeds_fraction_and_selection() -> None:
    preset = presets.load("acp-fig5")
    plans = preset.plan(
        scale="small",
        overrides={"rounds": 3, "dataset": "mnist", "data_dir": "/x"},
        seeds=[4, 5],
        panels=["fmnist-dir"],
        labels=["acp-l0"],
    )
    assert [p.key for p in plans] == ["fmnist-dir/acp-l0/seed4", "fmnist-dir/acp-l0/seed5"]
    assert plans[0].config.rounds == 3 and plans[0].config.data_dir == "/x"
    assert plans[0].config.subset == 3000  # small scale: 5% of MNIST's 60,000
    assert plans[0].config.scheme_params == {"scorer": "l0"}
    assert (
        preset.plan(scale="small", fraction=0.5, overrides={"dataset": "mnist"})[0].config.subset
        == 30000
    )
    with pytest.raises(ConfigError, match="no scale"):
        preset.plan(scale="huge")
    with pytest.raises(ConfigError, match="no panel"):
        preset.plan(panels=["nope"])
    with pytest.raises(ConfigError, match="unknown preset"):
        presets.load("acp-fig9")


BASE_TOML = """
title = "t"
paper = "p"
figure = "f"
[base]
dataset = "mnist"
[[panels]]
name = "a"
[[runs]]
label = "acp"
scheme = "acp"
"""


@pytest.mark.parametrize(
    "extra,message",
    [
        ('colour = "red"\n', "unknown keys"),
        ('[[runs]]\nlabel = "acp"\nscheme = "standard"\n', "duplicate run label"),
        ('[[runs]]\nlabel = "q"\nscheme = "quant"\nmatch = { to = "nope" }\n', "unknown 'nope'"),
        ('[[runs]]\nlabel = "q"\nscheme = "quant"\nmatch = { to = "panel" }\n', "sets no fraction"),
        ('[[runs]]\nlabel = "q"\nscheme = "quant"\nmatch = { fraction = 2.0 }\n', "match must"),
        (
            '[[runs]]\nlabel = "q"\nscheme = "quant"\nconfig = { lr_max = 1 }\n',
            "unknown configuration",
        ),
        ('[[panels]]\nname = "b"\nexclude = ["zzz"]\n', "unknown runs"),
        ('plots = ["pie"]\n', "unknown plots"),
    ],
)
def test_malformed_presets_are_config_errors(tmp_path: Path, extra: str, message: str) -> None:
    head, _, rest = BASE_TOML.partition("[base]")
    text = head + (extra if not extra.startswith("[") else "") + "[base]" + rest
    if extra.startswith("["):
        text += extra
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        presets.load(path)


def test_presets_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["presets"]) == 0
    listing = capsys.readouterr().out
    for name in PAPER_PRESETS:
        assert name in listing
    assert cli_main(["presets", "randtopk-table3"]) == 0
    detail = capsys.readouterr().out
    assert "scale full: 85 runs" in detail and "scale tiny: 17 runs" in detail


@pytest.fixture()
def one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fast tiny runs: one PyTorch thread (several times faster for tiny models on a shared
    CPU) and no fsync (half of a tiny run is its checkpoint; durability is tested in the
    engine's and compare's tests, not here)."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("name", sorted(PAPER_PRESETS))
def test_each_preset_runs_its_whole_tiny_grid(
    name: str, shared_data: Path, tmp_path: Path, one_thread: None
) -> None:
    """Every run of the preset's tiny grid (every scheme, ablation and panel) trains its one
    iteration through ``compare``, as ``acpsl compare --preset NAME --scale tiny`` would."""
    plans = presets.load(name).plan(scale="tiny", overrides={"data_dir": str(shared_data)})
    assert {p.label for p in plans} == {r.label for r in presets.load(name).runs}
    result = compare(plans, out_dir=tmp_path, workers=1, progress=False)
    assert result.failed == {}
    assert {k: v["status"] for k, v in result.results.items()} == {p.key: "done" for p in plans}
    for plan in plans:
        run = tmp_path / plan.key
        records = [json.loads(ln) for ln in (run / "records.jsonl").read_text().splitlines()]
        assert [r["round"] for r in records] == [1], plan.key
        assert records[0]["iteration"] == 1  # 16 samples, batch 16, 1 client: one iteration
        assert records[0]["bytes_up"] > 0 and records[0]["bytes_down"] > 0, plan.key
        assert (run / "summary.json").exists()
        meta = json.loads((run / "run.json").read_text())
        assert meta["label"] == plan.label and meta["scheme"] == plan.config.scheme
        written = TrainConfig.from_toml(run / "config.toml")
        assert written.scheme == plan.config.scheme
        if plan.match_fraction is not None or plan.match_acp is not None:
            assert set(written.scheme_params) & {"k", "bits"}, plan.key  # size resolved
    # a second compare skips every finished run
    again = compare(plans, out_dir=tmp_path, workers=1, progress=False)
    assert {v["status"] for v in again.results.values()} == {"skipped"}
    if name == "randtopk-fig5":  # RandTopk Fig. 5: top-k counts of the trained client model
        for plan in plans:
            run = tmp_path / plan.key
            written = TrainConfig.from_toml(run / "config.toml")
            counts = inference_topk_counts(run)
            assert counts is not None and len(counts) == 64  # ResNet-20's 64-d cut
            assert sum(counts) == written.scheme_params["k"] * 16  # k per training sample
        files = write_report(tmp_path, plots=["topk_hist"])
        assert set(files.plots) == {"topk_hist"}


def test_matched_sizes_hit_their_targets(shared_data: Path) -> None:
    """k chosen for a target gives an uplink within one value (and its index) of it."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 64, 7, 7, generator=gen)  # ResNet-18's cut on MNIST: 64 x 7 x 7
    labels = torch.arange(16) % 10
    base = TrainConfig(
        dataset="mnist",
        data_dir=str(shared_data),
        model="resnet18",
        cut=4,
        batch_size=16,
        scheme="topk",
    )
    step = 4 + 12 / 8  # one more float32 value and its 12-bit index (d = 3136)
    standard = len(schemes.create("standard").compress(x)) / 16
    for fraction in (0.0286, 0.1238, 0.3):
        k = resolve_match(base, fraction=fraction).scheme_params["k"]
        size = len(schemes.create("topk", k=k).compress(x)) / 16
        assert abs(size - fraction * standard) <= step, (fraction, k, size)

    acp = schemes.create("acp", ratio="fixed", p_base=0.7)
    acp.set_iteration(t=1, total=1)
    acp_size = len(acp.compress(x, labels=labels)) / 16
    cfg = resolve_match(
        base.replace(scheme="randtopk", scheme_params={"alpha": 0.1}), acp_params={"p_base": 0.7}
    )
    assert cfg.scheme_params["alpha"] == 0.1
    size = len(schemes.create("randtopk", **cfg.scheme_params).compress(x)) / 16
    assert abs(size - acp_size) <= step, (cfg.scheme_params, size, acp_size)
