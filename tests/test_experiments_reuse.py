"""``acpsl compare --reuse DIR``: a finished run of another grid with the same training
configuration stands in for a planned run, and it is what training that run again gives."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from acpsl.config import TrainConfig
from acpsl.engine.records import read_records
from acpsl.errors import ConfigError
from acpsl.experiments.cli import main as cli_main
from acpsl.experiments.cli import plans_for_schemes
from acpsl.experiments.compare import compare
from acpsl.experiments.report import write_report
from acpsl.experiments.reuse import find_reusable, training_identity

BASE = {
    "dataset": "mnist",
    "model": "smallcnn",
    "cut": 1,
    "subset": 64,
    "test_subset": 16,
    "batch_size": 16,
    "clients": 2,
    "rounds": 2,
    "progress": False,
}
#: Record fields that measure the machine, not the run.
TIMING = ("round_s", "wall_s")


def _untimed(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def _grid(root: Path, schemes: list[str], data: Path, **kw: Any) -> dict[str, Any]:
    base = {**BASE, "data_dir": str(data), **kw.pop("base", {})}
    plans = plans_for_schemes(schemes, base=base, seeds=[0])
    return compare(plans, out_dir=root, progress=False, **kw).results


def test_reused_runs_equal_training_them_again(tmp_path: Path, shared_data: Path) -> None:
    first = _grid(tmp_path / "a", ["standard", "acp", "randtopk"], shared_data)
    assert {r["status"] for r in first.values()} == {"done"}

    # the same three (randtopk matched to acp's realised bytes) plus a new one, reusing "a"
    second = _grid(
        tmp_path / "b",
        ["standard", "acp", "randtopk", "acp:scorer=l0"],
        shared_data,
        reuse=[tmp_path / "a"],
        base={"target_acc": [0.3]},  # the report's targets may differ
    )
    status = {k: r["status"] for k, r in second.items()}
    assert status == {
        "mnist/standard/seed0": "reused",
        "mnist/acp/seed0": "reused",
        "mnist/randtopk/seed0": "reused",  # its matched k came out equal
        "mnist/acp-scorerl0/seed0": "done",
    }
    for label in ("standard", "acp", "randtopk"):
        src, dst = tmp_path / "a/mnist" / label / "seed0", tmp_path / "b/mnist" / label / "seed0"
        assert read_records(dst / "records.jsonl") == read_records(src / "records.jsonl")
        meta = json.loads((dst / "run.json").read_text())
        assert meta["reused_from"] == str(src.resolve())
        assert meta["label"] == label
        summary = json.loads((dst / "summary.json").read_text())
        assert [t["target"] for t in summary["targets"]] == [0.3]
        assert list(TrainConfig.from_toml(dst / "config.toml").target_acc) == [0.3]
        assert (dst / "checkpoint.pt").read_bytes() == (src / "checkpoint.pt").read_bytes()

    # the premise: training the same configuration again gives the same records
    third = _grid(tmp_path / "c", ["standard", "acp", "randtopk"], shared_data)
    assert {r["status"] for r in third.values()} == {"done"}
    for label in ("standard", "acp", "randtopk"):
        again = read_records(tmp_path / "c/mnist" / label / "seed0/records.jsonl")
        reused = read_records(tmp_path / "b/mnist" / label / "seed0/records.jsonl")
        assert _untimed(again) == _untimed(reused)

    # a rerun of "b" skips them all, and the report reads reused runs like any other
    rerun = _grid(tmp_path / "b", ["standard", "acp", "randtopk", "acp:scorer=l0"], shared_data)
    assert {r["status"] for r in rerun.values()} == {"skipped"}
    files = write_report(tmp_path / "b")
    assert "mnist" in files.table_md.read_text()


def test_a_different_training_option_is_not_reused(tmp_path: Path, shared_data: Path) -> None:
    _grid(tmp_path / "a", ["standard"], shared_data)
    other = _grid(
        tmp_path / "b", ["standard"], shared_data, reuse=[tmp_path / "a"], base={"lr": 0.02}
    )
    assert other["mnist/standard/seed0"]["status"] == "done"
    seed = _grid(tmp_path / "c", ["standard"], shared_data, reuse=[tmp_path / "a"])
    assert seed["mnist/standard/seed0"]["status"] == "reused"


def test_identity_ignores_only_what_does_not_change_training() -> None:
    cfg = TrainConfig(dataset="mnist", scheme="acp")
    same = cfg.replace(data_dir="/elsewhere", target_acc=[0.5], progress=False, loggers=["csv"])
    assert training_identity(same) == training_identity(cfg)
    for change in (
        {"seed": 1},
        {"lr": 0.2},
        {"scheme_params": {"p_base": 0.6}},
        {"device": "cpu"},
        {"augment": "crop-flip"},
    ):
        assert training_identity(cfg.replace(**change)) != training_identity(cfg), change


def test_unfinished_runs_are_not_reused_and_started_runs_are_not_replaced(
    tmp_path: Path, shared_data: Path
) -> None:
    _grid(tmp_path / "a", ["standard"], shared_data)
    src = tmp_path / "a/mnist/standard/seed0"
    config = TrainConfig.from_toml(src / "config.toml")
    assert find_reusable(config, [tmp_path / "a"]) == src
    # more rounds than the source has: not the same run
    assert find_reusable(config.replace(rounds=3), [tmp_path / "a"]) is None
    (src / "summary.json").unlink()  # an interrupted source
    assert find_reusable(config, [tmp_path / "a"]) is None
    with pytest.raises(ConfigError, match="not a directory"):
        find_reusable(config, [tmp_path / "missing"])


def test_a_started_run_resumes_rather_than_being_replaced(
    tmp_path: Path, shared_data: Path
) -> None:
    _grid(tmp_path / "a", ["standard"], shared_data)
    _grid(tmp_path / "b", ["standard"], shared_data, base={"rounds": 1})
    # b's run has one record; asking for 2 rounds resumes it (its records are its own)
    out = _grid(
        tmp_path / "b", ["standard"], shared_data, reuse=[tmp_path / "a"], base={"rounds": 2}
    )
    assert out["mnist/standard/seed0"]["status"] == "done"
    meta = json.loads((tmp_path / "b/mnist/standard/seed0/run.json").read_text())
    assert "reused_from" not in meta


def test_cli_reuse(tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "compare",
        "--schemes",
        "standard",
        "--dataset",
        "mnist",
        "--model",
        "smallcnn",
        "--cut",
        "1",
        "--subset",
        "32",
        "--test-subset",
        "16",
        "--batch-size",
        "16",
        "--clients",
        "1",
        "--rounds",
        "1",
        "--data-dir",
        str(shared_data),
        "--no-progress",
        "--no-report",
    ]
    assert cli_main([*args, "--out", str(tmp_path / "a")]) == 0
    assert cli_main([*args, "--out", str(tmp_path / "b"), "--reuse", str(tmp_path / "a")]) == 0
    assert "0 runs trained, 0 already finished, 1 reused from --reuse, 0 failed" in (
        capsys.readouterr().out
    )
    assert cli_main([*args, "--out", str(tmp_path / "c"), "--reuse", str(tmp_path / "x")]) == 2
    assert "--reuse" in capsys.readouterr().err


def test_scheme_defaults_count_as_given() -> None:
    cfg = TrainConfig(dataset="mnist", scheme="acp", scheme_params={"scorer": "lcis"})
    paper = cfg.replace(scheme_params={"p_min": 0.6, "p_base": 0.7, "p_max": 0.8})
    assert training_identity(cfg) == training_identity(paper)
    assert training_identity(cfg) != training_identity(cfg.replace(scheme_params={"seed": 3}))
    assert training_identity(cfg) != training_identity(cfg.replace(scheme_params={"scorer": "l0"}))


@pytest.mark.parametrize(
    ("preset", "key", "fig4_key"),
    [
        ("acp-fig5", "cifar10-dir/acp-lcis/seed1", "cifar10-dir/acp/seed1"),
        ("acp-fig6", "fmnist-dir/acp-adaptive/seed0", "fmnist-dir/acp/seed0"),
        ("acp-levels", "fmnist-dir/standard/seed1", "fmnist-dir/standard/seed1"),
        ("acp-levels", "fmnist-dir/acp-p70/seed0", "fmnist-dir/acp/seed0"),
    ],
)
def test_medium_presets_share_runs_with_acp_fig4(preset: str, key: str, fig4_key: str) -> None:
    """What ``--reuse runs/acp-fig4`` saves in the campaign (docs/experiments.md)."""
    from acpsl.experiments import presets

    plans = {p.key: p for p in presets.load(preset).plan(scale="medium")}
    fig4 = {p.key: p for p in presets.load("acp-fig4").plan(scale="medium")}
    assert training_identity(plans[key].config) == training_identity(fig4[fig4_key].config)
    others = [p for k, p in plans.items() if k != key and p.label != plans[key].label]
    assert all(
        training_identity(p.config) != training_identity(fig4[fig4_key].config) for p in others
    )
