"""ACP-SL through the engine on real MNIST: the paper's ResNet-18 split, 5 clients, IID and
Dirichlet(0.5). It learns, and its uplink is ``(1 − mean pruning ratio)`` of standard SL's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from acpsl.config import TrainConfig
from acpsl.cut.payload import header_size
from acpsl.engine import train

pytestmark = pytest.mark.slow

SUBSET = 1280  # 256 samples per client, 4 batches of 64 each round when IID
BATCH = 64
# ResNet-18 (ImageNet stem) on 28x28: client output [B, 64, 7, 7]
CHANNELS, MAP = 64, 7 * 7
HEADER = header_size(4)  # 23 bytes


def run(tmp_path: Path, data: Path, partition: str, *, scheme: str = "acp", rounds: int = 2):
    config = TrainConfig(
        scheme=scheme,
        dataset="mnist",
        data_dir=str(data),
        subset=SUBSET,
        test_subset=500,
        model="resnet18",
        cut=4,
        stem="imagenet",
        clients=5,
        rounds=rounds,
        batch_size=BATCH,
        lr=0.01,
        partition=partition,
        beta=0.5,
        seed=0,
        device="cpu",
        progress=False,
    )
    out = tmp_path / f"{scheme}-{partition}"
    train(config, out_dir=out, log=None)
    return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def standard_up(tmp_path_factory, shared_data):
    """Standard SL's real uplink bytes per round, per partition, of the same configuration.

    One round suffices: a round's batches (hence its bytes) are the same in every round,
    only their order changes. Computed once per partition and shared.
    """
    cache: dict[str, int] = {}

    def get(partition: str) -> int:
        if partition not in cache:
            out = tmp_path_factory.mktemp("standard")
            (record,) = run(out, shared_data, partition, scheme="standard", rounds=1)
            cache[partition] = int(record["bytes_up"])
        return cache[partition]

    return get


@pytest.mark.parametrize(("partition", "min_acc"), [("iid", 0.4), ("dirichlet", 0.25)])
def test_acp_learns_and_sends_the_kept_fraction(
    tmp_path, shared_data, standard_up, partition, min_acc
):
    records = run(tmp_path, shared_data, partition)
    standard = standard_up(partition)
    # standard SL sends every value of every sample: 4 bytes x 64 x 7 x 7 per sample, plus
    # a header per iteration (its real length is measured, this is only a sanity check)
    assert standard == records[0]["iteration"] * HEADER + 4 * CHANNELS * MAP * SUBSET
    assert [r["round"] for r in records] == [1, 2]
    first, last = records
    # it learns: far above chance (10%) and the training loss falls
    assert last["test_acc"] >= min_acc
    assert last["train_loss"] < first["train_loss"]
    previous_iteration = 0
    for r in records:
        iterations = r["iteration"] - previous_iteration
        previous_iteration = r["iteration"]
        # P_t stays in the paper's bounds; the channels sent are rounded to whole channels
        assert 0.6 <= r["ratio_min"] <= r["ratio_mean"] <= r["ratio_max"] <= 0.8
        assert 13 / 64 <= r["kept_frac_min"] <= r["kept_frac_mean"] <= r["kept_frac_max"] <= 26 / 64
        # one pruning ratio per iteration of the round, whose mean is ratio_mean
        assert isinstance(r["ratios"], list) and len(r["ratios"]) == iterations
        assert sum(r["ratios"]) / iterations == pytest.approx(r["ratio_mean"], abs=1e-12)
        assert min(r["ratios"]) == r["ratio_min"] and max(r["ratios"]) == r["ratio_max"]
        assert r["gen_error"] == pytest.approx(r["train_acc"] - r["test_acc"], abs=1e-12)
        # ACP-SL's uplink is the kept fraction of standard SL's real bytes, same batches
        assert r["bytes_up"] / standard == pytest.approx(r["kept_frac_mean"], rel=0.01)
        # real bytes = the paper's size + per iteration the header and the mask's byte rounding
        overhead = HEADER + math.ceil(CHANNELS / 8) - CHANNELS / 8
        assert r["bytes_up"] == pytest.approx(r["table2_bytes_up"] + iterations * overhead)
        assert len(r["kept_counts"]) == CHANNELS
    if partition == "iid":  # every batch has 64 samples: the cumulative bytes are exact
        kept_channel_iterations = sum(last["kept_counts"])
        per_iteration = HEADER + math.ceil(CHANNELS / 8)
        expected = last["iteration"] * per_iteration + 4 * BATCH * MAP * kept_channel_iterations
        assert last["bytes_up_total"] == expected
