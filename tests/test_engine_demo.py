"""``acpsl demo``: three real runs on the bundled digits, RandTopk matched to ACP-SL's size."""

from __future__ import annotations

import pytest

pytest.importorskip("sklearn", reason="the digits dataset needs scikit-learn (acpsl[digits])")

from acpsl.config import TrainConfig
from acpsl.engine.demo import DEMO_SETTINGS, demo_table, run_demo, smashed_shape


def test_demo_settings_are_the_paper_split_on_digits():
    config = TrainConfig(**DEMO_SETTINGS)
    assert (config.model, config.stem, config.cut, config.clients) == ("resnet18", "cifar", 4, 5)
    assert smashed_shape(config) == (64, 8, 8)


def test_demo_trains_three_schemes_at_matched_uplink(tmp_path):
    # The demo's logic with a small model, so the test stays fast; `acpsl demo` uses ResNet-18.
    rows = run_demo(
        rounds=1,
        out_dir=tmp_path,
        device="cpu",
        progress=False,
        log=None,
        overrides={"model": "smallcnn", "cut": 1, "subset": 320, "test_subset": 90},
    )
    assert [r.label for r in rows] == ["standard", "acp", "randtopk"]
    standard, acp, randtopk = rows
    assert set(randtopk.scheme_params) == {"k", "alpha"}
    # matched: RandTopk's real uplink per sample within 2% of ACP-SL's, both far below standard
    assert abs(randtopk.up_per_sample - acp.up_per_sample) / acp.up_per_sample < 0.02
    assert acp.up_per_sample < 0.5 * standard.up_per_sample
    assert standard.samples == 320
    for row in rows:
        assert 0.0 <= row.summary.final_acc <= 1.0
        assert (tmp_path / row.label / "records.jsonl").is_file()
    table = demo_table(rows)
    assert "randtopk" in table and "k=" in table and "100.0%" in table
