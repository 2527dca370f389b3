"""``acpsl diagnose``: each instrument against a plain reference computation, and on real
runs (the restored checkpoint reproduces the recorded accuracy)."""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path

import pytest
import torch

from acpsl import schemes
from acpsl.analysis.diagnose import (
    diagnose_run,
    jaccard,
    kept_concentration,
    random_jaccard,
    ranking_stability,
    ratio_trace_stats,
)
from acpsl.errors import CheckpointError
from acpsl.experiments.cli import main as cli_main
from acpsl.experiments.cli import plans_for_schemes
from acpsl.experiments.compare import compare


def test_ratio_trace_stats_equal_plain_loops() -> None:
    rng = random.Random(0)
    records = []
    for _ in range(3):
        ratios = [rng.choice([0.6, 0.8, rng.uniform(0.6, 0.8)]) for _ in range(7)]
        records.append({"ratios": ratios})
    trace = [v for r in records for v in r["ratios"]]
    mean = sum(trace) / len(trace)
    std = math.sqrt(sum((v - mean) ** 2 for v in trace) / len(trace))
    step = sum(abs(trace[i + 1] - trace[i]) for i in range(len(trace) - 1)) / (len(trace) - 1)
    pinned = sum(1 for v in trace if v in (0.6, 0.8)) / len(trace)
    got = ratio_trace_stats(records, p_min=0.6, p_max=0.8)
    assert got is not None
    assert got["iterations"] == len(trace)
    assert got["mean"] == pytest.approx(mean, abs=1e-12)
    assert got["std"] == pytest.approx(std, abs=1e-12)
    assert got["mean_abs_step"] == pytest.approx(step, abs=1e-12)
    assert got["at_bounds"] == pytest.approx(pinned, abs=1e-12)
    assert ratio_trace_stats([{"test_acc": 0.5}], p_min=0.6, p_max=0.8) is None


def test_kept_concentration() -> None:
    # 8 channels, 2 never kept; the top quarter (2 channels) holds 10 + 6 of 24 keeps
    counts = [10, 6, 3, 2, 2, 1, 0, 0]
    got = kept_concentration(counts)
    assert got["channels"] == 8 and got["never"] == 2
    assert got["top_quarter_share"] == pytest.approx(16 / 24)
    p = [c / 24 for c in counts if c]
    assert got["effective"] == pytest.approx(math.exp(-sum(q * math.log(q) for q in p)))
    # uniform keeps: every channel counts; the same k always: k channels
    assert kept_concentration([5] * 16)["effective"] == pytest.approx(16)
    assert kept_concentration([9] * 4 + [0] * 12)["effective"] == pytest.approx(4)


@pytest.mark.parametrize(("keep", "channels"), [(1, 1), (1, 5), (3, 6), (4, 7), (5, 6)])
def test_random_jaccard_equals_enumeration(keep: int, channels: int) -> None:
    subsets = list(itertools.combinations(range(channels), keep))
    exact = sum(jaccard(a, b) for a in subsets for b in subsets) / len(subsets) ** 2
    assert random_jaccard(keep, channels) == pytest.approx(exact, abs=1e-12)
    assert jaccard([], []) == 1.0
    assert jaccard(torch.tensor([0, 1, 2]), [2, 3]) == pytest.approx(1 / 4)


def test_ranking_stability_against_a_plain_recomputation() -> None:
    """A trained ACP-SL scheme: each batch's LCIS kept set (eq. 6 ranking at the scheme's
    latest P_t), their overlaps, and the scheme left as it was."""
    from acpsl import lcis
    from acpsl.acp import keep_indices, prune_count

    gen = torch.Generator().manual_seed(0)
    scheme = schemes.create("acp")
    scheme.total_iterations = 10
    batches = []
    for t in range(6):
        y = torch.randint(0, 4, (32,), generator=gen)
        # channels 0-3 carry the label, the rest is noise
        x = torch.randn(32, 16, 3, 3, generator=gen)
        x[:, :4] += y.view(-1, 1, 1, 1).float() * torch.arange(1, 5).view(1, 4, 1, 1)
        batches.append((x, y))
        scheme.iteration = t
        scheme.compress(x, labels=y)
    before = (scheme.policy.latest, scheme.history.mean.clone())
    got = ranking_stability(scheme, batches)
    assert (scheme.policy.latest, scheme.history.mean.tolist()) == (
        before[0],
        before[1].tolist(),
    )
    assert got is not None
    keep = 16 - prune_count(ratio=scheme.policy.latest, channels=16)
    sets = [
        set(keep_indices(lcis.lcis_scores(x, y).instantaneous, keep=keep).tolist())
        for x, y in batches
    ]
    inference = set(keep_indices(scheme.history.mean, keep=keep).tolist())
    cons = [len(a & b) / len(a | b) for a, b in itertools.pairwise(sets)]
    assert got["keep"] == keep and got["batches"] == 6
    assert got["consecutive"] == pytest.approx(sum(cons) / len(cons))
    vs = [len(a & inference) / len(a | inference) for a in sets]
    assert got["vs_inference"] == pytest.approx(sum(vs) / len(vs))
    assert got["random"] == pytest.approx(random_jaccard(keep, 16))
    seps = [lcis.lcis_scores(x, y).separation for x, y in batches]
    share = [
        sum(float(sep[i]) for i in kept) / float(sep.sort(descending=True).values[:keep].sum())
        for sep, kept in zip(seps, sets)
    ]
    assert got["separation_kept"] == pytest.approx(sum(share) / len(share))
    share_inf = [
        sum(float(sep[i]) for i in inference) / float(sep.sort(descending=True).values[:keep].sum())
        for sep in seps
    ]
    assert got["separation_kept_inference"] == pytest.approx(sum(share_inf) / len(share_inf))
    assert 0 < got["separation_kept"] <= 1 + 1e-12
    assert ranking_stability(schemes.create("standard"), batches) is None


BASE = {
    "dataset": "mnist",
    "model": "smallcnn",
    "cut": 1,
    "subset": 96,
    "test_subset": 64,
    "batch_size": 16,
    "clients": 2,
    "rounds": 2,
    "progress": False,
}


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    root = tmp_path_factory.mktemp("diag")
    plans = plans_for_schemes(
        ["standard", "acp", "quant:bits=4"],
        base={**BASE, "data_dir": str(shared_data)},
        seeds=[0],
    )
    results = compare(plans, out_dir=root, progress=False).results
    assert {r["status"] for r in results.values()} == {"done"}
    return root


def test_diagnose_real_runs(grid: Path) -> None:
    acp = diagnose_run(grid / "mnist/acp/seed0", batches=3)
    records = [json.loads(line) for line in (grid / "mnist/acp/seed0/records.jsonl").open()]
    # the restored checkpoint gives exactly the last round's recorded test accuracy
    assert acp["test_acc_compressed"] == records[-1]["test_acc"] == acp["test_acc_recorded"]
    assert 0.0 <= acp["test_acc_uncompressed"] <= 1.0
    assert acp["ratio_trace"]["iterations"] == sum(len(r["ratios"]) for r in records)
    assert acp["kept"]["channels"] == 32  # smallcnn's first conv block
    assert acp["stability"]["batches"] >= 1 and 0 < acp["stability"]["keep"] < 32

    standard = diagnose_run(grid / "mnist/standard/seed0", batches=2)
    assert standard["test_acc_compressed"] == standard["test_acc_uncompressed"]
    assert standard["test_acc_compressed"] == standard["test_acc_recorded"]
    assert "ratio_trace" not in standard and standard["stability"] is None
    quant = diagnose_run(grid / "mnist/quant-bits4/seed0", batches=2)
    assert quant["test_acc_compressed"] == quant["test_acc_recorded"]

    light = diagnose_run(grid / "mnist/acp/seed0", evaluate=False)
    assert "test_acc_compressed" not in light and light["kept"] == acp["kept"]


def test_diagnose_cli(grid: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "d.json"
    assert (
        cli_main(["diagnose", str(grid), "--scheme", "acp", "--batches", "2", "--json", str(out)])
        == 0
    )
    text = capsys.readouterr().out
    assert "| run | test acc (%) |" in text and "acp/seed0" in text and "standard" not in text
    rows = json.loads(out.read_text())
    assert [r["scheme"] for r in rows] == ["acp"]
    assert cli_main(["diagnose", str(grid), "--no-eval"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2 + 3  # header + 3 runs
    assert cli_main(["diagnose", str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_diagnose_needs_the_checkpoint(grid: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copied"
    shutil.copytree(grid / "mnist/acp/seed0", copy)
    (copy / "checkpoint.pt").unlink()
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt is missing"):
        diagnose_run(copy)
    assert diagnose_run(copy, evaluate=False)["kept"]["channels"] == 32
