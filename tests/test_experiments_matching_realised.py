"""Matched compression to ACP-SL's *realised* uplink bytes (SPEC section 8): the reference
run goes first, the baselines read its records, and a grid that cannot honour that fails
before training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from acpsl.errors import ConfigError
from acpsl.experiments import presets
from acpsl.experiments.cli import plans_for_schemes
from acpsl.experiments.compare import compare, dependency_order
from acpsl.experiments.matching import cut_shape
from acpsl.experiments.runs import training_samples, uplink_bytes_per_sample
from acpsl.schemes.matching import match_params

BASE = {
    "dataset": "mnist",
    "model": "smallcnn",
    "cut": 1,
    "subset": 80,
    "test_subset": 16,
    "batch_size": 16,
    "clients": 2,
    "rounds": 2,
    "progress": False,
}


def test_plans_name_the_reference_run_of_the_same_seed() -> None:
    plans = plans_for_schemes(
        ["randtopk", "standard", "acp:p_base=0.75", "topk:k=5"],
        base={"dataset": "mnist"},
        seeds=[0, 1],
    )
    refs = {p.key: p.match_run for p in plans}
    assert refs["mnist/randtopk/seed0"] == "mnist/acp-p_base0.75/seed0"
    assert refs["mnist/randtopk/seed1"] == "mnist/acp-p_base0.75/seed1"
    assert refs["mnist/topk-k5/seed0"] is None  # its k was given
    assert refs["mnist/standard/seed0"] is None
    ordered = [p.key for p in dependency_order(plans)]
    assert ordered[:2] == ["mnist/acp-p_base0.75/seed0", "mnist/acp-p_base0.75/seed1"]
    assert ordered[2:] == [k for k in refs if not k.startswith("mnist/acp")]  # order kept


def test_presets_match_realised_bytes_unless_asked_for_p_base() -> None:
    fig4 = presets.load("acp-fig4").plan(scale="small", seeds=[0, 3])
    quant = {p.key: p for p in fig4 if p.label == "quant"}
    assert quant["cifar10-dir/quant/seed3"].match_run == "cifar10-dir/acp/seed3"
    assert quant["cifar10-dir/quant/seed3"].match_acp == {"p_min": 0.6, "p_base": 0.7, "p_max": 0.8}
    data = {
        "title": "t",
        "paper": "p",
        "figure": "f",
        "panels": [{"name": "a"}],
        "runs": [
            {"label": "acp", "scheme": "acp"},
            {"label": "topk", "scheme": "topk", "match": {"to": "acp", "at": "p_base"}},
        ],
    }
    nominal = presets.parse(data, name="x").plan()
    assert [(p.label, p.match_run, p.match_acp) for p in nominal] == [
        ("acp", None, None),
        ("topk", None, {}),
    ]
    data["runs"][1]["match"] = {"to": "acp", "at": "p_max"}
    with pytest.raises(ConfigError, match='at = "p_base"'):
        presets.parse(data, name="x")


def test_baselines_match_the_realised_bytes_of_their_seed(
    tmp_path: Path, shared_data: Path
) -> None:
    """Two workers, baseline listed first: it still waits for ACP-SL, then takes the k whose
    payload is closest to ACP-SL's measured bytes per sample of the same seed."""
    base = {**BASE, "data_dir": str(shared_data)}
    plans = plans_for_schemes(["randtopk", "acp"], base=base, seeds=[0])
    result = compare(plans, out_dir=tmp_path, workers=2, progress=False)
    assert {k: v["status"] for k, v in result.results.items()} == {
        "mnist/acp/seed0": "done",
        "mnist/randtopk/seed0": "done",
    }
    acp, rtk = tmp_path / "mnist/acp/seed0", tmp_path / "mnist/randtopk/seed0"
    records = [json.loads(line) for line in (acp / "records.jsonl").read_text().splitlines()]
    samples = training_samples(acp) * len(records)
    assert samples == 80 * 2
    realised = uplink_bytes_per_sample(acp)
    assert realised == records[-1]["bytes_up_total"] / samples
    meta = json.loads((rtk / "run.json").read_text())
    assert meta["match_run"] == "mnist/acp/seed0"
    assert meta["match_bytes_per_sample"] == realised
    shape, _ = cut_shape(plans[0].config)
    expected = match_params(
        "randtopk", target_bytes_per_sample=realised, sample_shape=shape, batch_size=16
    )
    assert meta["scheme_params"] == expected
    # it started only once the reference had finished
    assert (rtk / "run.json").stat().st_mtime >= (acp / "summary.json").stat().st_mtime
    # a rerun skips both and keeps the match
    again = compare(plans, out_dir=tmp_path, workers=2, progress=False)
    assert {v["status"] for v in again.results.values()} == {"skipped"}


def test_a_reference_that_is_missing_or_failed_stops_its_baselines(
    tmp_path: Path, shared_data: Path
) -> None:
    base = {**BASE, "data_dir": str(shared_data)}
    plans = plans_for_schemes(["acp", "quant"], base=base, seeds=[0])
    only_quant = [p for p in plans if p.label == "quant"]
    with pytest.raises(ConfigError, match="mnist/acp/seed0, which is not in this grid"):
        compare(only_quant, out_dir=tmp_path / "a", workers=1, progress=False)
    assert not (tmp_path / "a" / "mnist").exists()
    # the reference fails (a cut the model does not have): the baseline is not trained
    broken = [
        p.__class__.from_dict({**p.to_dict(), "config": {**p.to_dict()["config"], "cut": 9}})
        if p.label == "acp"
        else p
        for p in plans
    ]
    result = compare(broken, out_dir=tmp_path / "b", workers=1, progress=False)
    assert result.results["mnist/acp/seed0"]["status"] == "failed"
    assert (
        result.failed["mnist/quant/seed0"]
        == "not run: it is matched to mnist/acp/seed0, which failed"
    )


def test_the_grid_file_and_report_keep_the_preset_order(tmp_path: Path, shared_data: Path) -> None:
    """ACP-SL trains first (its realised bytes are the baselines' target), but compare.json
    and the report list the runs as the user gave them, not in training order."""
    import json

    from acpsl.experiments.report import write_report

    base = {**BASE, "data_dir": str(shared_data), "rounds": 1, "subset": 32}
    plans = plans_for_schemes(["standard", "randtopk", "acp"], base=base, seeds=[0])
    compare(plans, out_dir=tmp_path, progress=False)
    grid = json.loads((tmp_path / "compare.json").read_text())
    assert [r["label"] for r in grid["runs"]] == ["standard", "randtopk", "acp"]
    files = write_report(tmp_path)
    table = files.table_md.read_text().splitlines()[2:]
    assert [line.split(" | ")[1] for line in table] == ["Standard SL", "RandTopk", "ACP-SL"]
