"""A real-data run: 5 clients on MNIST with the ACP-SL paper's split of ResNet-18.

ResNet-18 as torchvision defines it (ImageNet stem, greyscale input), cut after its first 4
children (conv1, bn1, relu, maxpool: 64 channels of 7 x 7 cross the cut), standard SL
through the engine's real byte cut, 5 clients trained one after the other on IID shares of
the first SUBSET training images, evaluated on the first TEST_SUBSET test images.
"""

from __future__ import annotations

import json
import time

import pytest

from acpsl.config import TrainConfig
from acpsl.cut.payload import header_size
from acpsl.engine import train
from acpsl.engine.loop import RECORDS

pytestmark = pytest.mark.slow

SUBSET, TEST_SUBSET, BATCH, ROUNDS, LR = 30000, 2000, 64, 1, 3e-4
#: Measured: test accuracy 0.968 after the one round, in 84 s wall time (seed 0, torch 2.13
#: CPU, 2 cores that other jobs were also using, load about 1.5). The threshold sits 1.8
#: points below. How the setting was chosen (same model, seed 0, IID, batch 64, test 2,000):
#: Adam 1e-3 plateaus at 91-94% in short runs (6,000 x 1/2/3 rounds: 0.913/0.936/0.941;
#: 12,000 x 1/2 rounds: 0.940/0.912; batch 32 or 128 are worse), and Adam 3e-4 gives 0.950
#: at 12,000 and at 20,000 samples: too close to 95% to be a stable test. The same
#: ResNet-18 trained unsplit, without the engine (Adam 3e-4, another shuffle), is no better:
#: 0.936-0.944 after 12,000 samples, 0.955-0.970 after 16,000-28,000; so this is the model
#: and data, not the split. One pass over 30,000 samples is the shortest setting measured
#: with a margin.
MIN_ACC = 0.95


def test_standard_sl_on_mnist_with_the_paper_split_reaches_95_percent(shared_data, tmp_path):
    config = TrainConfig(
        scheme="standard",
        dataset="mnist",
        data_dir=str(shared_data),
        subset=SUBSET,
        test_subset=TEST_SUBSET,
        model="resnet18",
        cut=4,
        stem="imagenet",
        clients=5,
        partition="iid",
        rounds=ROUNDS,
        batch_size=BATCH,
        optimizer="adam",
        lr=LR,
        seed=0,
        device="cpu",
        progress=False,
    )
    start = time.perf_counter()
    summary = train(config, out_dir=tmp_path, log=None)
    elapsed = time.perf_counter() - start
    records = [json.loads(line) for line in (tmp_path / RECORDS).read_text().splitlines()]
    accs = [r["test_acc"] for r in records]
    print(f"test accuracy per round {accs}, {elapsed:.1f} s")
    assert [r["round"] for r in records] == list(range(1, ROUNDS + 1))
    # real bytes: every batch of [B, 64, 7, 7] float32 with a 23-byte header, both ways
    per_client = SUBSET // 5
    batches = [BATCH] * (per_client // BATCH) + ([per_client % BATCH] if per_client % BATCH else [])
    up = sum(header_size(4) + 4 * b * 64 * 7 * 7 for b in batches * 5)
    assert all(r["bytes_up"] == r["bytes_down"] == up for r in records)
    assert records[-1]["train_loss"] < 0.5 and records[-1]["train_acc"] > 0.8
    assert summary.final_acc == accs[-1] >= MIN_ACC, accs
