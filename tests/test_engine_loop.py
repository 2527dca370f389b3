"""The training loop on real MNIST: exact bytes, records, determinism, checkpoint and resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

from acpsl import models
from acpsl.config import TrainConfig
from acpsl.cut.payload import header_size
from acpsl.cut.state import encode_state_dict
from acpsl.engine import train
from acpsl.engine.checkpoint import load_checkpoint
from acpsl.engine.loop import CHECKPOINT, RECORDS
from acpsl.engine.optim import make_optimizer
from acpsl.engine.records import RECORD_FIELDS, read_records, summarize, targets_reached
from acpsl.errors import CheckpointError, ConfigError, TrainingError

SUBSET, TEST_SUBSET, CLIENTS, BATCH = 192, 64, 3, 24


def tiny(shared_data, **changes) -> TrainConfig:
    base = dict(
        scheme="standard",
        dataset="mnist",
        data_dir=str(shared_data),
        subset=SUBSET,
        test_subset=TEST_SUBSET,
        model="smallcnn",
        cut=1,
        clients=CLIENTS,
        rounds=2,
        batch_size=BATCH,
        optimizer="adam",
        lr=1e-3,
        progress=False,
        device="cpu",
    )
    base.update(changes)
    return TrainConfig(**base)


def without_times(records):
    return [{k: v for k, v in r.items() if k not in ("wall_s", "round_s")} for r in records]


def test_records_hold_exact_byte_counts(shared_data, tmp_path):
    config = tiny(shared_data)
    summary = train(config, out_dir=tmp_path, log=None)
    records = read_records(tmp_path / RECORDS)
    assert len(records) == 2 and records == summary.records
    for r in records:
        assert set(RECORD_FIELDS) <= set(r)
    # IID over 192 samples: 64 per client -> batches of 24, 24, 16 (last partial one kept).
    sizes = json.loads((tmp_path / "partition.json").read_text())["sizes"]
    assert sizes == [64, 64, 64]
    batches = [
        b for n in sizes for b in [BATCH] * (n // BATCH) + ([n % BATCH] if n % BATCH else [])
    ]
    d = 32 * 14 * 14  # smallcnn's smashed data per sample at cut 1 on 28x28
    up = sum(header_size(4) + b * d * 4 for b in batches)
    labels = sum(header_size(1) + 1 + b for b in batches)
    test_batches = [BATCH] * (TEST_SUBSET // BATCH) + [TEST_SUBSET % BATCH]
    evals = sum(header_size(4) + b * d * 4 + header_size(1) + 1 + b for b in test_batches)
    # Sequential hand-off: model + Adam state; 2 hand-offs in round 1, 3 in round 2.
    split = models.create("smallcnn", in_channels=1, num_classes=10, cut=1, seed=0)
    opt = make_optimizer(split.client.parameters(), config=config)
    split.client(torch.zeros(2, 1, 28, 28)).sum().backward()
    opt.step()
    handoff = len(
        encode_state_dict({"model": split.client.state_dict(), "optimizer": opt.state_dict()})
    )
    for i, r in enumerate(records, start=1):
        assert r["round"] == i and r["iteration"] == i * len(batches)
        assert r["bytes_up"] == up and r["bytes_down"] == up
        assert r["bytes_labels"] == labels
        assert r["bytes_eval"] == evals
        assert r["bytes_model"] == (CLIENTS - 1 if i == 1 else CLIENTS) * handoff
        assert r["bytes_up_total"] == i * up
        assert r["bytes_labels_total"] == i * labels
        # standard SL has no pruning ratio (SPEC section 6) and sends every value
        assert r["ratio_mean"] is None and r["ratio_min"] is None and r["ratio_max"] is None
        assert r["kept_frac_mean"] == r["kept_frac_min"] == r["kept_frac_max"] == 1.0
        assert r["table2_bytes_up"] == pytest.approx(4.0 * SUBSET * d)
        assert r["bound_bytes_up"] is None and r["kept_counts"] is None
        assert 0 <= r["test_acc"] <= 1 and math.isfinite(r["train_loss"])
    assert records[1]["bytes_model_total"] == (2 * CLIENTS - 1) * handoff
    assert summary.totals["bytes_total"] == sum(
        records[-1][k]
        for k in ("bytes_up_total", "bytes_down_total", "bytes_labels_total", "bytes_model_total")
    )
    for name in ("config.toml", "checkpoint.pt", "partition.json", "summary.json"):
        assert (tmp_path / name).is_file()
    assert TrainConfig.from_toml(tmp_path / "config.toml") == config
    assert json.loads((tmp_path / "summary.json").read_text())["final_acc"] == summary.final_acc


def test_same_seed_same_records_other_seed_other_records(shared_data, tmp_path):
    config = tiny(shared_data, scheme="acp", rounds=1)
    a = train(config, out_dir=tmp_path / "a", log=None)
    b = train(config, out_dir=tmp_path / "b", log=None)
    c = train(config.replace(seed=1), out_dir=tmp_path / "c", log=None)
    assert without_times(a.records) == without_times(b.records)
    assert without_times(a.records) != without_times(c.records)
    kept = json.loads((tmp_path / "a" / "kept_channels.json").read_text())
    assert kept["round"] == 1 and len(kept["clients"]) == CLIENTS
    assert kept["total"] == a.records[0]["kept_counts"]
    assert kept["total"] == [sum(col) for col in zip(*kept["clients"])]
    # every iteration keeps at least one channel, so the counts add up to more than T
    assert sum(kept["total"]) >= a.records[0]["iteration"]
    r = a.records[0]
    assert 0.6 <= r["ratio_min"] <= r["ratio_mean"] <= r["ratio_max"] <= 0.8  # P_t, eq. 13
    assert 0.2 - 1 / 32 <= r["kept_frac_min"] <= r["kept_frac_max"] <= 0.4 + 1 / 32


class Killed(Exception):
    pass


@pytest.mark.parametrize(("mode", "scheme"), [("sequential", "acp"), ("splitfed", "randtopk")])
def test_resume_after_a_kill_equals_an_uninterrupted_run(shared_data, tmp_path, mode, scheme):
    params = {"keep_ratio": 0.2} if scheme == "randtopk" else {}
    config = tiny(shared_data, mode=mode, scheme=scheme, scheme_params=params, rounds=3)
    straight = train(config, out_dir=tmp_path / "straight", log=None)

    def kill_after_two(record):
        if record["round"] == 2:
            raise Killed

    out = tmp_path / "killed"
    with pytest.raises(Killed):
        train(config, out_dir=out, log=None, on_round=kill_after_two)
    assert len(read_records(out / RECORDS)) == 2
    assert load_checkpoint(out / CHECKPOINT)["round"] == 2
    resumed = train(config, out_dir=out, resume=True, log=None)
    assert [r["round"] for r in read_records(out / RECORDS)] == [1, 2, 3]
    assert without_times(resumed.records) == without_times(straight.records)
    assert resumed.records[2]["wall_s"] >= resumed.records[1]["wall_s"]


def test_resume_drops_records_past_the_checkpoint_and_torn_lines(shared_data, tmp_path):
    config = tiny(shared_data, rounds=2)
    straight = train(config, out_dir=tmp_path / "straight", log=None)
    out = tmp_path / "run"

    def kill(record):
        raise Killed

    with pytest.raises(Killed):
        train(config.replace(rounds=2), out_dir=out, log=None, on_round=kill)
    # A crash between the record append and the checkpoint: round 2's line is on disk but
    # the checkpoint still says round 1; plus a torn half line after it.
    with (out / RECORDS).open("a") as fh:
        fh.write(json.dumps({**straight.records[1], "test_acc": -1.0}) + "\n")
        fh.write('{"round": 3, "iter')
    resumed = train(config, out_dir=out, resume=True, log=None)
    records = read_records(out / RECORDS)
    assert [r["round"] for r in records] == [1, 2]
    assert without_times(records) == without_times(straight.records)
    assert without_times(resumed.records) == without_times(straight.records)


def test_resume_refuses_a_different_configuration(shared_data, tmp_path):
    config = tiny(shared_data, rounds=1)
    train(config, out_dir=tmp_path, log=None)
    with pytest.raises(CheckpointError) as err:
        train(config.replace(lr=0.01, batch_size=16), out_dir=tmp_path, resume=True, log=None)
    assert "batch_size" in str(err.value) and "lr" in str(err.value)
    assert "rounds" not in str(err.value).split("(")[0]
    with pytest.raises(CheckpointError, match="already holds a run"):
        train(config, out_dir=tmp_path, log=None)
    # rounds may grow; progress, device and targets may change
    longer = train(
        config.replace(rounds=2, target_acc=(0.05,), progress=False),
        out_dir=tmp_path,
        resume=True,
        log=None,
    )
    assert [r["round"] for r in longer.records] == [1, 2]
    assert longer.targets[0].round == 1
    with pytest.raises(CheckpointError, match="rounds may only grow"):
        train(config, out_dir=tmp_path, resume=True, log=None)


def test_resume_without_a_checkpoint_starts_over(shared_data, tmp_path):
    config = tiny(shared_data, rounds=1)
    straight = train(config, out_dir=tmp_path / "straight", log=None)
    out = tmp_path / "run"
    out.mkdir()
    # A record and no checkpoint: refused, nothing deleted (issue 10, defect 2).
    (out / RECORDS).write_text('{"round": 1, "test_acc": 0.5}\n')
    with pytest.raises(CheckpointError, match=r"1 finished round but checkpoint\.pt is missing"):
        train(config, out_dir=out, resume=True, log=None)
    assert (out / RECORDS).read_text() == '{"round": 1, "test_acc": 0.5}\n'
    # No record and no checkpoint: nothing to lose, the run starts from round 1.
    (out / RECORDS).write_text("")
    summary = train(config, out_dir=out, resume=True, log=None)
    lines = (out / RECORDS).read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert list(record) == list(RECORD_FIELDS)
    assert record == summary.records[0]
    assert without_times([record]) == without_times(straight.records)
    d = 32 * 14 * 14  # smallcnn's smashed data per sample at cut 1 on 28x28
    batches = [BATCH, BATCH, SUBSET // CLIENTS - 2 * BATCH] * CLIENTS  # 24, 24, 16 per client
    assert record["round"] == 1 and record["iteration"] == len(batches)
    assert (
        record["bytes_up"]
        == record["bytes_up_total"]
        == sum(header_size(4) + 4 * b * d for b in batches)
    )
    assert record["train_loss"] > 0 and 0 <= record["test_acc"] <= 1


def test_clients_index_one_shared_dataset(shared_data):
    from acpsl.engine.setup import build_run, load_split

    config = tiny(shared_data, subset=None, clients=5)
    run = build_run(config, device=torch.device("cpu"))
    full = load_split(config, train=True)  # the process-wide cached copy
    assert len(run.train_set) == 60000
    # Every client holds only an int64 index tensor into the one training set...
    assert len(run.parts) == 5
    for part in run.parts:
        assert isinstance(part, torch.Tensor) and part.dtype == torch.int64 and part.dim() == 1
    joined = torch.cat(run.parts)
    assert torch.equal(joined.sort().values, torch.arange(60000))
    # ...and the images and labels are not copied: one storage, shared by every client.
    assert run.train_set.images.data_ptr() == full.images.data_ptr()
    assert run.train_set.labels.data_ptr() == full.labels.data_ptr()
    for client in run.clients:
        held = [v for v in vars(client).values() if isinstance(v, torch.Tensor)]
        assert all(t.numel() < 60000 for t in held)
    small = build_run(config.replace(subset=1000), device=torch.device("cpu"))
    assert small.train_set.images.data_ptr() == full.images.data_ptr()


def test_corrupt_checkpoint_is_a_checkpoint_error(shared_data, tmp_path):
    config = tiny(shared_data, rounds=1)
    train(config, out_dir=tmp_path, log=None)
    data = (tmp_path / CHECKPOINT).read_bytes()
    (tmp_path / CHECKPOINT).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        train(config, out_dir=tmp_path, resume=True, log=None)


def test_splitfed_eval_uncompressed_and_dirichlet(shared_data, tmp_path):
    config = tiny(
        shared_data,
        mode="splitfed",
        partition="dirichlet",
        beta=0.5,
        rounds=1,
        scheme="acp",
        eval_uncompressed=True,
        target_acc=(0.01, 1.0),
    )
    summary = train(config, out_dir=tmp_path, log=None)
    r = summary.records[0]
    part = json.loads((tmp_path / "partition.json").read_text())
    assert sum(part["sizes"]) == SUBSET and min(part["sizes"]) >= 1
    assert [sum(row) for row in part["histogram"]] == part["sizes"]
    assert 0 <= r["test_acc_uncompressed"] <= 1 and r["test_loss_uncompressed"] > 0
    # SplitFed moves each client's model up and the average down: 2 * clients transfers
    split = models.create("smallcnn", in_channels=1, num_classes=10, cut=1, seed=0)
    one = len(encode_state_dict({"model": split.client.state_dict()}))
    assert r["bytes_model"] == 2 * CLIENTS * one
    assert [t.reached for t in summary.targets] == [True, False]
    assert "not reached" in summary.table()


def test_non_finite_loss_names_round_and_iteration(shared_data, tmp_path):
    config = tiny(shared_data, optimizer="sgd", lr=1e12, momentum=0.0, rounds=1)
    with pytest.raises(TrainingError, match=r"round 1, iteration \d+: .*--lr"):
        train(config, out_dir=tmp_path, log=None)


def test_bad_configurations_fail_before_training(shared_data, tmp_path):
    with pytest.raises(ConfigError, match="unknown scheme"):
        train(tiny(shared_data, scheme="nope"), out_dir=tmp_path / "a", log=None)
    with pytest.raises(ConfigError, match="unknown dataset"):
        train(tiny(shared_data, dataset="nope"), out_dir=tmp_path / "b", log=None)
    with pytest.raises(ConfigError, match="bad parameters"):
        train(tiny(shared_data, scheme_params={"bogus": 1}), out_dir=tmp_path / "c", log=None)
    with pytest.raises(ConfigError, match="clients"):
        train(tiny(shared_data, subset=4, clients=5), out_dir=tmp_path / "d", log=None)
    assert not (tmp_path / "a").exists()


def test_targets_and_summary_from_records(tmp_path):
    def rec(i, acc):
        return {
            "round": i,
            "iteration": 10 * i,
            "test_acc": acc,
            "bytes_up_total": 100 * i,
            "bytes_down_total": 50 * i,
            "bytes_labels_total": 5 * i,
            "bytes_model_total": 1 * i,
            "bytes_eval_total": 7 * i,
            "wall_s": 2.0 * i,
        }

    records = [rec(1, 0.5), rec(2, 0.9), rec(3, 0.85), rec(4, 0.9)]
    hits = targets_reached(records, [0.5, 0.88, 0.95])
    assert [h.round for h in hits] == [1, 2, None]
    assert hits[1].bytes == {
        "bytes_up_total": 200,
        "bytes_down_total": 100,
        "bytes_labels_total": 10,
        "bytes_model_total": 2,
        "bytes_total": 312,
    }
    s = summarize(records, out_dir=tmp_path, targets=[0.88])
    assert (s.final_acc, s.best_acc, s.best_round) == (0.9, 0.9, 2)
    assert s.totals["bytes_total"] == 400 + 200 + 20 + 4 and s.wall_s == 8.0
    assert "round 2" in s.table()
    with pytest.raises(CheckpointError):
        summarize([], out_dir=tmp_path, targets=[])
