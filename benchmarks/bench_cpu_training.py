"""Fast CPU training of the papers' setting: precision, memory format, and engine overhead.

The ACP-SL paper's split ResNet-18 (torchvision's, ImageNet stem, cut after the max-pool) on
CIFAR-10-shaped batches (3x32x32), batch 128, ``--threads`` PyTorch threads (default 2).

1. **bf16 + channels-last vs fp32 eager**: median seconds per split iteration through the
   cut as bytes (:class:`acpsl.engine.ClientRuntime` / :class:`acpsl.engine.ServerRuntime`)
   with ``Precision("bf16", channels_last=True)`` over the same with ``Precision("fp32")``;
   fp32 + channels-last is printed beside it. Goal: ratio <= 0.6. PyTorch runs bf16
   convolutions through oneDNN only where ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``
   (AVX-512 with bf16 support, or AMX); elsewhere they fall back to its reference im2col
   convolution (``aten::_slow_conv2d_*``), tens of times slower than fp32. On such a CPU the
   benchmark measures the ratio at ``--small-batch`` (a batch-128 bf16 iteration takes
   minutes there), says so, and reports FAIL.
2. **Engine vs a plain PyTorch loop**: seconds per iteration of the engine's training round
   (:func:`acpsl.engine.loop._train_round`: batch from the dataset, crop-flip augmentation,
   client forward, standard scheme's encode/decode both ways, server step, client backward,
   cosine schedule, byte and loss bookkeeping) over a plain loop on the unsplit model with the
   same batches, augmentation, optimizer and schedule. Repetitions are interleaved; ratio of
   the medians. Goal: <= 1.10. Uses the real CIFAR-10 from ``--data-dir`` when present,
   else random images of its shape (the cost is the same).

Exits 1 when a goal is missed.

Run: ``python benchmarks/bench_cpu_training.py [--threads 2] [--reps 5] [--data-dir DIR]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from acpsl import models, schemes
from acpsl.config import TrainConfig
from acpsl.data.augment import make_augmenter
from acpsl.data.dataset import ImageDataset
from acpsl.engine import ClientRuntime, ServerRuntime
from acpsl.engine import loop as engine_loop
from acpsl.engine.optim import make_optimizer
from acpsl.engine.precision import Precision
from acpsl.engine.schedule import LrSchedule
from acpsl.engine.setup import Run, build_run, shuffle_order

#: Goal of part 1: bf16 + channels-last at most 60% of fp32 eager.
BF16_GOAL = 0.6
#: Goal of part 2: the engine's iteration at most 10% slower than a plain loop.
ENGINE_GOAL = 1.10
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _median_times(
    fns: dict[str, Callable[[], None]], *, reps: int, warmup: int
) -> dict[str, float]:
    """Median seconds of each function, repetitions interleaved (rotating which goes first)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for i in range(reps):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(v) for name, v in times.items()}


# ------------------------------------------------------------------------ part 1: precision
def split_step_fn(precision: Precision, *, batch: int) -> Callable[[], None]:
    """One split iteration through bytes at ``precision`` (fresh models, SGD momentum)."""
    config = TrainConfig(optimizer="sgd", lr=0.01, momentum=0.9)
    split = models.create("resnet18", in_channels=3, num_classes=10, cut=4, seed=0)
    client = ClientRuntime(
        client_id=0,
        model=precision.model(split.client),
        optimizer=make_optimizer(split.client.parameters(), config=config),
        scheme=schemes.create("standard"),
        precision=precision,
    )
    server = ServerRuntime(
        model=precision.model(split.server),
        optimizer=make_optimizer(split.server.parameters(), config=config),
        scheme_factory=lambda: schemes.create("standard"),
        precision=precision,
    )
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)

    def step() -> None:
        up = client.forward(x, y, t=1, total=1)
        down, _, _ = server.step(0, up.smashed, up.labels)
        client.backward(down)

    return step


def precision_ratio(*, batch: int, small_batch: int, reps: int) -> tuple[bool, dict[str, float]]:
    """Part 1; returns (goal met, numbers)."""
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    b = batch if native else small_batch
    fns = {
        "fp32": split_step_fn(Precision("fp32"), batch=b),
        "fp32_cl": split_step_fn(Precision("fp32", channels_last=True), batch=b),
        "bf16_cl": split_step_fn(Precision("bf16", channels_last=True), batch=b),
    }
    t = _median_times(fns, reps=reps if native else 1, warmup=1)
    ratio = t["bf16_cl"] / t["fp32"]
    print(f"part 1: split ResNet-18, CIFAR-10 shape, batch {b}, {torch.get_num_threads()} threads")
    print(f"  oneDNN bf16 on this CPU: {'yes' if native else 'NO (reference convolutions)'}")
    print(f"  fp32 eager            {t['fp32']:.3f} s/iteration")
    print(
        f"  fp32 + channels-last  {t['fp32_cl']:.3f} s/iteration ({t['fp32_cl'] / t['fp32']:.2f}x)"
    )
    print(f"  bf16 + channels-last  {t['bf16_cl']:.3f} s/iteration")
    ok = native and ratio <= BF16_GOAL
    note = "" if native else f" (at batch {b}: this CPU has no oneDNN bf16)"
    print(
        f"  ratio bf16+CL / fp32 = {ratio:.2f} (goal <= {BF16_GOAL}){note}: "
        f"{'PASS' if ok else 'FAIL'}"
    )
    return ok, {"batch": float(b), "native_bf16": float(native), "ratio": ratio, **t}


# ---------------------------------------------------------------------- part 2: the engine
def _dataset(data_dir: Path, samples: int) -> ImageDataset:
    if (data_dir / "cifar-10" / "data_batch_1.bin").is_file():
        from acpsl.data import load_dataset

        return load_dataset("cifar-10", root=data_dir, train=True).subset(samples)
    gen = torch.Generator().manual_seed(0)
    return ImageDataset(
        images=torch.randint(0, 256, (samples, 3, 32, 32), dtype=torch.uint8, generator=gen),
        labels=torch.randint(0, 10, (samples,), generator=gen),
        num_classes=10,
        name="cifar-10-shaped",
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
    )


def engine_ratio(*, data_dir: Path, iters: int, reps: int) -> tuple[bool, dict[str, float]]:
    """Part 2; returns (goal met, numbers)."""
    batch = 128
    train_set = _dataset(data_dir, iters * batch)
    config = TrainConfig(
        scheme="standard",
        dataset="cifar-10",
        model="resnet18",
        cut=4,
        clients=1,
        rounds=1000,
        batch_size=batch,
        optimizer="sgd",
        lr=0.05,
        momentum=0.9,
        lr_schedule="cosine",
        augment="crop-flip",
        progress=False,
        device="cpu",
    )
    import acpsl.engine.setup as setup_mod

    real_load = setup_mod.load_split
    setup_mod.load_split = lambda cfg, *, train: train_set  # type: ignore[assignment]
    try:
        run: Run = build_run(config, device=torch.device("cpu"))
    finally:
        setup_mod.load_split = real_load
    total = run.total_iterations()
    state = {"round": 0, "t": 0}

    def engine_round() -> None:
        state["round"] += 1
        _, state["t"] = engine_loop._train_round(
            run, round_index=state["round"], t=state["t"], total=total
        )

    full = models.create("resnet18", in_channels=3, num_classes=10, cut=4, seed=0).full
    opt = make_optimizer(full.parameters(), config=config)
    schedule = LrSchedule(kind="cosine", base=config.lr, floor=0.0)
    augment = make_augmenter("crop-flip", seed=0, mean=train_set.mean, std=train_set.std)
    assert augment is not None
    plain = {"round": 0, "t": 0}

    def plain_round() -> None:
        plain["round"] += 1
        order = shuffle_order(seed=0, round_index=plain["round"], client=0, size=len(train_set))
        full.train()
        for start in range(0, order.numel(), batch):
            plain["t"] += 1
            x, y = train_set.batch(order[start : start + batch])
            x = augment(x, step=plain["t"])
            loss = F.cross_entropy(full(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            schedule.apply(opt, t=plain["t"], total=total)
            opt.step()
            float(loss.detach())  # the loss the engine logs

    t = _median_times({"engine": engine_round, "plain": plain_round}, reps=reps, warmup=1)
    per_engine, per_plain = t["engine"] / iters, t["plain"] / iters
    ratio = per_engine / per_plain
    ok = ratio <= ENGINE_GOAL
    print(
        f"part 2: engine round vs plain loop, {iters} iterations of batch {batch}, "
        f"crop-flip, cosine, {train_set.name}"
    )
    print(f"  engine (split, standard scheme, bytes)  {per_engine:.3f} s/iteration")
    print(f"  plain PyTorch loop (unsplit)            {per_plain:.3f} s/iteration")
    print(
        f"  ratio engine / plain = {ratio:.3f} (goal <= {ENGINE_GOAL}): {'PASS' if ok else 'FAIL'}"
    )
    return ok, {"engine_s": per_engine, "plain_s": per_plain, "ratio": ratio}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--small-batch", type=int, default=16)
    parser.add_argument("--iters", type=int, default=4, help="iterations per timed round")
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    parser.add_argument("--skip-precision", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    ok = True
    if not args.skip_precision:
        ok &= precision_ratio(batch=args.batch, small_batch=args.small_batch, reps=args.reps)[0]
    ok &= engine_ratio(data_dir=args.data_dir, iters=args.iters, reps=args.reps)[0]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
