"""The ``medium`` scale of the presets a 2-core CPU reproduces (docs/experiments.md).

Its settings (2 seeds, the swept learning rate shared by every scheme of a panel, cosine
schedule, the papers' datasets, CIFAR-10 for RandTopk's Table 3) and that it is wired end to
end: one iteration of the first runs of each preset's medium grid on the real datasets,
through ``compare``, with the sizes shrunk.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from acpsl.config import TrainConfig
from acpsl.experiments import presets
from acpsl.experiments.compare import compare

MEDIUM = ("acp-fig4", "acp-fig5", "acp-fig6", "randtopk-table3", "acp-levels")
#: The learning rate the sweep on standard SL chose for the ACP-SL presets (docs/experiments.md).
ACP_LR = 0.01
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny runs: one PyTorch thread (threads thrash on a busy 2-core runner)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", MEDIUM)
def test_medium_scale_settings(name: str) -> None:
    preset = presets.load(name)
    assert "medium" in preset.scale_names()
    plans = preset.plan(scale="medium")
    assert {p.seed for p in plans} == {0, 1}
    full = preset.plan(scale="full")
    assert len(plans) == 2 * len(full) // len(preset.seeds)  # every run, 2 seeds
    for plan in plans:
        cfg = plan.config
        assert cfg.lr_schedule == "cosine" and cfg.precision == "fp32"
        assert cfg.test_subset == 5000 and cfg.subset is not None
        if name == "randtopk-table3":  # ResNet-20 at 12%: 34 runs within the 75 minutes
            assert cfg.subset == 6000
        else:
            assert cfg.subset == {"cifar-10": 10000, "fashion-mnist": 12000}[cfg.dataset]
    if name == "randtopk-table3":
        assert {p.config.dataset for p in plans} == {"cifar-10"}
        assert all(p.panel_title.endswith("[run on cifar-10]") for p in plans)
        assert {p.config.augment for p in plans} == {"crop-flip"}
        assert {p.config.lr for p in plans} == {0.05}
    else:
        datasets = {"fashion-mnist"} if name == "acp-levels" else {"cifar-10", "fashion-mnist"}
        assert {p.config.dataset for p in plans} == datasets
        assert {p.config.augment for p in plans} == {"none"}
        assert {p.config.lr for p in plans} == {ACP_LR}  # one lr for every scheme and panel
    # full keeps the papers' printed values
    if name.startswith("acp"):
        assert {p.config.lr for p in full} == {0.00015}
        assert {p.config.lr_schedule for p in full} == {"constant"}


@pytest.mark.parametrize("name", MEDIUM)
def test_medium_scale_runs_on_the_real_datasets(name: str, tmp_path: Path, one_thread) -> None:
    preset = presets.load(name)
    datasets = {p.config.dataset for p in preset.plan(scale="medium")}
    missing = [d for d in datasets if not (SHARED_DATA / d).is_dir()]
    if missing:
        pytest.skip(f"real datasets {missing} not found in {SHARED_DATA}")
    shrink = {
        "data_dir": str(SHARED_DATA),
        "subset": 16,
        "test_subset": 16,
        "batch_size": 16,
        "clients": 1,
        "rounds": 1,
        "progress": False,
    }
    labels = [r.label for r in preset.runs][:2]
    # a run matched to ACP-SL's realised bytes needs its reference run in the grid too
    labels += [
        str(r.match["to"])
        for r in preset.runs
        if r.label in labels and r.match and r.match.get("to") not in (None, "panel")
    ]
    plans = preset.plan(scale="medium", overrides=shrink, seeds=[1], labels=labels)
    plans = [p for p in plans if p.panel == plans[0].panel]
    result = compare(plans, out_dir=tmp_path, workers=1, progress=False)
    assert result.failed == {}
    for plan in plans:
        run = tmp_path / plan.key
        records = [json.loads(ln) for ln in (run / "records.jsonl").read_text().splitlines()]
        assert [r["round"] for r in records] == [1] and records[0]["iteration"] == 1
        written = TrainConfig.from_toml(run / "config.toml")
        assert written.lr_schedule == "cosine" and written.seed == 1
        assert written.dataset == plan.config.dataset != "mnist"
