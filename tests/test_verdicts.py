"""Verdicts on a paper's claims: holds / does not hold / undecided against the seed spread."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from acpsl.errors import ConfigError
from acpsl.experiments import presets
from acpsl.experiments.report import build_rows
from acpsl.experiments.runs import RunData
from acpsl.experiments.verdicts import (
    FAILS,
    HOLDS,
    UNDECIDED,
    claim_dict,
    judge,
    parse_claims,
    verdict_table,
)

LABELS = ["standard", "acp", "quant"]


def _run(label: str, seed: int, accs: list[float], *, panel: str = "p") -> RunData:
    records: list[dict[str, Any]] = []
    for i, acc in enumerate(accs, start=1):
        records.append(
            {
                "round": i,
                "test_acc": acc,
                "bytes_up": 1000,
                "bytes_up_total": 1000 * i,
                "bytes_down_total": 500 * i,
                "bytes_labels_total": 0,
                "bytes_model_total": 0,
            }
        )
    return RunData(
        path=Path(f"/grid/{panel}/{label}/seed{seed}"),
        panel=panel,
        panel_title=panel.upper(),
        label=label,
        scheme=label,
        seed=seed,
        config={"rounds": len(accs)},
        records=records,
    )


def _rows(finals: dict[str, list[float]], *, panel: str = "p") -> list[Any]:
    runs = [
        _run(label, seed, [0.1, acc], panel=panel)
        for label, accs in finals.items()
        for seed, acc in enumerate(accs)
    ]
    return build_rows(runs, targets=())


def _claim(**kw: Any) -> Any:
    entry = {"text": "acp wins", "label": "acp", "than": ["quant"], **kw}
    return parse_claims([entry], preset="t", labels=LABELS)[0]


@pytest.mark.parametrize(
    ("acp", "quant", "verdict"),
    [
        ([0.80, 0.82], [0.70, 0.71], HOLDS),  # gap 0.105 > spread 0.02
        ([0.80, 0.84], [0.79, 0.83], UNDECIDED),  # gap 0.01 < spread 0.04
        ([0.70, 0.71], [0.80, 0.82], FAILS),  # the opposite, by more than the spread
        ([0.80, 0.80], [0.80, 0.80], UNDECIDED),  # a tie is not a win
    ],
)
def test_beats_is_judged_against_the_seed_spread(
    acp: list[float], quant: list[float], verdict: str
) -> None:
    (v,) = judge(_claim(), _rows({"acp": acp, "quant": quant}))
    assert v.verdict == verdict
    assert v.panel_title == "P"
    assert v.ours.startswith(f"ACP-SL: {100 * sum(acp) / 2:.2f} ± ")


def test_one_seed_is_always_undecided() -> None:
    (v,) = judge(_claim(), _rows({"acp": [0.9], "quant": [0.1]}))
    assert (v.verdict, v.detail) == (UNDECIDED, "one seed: no spread to judge by")


def test_best_needs_to_beat_every_other_run_and_fails_on_any_loss() -> None:
    claim = _claim(kind="best", than=[])
    rows = _rows({"standard": [0.90, 0.91], "acp": [0.80, 0.81], "quant": [0.70, 0.71]})
    (v,) = judge(claim, rows)
    assert v.verdict == FAILS  # standard beats it
    assert "Standard SL: 90.50 ± 0.71% [does not hold]" in v.ours
    assert "Quantization: 70.50 ± 0.71% [holds]" in v.ours
    rows = _rows({"standard": [0.60, 0.61], "acp": [0.80, 0.81], "quant": [0.79, 0.82]})
    assert judge(claim, rows)[0].verdict == UNDECIDED  # beats standard, level with quant
    rows = _rows({"standard": [0.60, 0.61], "acp": [0.80, 0.81], "quant": [0.70, 0.71]})
    assert judge(claim, rows)[0].verdict == HOLDS


def test_rounds_to_target_counts_seeds_that_never_reach_it_as_later() -> None:
    runs = [
        _run("acp", 0, [0.5, 0.66, 0.7]),
        _run("acp", 1, [0.66, 0.7, 0.7]),
        _run("quant", 0, [0.5, 0.6, 0.6]),  # never: counts as round 4
        _run("quant", 1, [0.5, 0.6, 0.65]),
    ]
    rows = build_rows(runs, targets=(0.65,))
    (v,) = judge(_claim(metric="rounds_to", target=0.65), rows)
    # acp 2, 1 (mean 1.5, range 1); quant 4, 3 (mean 3.5, range 1): gap 2 > 1
    assert v.verdict == HOLDS
    assert "ACP-SL: 1.5 ± 0.7 rounds (2/2 reached 65%)" in v.ours
    assert "Quantization: 3.5 ± 0.7 rounds (1/2 reached 65%)" in v.ours
    (b,) = judge(_claim(metric="cut_bytes_to", target=0.65), rows)
    # acp 3000, 1500 B; quant 6000 (4500 + 1500 past the end), 4500 B: gap 3000 > 1500
    assert b.verdict == HOLDS


def test_claims_cover_their_panels_and_render_as_a_table() -> None:
    rows = _rows({"acp": [0.8, 0.81], "quant": [0.7, 0.71]}, panel="a") + _rows(
        {"acp": [0.7, 0.71], "quant": [0.8, 0.81]}, panel="b"
    )
    both = _claim(paper="+5 points")
    only_b = _claim(panels=["b"])
    table = verdict_table([both, only_b], rows)
    assert [(v.panel, v.verdict) for v in table.verdicts] == [
        ("a", HOLDS),
        ("b", FAILS),
        ("b", FAILS),
    ]
    md = table.markdown().splitlines()
    assert md[0] == "| claim | panel | verdict | ours (mean ± std over seeds) | paper |"
    assert md[2].startswith(
        "| acp wins | A | **holds** | ACP-SL: 80.50 ± 0.71%; Quantization: 70.50"
    )
    assert md[2].endswith("| +5 points |")
    assert table.rows()[1]["verdict"] == FAILS


def test_claims_are_validated_and_round_trip() -> None:
    with pytest.raises(ConfigError, match="names unknown runs nope"):
        parse_claims([{"text": "x", "label": "nope", "than": ["acp"]}], preset="t", labels=LABELS)
    with pytest.raises(ConfigError, match="needs a target"):
        parse_claims(
            [{"text": "x", "label": "acp", "than": ["quant"], "metric": "rounds_to"}],
            preset="t",
            labels=LABELS,
        )
    with pytest.raises(ConfigError, match="needs than"):
        parse_claims([{"text": "x", "label": "acp"}], preset="t", labels=LABELS)
    with pytest.raises(ConfigError, match="kind 'most'"):
        parse_claims([{"text": "x", "label": "acp", "kind": "most"}], preset="t", labels=LABELS)
    claim = _claim(metric="rounds_to", target=0.5, panels=["a"], paper="p")
    assert parse_claims([claim_dict(claim)], preset="t", labels=LABELS) == (claim,)


def test_shipped_presets_state_the_papers_claims() -> None:
    fig4 = presets.load("acp-fig4")
    assert fig4.claims[0].kind == "best" and fig4.claims[0].label == "acp"
    rounds = [c for c in fig4.claims if c.metric == "rounds_to"]
    assert [(c.panels, c.target) for c in rounds] == [
        (("cifar10-dir",), 0.65),
        (("fmnist-iid",), 0.91),
        (("fmnist-dir",), 0.75),
    ]
    for name in ("acp-fig5", "acp-fig6", "randtopk-table3"):
        assert presets.load(name).claims, name
    assert fig4.to_summary()["claims"][1]["paper"] == "75.88% vs about 70.77% (+5.11)"


def _write_run(root: Path, panel: str, label: str, seed: int, accs: list[float]) -> None:
    """A run directory as the engine leaves it: records, run.json, partition.json."""
    import json

    run = root / panel / label / f"seed{seed}"
    run.mkdir(parents=True)
    lines = []
    for i, acc in enumerate(accs, start=1):
        rec = {
            "round": i,
            "iteration": 10 * i,
            "train_loss": 1.0 / i,
            "test_acc": acc,
            "bytes_up": 4000,
            "bytes_down": 2000,
            "bytes_up_total": 4000 * i,
            "bytes_down_total": 2000 * i,
            "bytes_labels_total": 0,
            "bytes_model_total": 0,
            "wall_s": float(i),
        }
        lines.append(json.dumps(rec) + "\n")
    (run / "records.jsonl").write_text("".join(lines))
    meta = {"panel": panel, "label": label, "seed": seed, "scheme": label.split("-")[0]}
    (run / "run.json").write_text(json.dumps(meta))
    (run / "config.toml").write_text(f"rounds = {len(accs)}\nseed = {seed}\n")
    (run / "partition.json").write_text(json.dumps({"sizes": [60, 40]}))


def test_report_judges_the_grids_claims_from_its_records(tmp_path: Path) -> None:
    """``acpsl report`` reads the claims compare.json keeps, judges them on the records, and
    writes verdicts.md / verdicts.csv, a "Verdicts" section, per-sample bytes and a pareto plot."""
    import json

    from acpsl.experiments.report import write_report

    finals = {"acp": [0.80, 0.82], "quant": [0.70, 0.71], "standard": [0.85, 0.86]}
    for label, accs in finals.items():
        for seed, acc in enumerate(accs):
            _write_run(tmp_path, "p", label, seed, [0.3, acc])
    claims = [
        {"text": "ACP-SL beats quantization", "label": "acp", "than": ["quant"], "paper": "+5"},
        {"text": "ACP-SL is the best", "kind": "best", "label": "acp"},
    ]
    grid = {"preset": {"name": "g", "runs": list(finals), "claims": claims}, "runs": []}
    (tmp_path / "compare.json").write_text(json.dumps(grid))
    files = write_report(tmp_path, plots=["pareto"])
    assert files.verdicts_md is not None and files.verdicts_csv is not None
    lines = files.verdicts_md.read_text().splitlines()
    assert lines[2].startswith("| ACP-SL beats quantization | p | **holds** | ACP-SL: 81.00 ± ")
    assert lines[2].endswith("| +5 |")
    assert lines[3].startswith("| ACP-SL is the best | p | **does not hold** |")
    assert "## Verdicts on the paper's claims" in files.report_md.read_text()
    # per-sample bytes: 2 rounds x 100 samples sent 8000 B up, 4000 B down
    table = files.table_md.read_text()
    assert "| uplink B/sample | downlink B/sample |" in table
    assert "| 40 ± 0 | 20 ± 0 |" in table
    assert set(files.plots) == {"pareto"} and files.plots["pareto"].stat().st_size > 10_000
    # without claims there is no verdict file
    (tmp_path / "compare.json").write_text(json.dumps({"preset": {"name": "g"}, "runs": []}))
    assert write_report(tmp_path, plots=[]).verdicts_md is None
    assert not (files.out_dir / "verdicts.md").exists()
