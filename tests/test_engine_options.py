"""Training options: augmentation, learning-rate schedule, precision, channels-last.

Unit checks of each piece against a naive reference, then short MNIST runs through the
engine: reruns give identical records, resume continues the same curves, and the bytes
that cross the cut do not depend on the precision or the memory format.
"""

from __future__ import annotations

import argparse
import itertools
import math

import pytest
import torch

from acpsl.config import TrainConfig
from acpsl.data.augment import (
    BatchAugmenter,
    apply_crop_flip,
    draw_crop_flip,
    make_augmenter,
    step_generator,
)
from acpsl.engine import train
from acpsl.engine.checkpoint import load_checkpoint
from acpsl.engine.cli_args import add_train_arguments, config_from_args
from acpsl.engine.loop import CHECKPOINT, CONFIG, RECORDS
from acpsl.engine.precision import Precision
from acpsl.engine.records import read_records
from acpsl.engine.schedule import LrSchedule
from acpsl.engine.setup import build_run
from acpsl.errors import ConfigError

OPTIONS = {
    "augment": "crop-flip",
    "lr_schedule": "cosine",
    "lr_min": 1e-4,
    "precision": "bf16",
    "channels_last": True,
}


def tiny(shared_data, **changes) -> TrainConfig:
    base = dict(
        scheme="standard",
        dataset="mnist",
        data_dir=str(shared_data),
        subset=96,
        test_subset=48,
        model="smallcnn",
        cut=1,
        clients=2,
        rounds=2,
        batch_size=24,
        optimizer="adam",
        lr=3e-3,
        progress=False,
        device="cpu",
    )
    base.update(changes)
    return TrainConfig(**base)


def without_times(records):
    return [{k: v for k, v in r.items() if k not in ("wall_s", "round_s")} for r in records]


# ----------------------------------------------------------------------------- augmentation
def naive_crop_flip(x, top, left, flip, fill, padding):
    out = torch.empty_like(x)
    b, c, h, w = x.shape
    for i in range(b):
        padded = torch.empty(c, h + 2 * padding, w + 2 * padding)
        for ch in range(c):
            padded[ch] = fill[ch]
        padded[:, padding : padding + h, padding : padding + w] = x[i]
        crop = padded[:, top[i] : top[i] + h, left[i] : left[i] + w]
        out[i] = crop.flip(-1) if flip[i] else crop
    return out


@pytest.mark.parametrize("shape", [(7, 3, 32, 32), (5, 1, 28, 28), (3, 2, 5, 9)])
def test_crop_flip_matches_a_per_image_loop(shape):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=gen)
    fill = [float(v) for v in torch.randn(shape[1], generator=gen)]
    top, left, flip = draw_crop_flip(shape[0], generator=gen, padding=4)
    assert int(top.min()) >= 0 and int(top.max()) <= 8 and flip.dtype == torch.bool
    fast = apply_crop_flip(x, top=top, left=left, flip=flip, fill=fill, padding=4)
    assert fast.is_contiguous() and fast.shape == x.shape
    assert torch.equal(fast, naive_crop_flip(x, top, left, flip, fill, 4))


def test_crop_flip_identity_and_pure_flip():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    centre = torch.full((2,), 4, dtype=torch.int64)
    same = apply_crop_flip(x, top=centre, left=centre, flip=torch.zeros(2, dtype=torch.bool))
    assert torch.equal(same, x)
    mirrored = apply_crop_flip(x, top=centre, left=centre, flip=torch.ones(2, dtype=torch.bool))
    assert torch.equal(mirrored, x.flip(-1))
    corner = apply_crop_flip(
        x, top=torch.zeros(2, dtype=torch.int64), left=centre, flip=torch.zeros(2, dtype=torch.bool)
    )
    assert torch.equal(corner[:, :, :4], torch.zeros(2, 3, 4, 5))  # all padding rows
    with pytest.raises(ConfigError, match="crop-flip augments images"):
        apply_crop_flip(torch.zeros(3, 4), top=centre, left=centre, flip=centre.bool())


def test_augmenter_is_seeded_by_run_seed_and_step_and_pads_with_black():
    mean, std = (0.5, 0.25, 0.1), (0.2, 0.3, 0.4)
    aug = make_augmenter("crop-flip", seed=3, mean=mean, std=std)
    assert (
        isinstance(aug, BatchAugmenter)
        and make_augmenter("none", seed=3, mean=mean, std=std) is None
    )
    assert aug.fill == pytest.approx([-m / s for m, s in zip(mean, std)])  # a black pixel
    x = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    a = aug(x, step=5)
    assert torch.equal(a, aug(x, step=5))  # same seed and step: same crops
    assert not torch.equal(a, x)  # it changes the images
    assert not torch.equal(a, aug(x, step=6))  # another step: other crops
    other = make_augmenter("crop-flip", seed=4, mean=mean, std=std)
    assert other is not None and not torch.equal(a, other(x, step=5))
    # about half the images are flipped, offsets spread over [0, 8]
    top, _left, flip = draw_crop_flip(4000, generator=step_generator(3, 5))
    assert 0.45 < float(flip.float().mean()) < 0.55
    assert torch.bincount(top, minlength=9).min() > 300
    with pytest.raises(ConfigError, match="unknown augmentation"):
        make_augmenter("mixup", seed=0, mean=mean, std=std)


# -------------------------------------------------------------------------------- schedule
def test_cosine_reaches_its_floor_at_the_last_iteration():
    sched = LrSchedule(kind="cosine", base=0.1, floor=0.001)
    total = 37
    values = [sched.lr(t, total) for t in range(1, total + 1)]
    assert values[0] == pytest.approx(0.1) and values[-1] == pytest.approx(0.001)
    assert all(a > b for a, b in itertools.pairwise(values))  # strictly decreasing
    assert sched.lr((total + 1) // 2, total) == pytest.approx((0.1 + 0.001) / 2)
    assert LrSchedule(kind="constant", base=0.1).lr(37, 37) == 0.1
    assert LrSchedule(kind="cosine", base=0.1).lr(1, 1) == 0.1  # a one-iteration run
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    assert sched.apply(opt, t=total, total=total) == pytest.approx(0.001)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.001)
    with pytest.raises(ConfigError, match="unknown lr_schedule"):
        LrSchedule(kind="step")


def test_cosine_run_ends_at_the_floor_and_resume_continues_the_curve(shared_data, tmp_path):
    config = tiny(shared_data, lr_schedule="cosine", lr_min=2e-4, rounds=3)
    straight = train(config, out_dir=tmp_path / "straight", log=None)
    ckpt = load_checkpoint(tmp_path / "straight" / CHECKPOINT)
    # the optimizers' last step used the floor
    lrs = _checkpoint_lrs(ckpt)
    assert lrs and all(lr == pytest.approx(2e-4) for lr in lrs), lrs

    class Killed(Exception):
        pass

    def kill_after_one(record):
        if record["round"] == 1:
            raise Killed

    out = tmp_path / "killed"
    with pytest.raises(Killed):
        train(config, out_dir=out, log=None, on_round=kill_after_one)
    resumed = train(config, out_dir=out, resume=True, log=None)
    assert without_times(resumed.records) == without_times(straight.records)
    constant = train(config.replace(lr_schedule="constant"), out_dir=tmp_path / "c", log=None)
    assert without_times(constant.records) != without_times(straight.records)


def _checkpoint_lrs(ckpt) -> list[float]:
    """Every ``lr`` found in the optimizer states of a checkpoint."""
    found: list[float] = []

    def walk(node):
        if isinstance(node, dict):
            if "param_groups" in node:
                found.extend(float(g["lr"]) for g in node["param_groups"])
            for value in node.values():
                walk(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                walk(value)

    walk(ckpt)
    return found


# ------------------------------------------------------------------------------- precision
def test_precision_contexts_and_memory_format():
    assert Precision().autocast(torch.device("cpu")).__class__.__name__ == "nullcontext"
    bf16 = Precision(dtype="bf16", channels_last=True)
    conv = bf16.model(torch.nn.Conv2d(3, 4, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = bf16.input(torch.randn(2, 3, 5, 5))
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert bf16.input(torch.randn(2, 3)).shape == (2, 3)  # 2-D tensors are left alone
    with bf16.autocast(torch.device("cpu")):
        assert conv(x).dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="unknown precision"):
        Precision(dtype="fp16")


def test_bf16_warns_where_the_cpu_has_no_fast_bf16(monkeypatch, caplog):
    """bf16 autocast on a CPU without oneDNN bf16 runs reference convolutions, measured 4.8x
    slower than fp32 on a Zen 3 EPYC (docs/engine.md): the run says so once, at set-up."""
    import acpsl.engine.precision as precision_module

    assert isinstance(precision_module.cpu_has_fast_bf16(), bool)  # the real probe runs
    monkeypatch.setattr(precision_module, "cpu_has_fast_bf16", lambda: False)
    cpu = torch.device("cpu")
    with caplog.at_level("WARNING", logger="acpsl.engine.precision"):
        Precision(dtype="bf16").warn_if_slow(cpu)
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "bf16" in message and "slower" in message and "--precision fp32" in message
    caplog.clear()
    with caplog.at_level("WARNING", logger="acpsl.engine.precision"):
        Precision(dtype="fp32").warn_if_slow(cpu)  # fp32: nothing to say
        monkeypatch.setattr(precision_module, "cpu_has_fast_bf16", lambda: True)
        Precision(dtype="bf16").warn_if_slow(cpu)  # a CPU with oneDNN bf16: nothing either
        Precision(dtype="bf16").warn_if_slow(torch.device("meta"))  # not a CPU: not asked
    assert caplog.records == []


@pytest.mark.parametrize(
    ("scheme", "params"), [("standard", {}), ("topk", {"keep_ratio": 0.1}), ("acp", {})]
)
def test_payload_bytes_do_not_depend_on_precision_or_memory_format(
    shared_data, tmp_path, scheme, params
):
    config = tiny(shared_data, scheme=scheme, scheme_params=params, rounds=1)
    keys = ("bytes_up", "bytes_down", "bytes_labels", "bytes_eval")
    fp32 = train(config, out_dir=tmp_path / "fp32", log=None).records[0]
    for i, changes in enumerate(
        (
            {"precision": "bf16"},
            {"channels_last": True},
            {"precision": "bf16", "channels_last": True},
        )
    ):
        other = train(config.replace(**changes), out_dir=tmp_path / str(i), log=None).records[0]
        if scheme == "acp":  # its kept-channel count varies with the values: same layout only
            assert other["bytes_labels"] == fp32["bytes_labels"]
            continue
        assert {k: other[k] for k in keys} == {k: fp32[k] for k in keys}, changes
        assert math.isfinite(other["train_loss"]) and other["train_loss"] < 2.6


def test_bf16_client_sends_float32_and_models_run_in_bf16(shared_data):
    run = build_run(
        tiny(shared_data, precision="bf16", channels_last=True), device=torch.device("cpu")
    )
    client = run.clients[0]
    x, y = run.train_set.batch(torch.arange(8))
    smashed = client._smash(x)
    assert smashed.dtype == torch.float32
    convs = [m for m in client.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    up = client.forward(x, y, t=1, total=4)
    down, loss, _ = run.server.step(0, up.smashed, up.labels, t=1, total=4)
    client.backward(down)
    assert math.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in client.model.parameters())


# --------------------------------------------------------------------- runs with the options
def test_options_rerun_identically_and_augmentation_changes_the_run(shared_data, tmp_path):
    config = tiny(shared_data, **OPTIONS)
    first = train(config, out_dir=tmp_path / "a", log=None)
    again = train(config, out_dir=tmp_path / "b", log=None)
    assert without_times(first.records) == without_times(again.records)
    plain = train(config.replace(augment="none"), out_dir=tmp_path / "c", log=None)
    assert [r["train_loss"] for r in plain.records] != [r["train_loss"] for r in first.records]
    # the resolved options are in the run's config.toml and it reloads to the same config
    assert TrainConfig.from_toml(tmp_path / "a" / CONFIG) == config


def test_options_survive_resume_with_all_options(shared_data, tmp_path):
    config = tiny(shared_data, **OPTIONS, rounds=3)
    straight = train(config, out_dir=tmp_path / "straight", log=None)

    class Killed(Exception):
        pass

    def kill(record):
        if record["round"] == 2:
            raise Killed

    with pytest.raises(Killed):
        train(config, out_dir=tmp_path / "k", log=None, on_round=kill)
    resumed = train(config, out_dir=tmp_path / "k", resume=True, log=None)
    assert [r["round"] for r in read_records(tmp_path / "k" / RECORDS)] == [1, 2, 3]
    assert without_times(resumed.records) == without_times(straight.records)
    # changing an option is refused on resume
    from acpsl.errors import CheckpointError

    with pytest.raises(CheckpointError, match="augment"):
        train(
            config.replace(augment="none", rounds=4), out_dir=tmp_path / "k", resume=True, log=None
        )


# ------------------------------------------------------------------------ configuration
def test_options_round_trip_through_toml_and_cli(tmp_path):
    config = TrainConfig(**OPTIONS)
    path = tmp_path / "c.toml"
    path.write_text(config.to_toml())
    assert TrainConfig.from_toml(path) == config
    assert TrainConfig.from_dict(config.to_dict()) == config
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(
        [
            "--augment=crop-flip",
            "--lr-schedule=cosine",
            "--lr-min=0.0001",
            "--precision=bf16",
            "--channels-last",
        ]
    )
    assert config_from_args(args) == config
    # options override the file's values
    args = parser.parse_args(["--config", str(path), "--precision=fp32", "--no-channels-last"])
    assert config_from_args(args) == config.replace(precision="fp32", channels_last=False)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"augment": "flip"}, "invalid augment='flip': choose one of none, crop-flip"),
        ({"lr_schedule": "step"}, "invalid lr_schedule='step'"),
        ({"precision": "fp16"}, "invalid precision='fp16': choose one of fp32, bf16"),
        ({"channels_last": 1}, "invalid channels_last=1: must be true or false"),
        ({"lr_min": -1.0}, "invalid lr_min=-1.0"),
        ({"lr_schedule": "cosine", "lr": 0.01, "lr_min": 0.1}, "must not exceed lr=0.01"),
    ],
)
def test_bad_options_are_one_line_config_errors(changes, match):
    with pytest.raises(ConfigError, match=match) as info:
        TrainConfig(**changes)
    assert "\n" not in str(info.value)


def test_checkpoint_without_the_new_keys_still_resumes(shared_data, tmp_path):
    """A run checkpointed before these options existed used their defaults."""
    from acpsl.engine.checkpoint import check_resumable

    config = tiny(shared_data)
    saved = {k: v for k, v in config.to_dict().items() if k not in OPTIONS}
    check_resumable(saved, config, finished=1)
    with pytest.raises(Exception, match="precision"):
        check_resumable(saved, config.replace(precision="bf16"), finished=1)


# ------------------------------------------------------------------------------- warm-up
def test_warmup_covers_registered_schemes_and_runs():
    from acpsl import schemes
    from acpsl.warmup import VARIANTS, main, warm

    assert set(VARIANTS) <= set(schemes.names())
    lines: list[str] = []
    times = warm(["standard", "sizered"], log=lines.append)
    assert set(times) == {"standard", "sizered"} and len(lines) == 2
    assert main(["standard"]) == 0
