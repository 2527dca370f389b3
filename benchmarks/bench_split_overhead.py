"""Overhead of split learning through bytes, and memory of a 5-client run.

1. Time per training iteration of ResNet-18 with the ACP-SL paper split (ImageNet stem, cut
   after the max-pool) on MNIST-sized batches, split through the cut as bytes (client
   forward, encode, decode, server forward/backward, gradient encode/decode, client
   backward: :class:`acpsl.engine.ClientRuntime` / :class:`acpsl.engine.ServerRuntime`),
   against the same model trained unsplit. Repetitions of the two are interleaved and the
   median of each is reported, with their ratio (goal: <= 1.05).
2. Peak extra memory of a real 5-client run (``acpsl.engine.train`` on an MNIST subset):
   clients hold index tensors into one shared dataset, so the peak extra memory stays far
   below one copy of the dataset per client.

Run: ``python benchmarks/bench_split_overhead.py [--reps 15] [--batch 128] [--data-dir DIR]``.
"""

from __future__ import annotations

import argparse
import gc
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import torch
import torch.nn.functional as F

from acpsl import models, schemes
from acpsl.config import TrainConfig
from acpsl.engine import ClientRuntime, ServerRuntime, train
from acpsl.engine.optim import make_optimizer
from acpsl.engine.setup import load_split


def time_iterations(*, reps: int, batch: int, warmup: int = 3) -> dict[str, float]:
    """Median seconds per iteration, split (through bytes) and unsplit, interleaved."""
    config = TrainConfig(optimizer="sgd", lr=0.01, momentum=0.9)
    split = models.create("resnet18", in_channels=1, num_classes=10, cut=4, seed=0)
    full = models.create("resnet18", in_channels=1, num_classes=10, cut=4, seed=0).full
    client = ClientRuntime(
        client_id=0,
        model=split.client,
        optimizer=make_optimizer(split.client.parameters(), config=config),
        scheme=schemes.create("standard"),
    )
    server = ServerRuntime(
        model=split.server,
        optimizer=make_optimizer(split.server.parameters(), config=config),
        scheme_factory=lambda: schemes.create("standard"),
    )
    full_opt = make_optimizer(full.parameters(), config=config)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)

    def split_step() -> None:
        up = client.forward(x, y, t=1, total=1)
        down, _, _ = server.step(0, up.smashed, up.labels)
        client.backward(down)

    def full_step() -> None:
        full.train()
        loss = F.cross_entropy(full(x), y)
        full_opt.zero_grad(set_to_none=True)
        loss.backward()
        full_opt.step()

    for _ in range(warmup):
        split_step()
        full_step()
    split_times: list[float] = []
    full_times: list[float] = []
    for i in range(reps):
        # Alternate which goes first so that drifts in machine load hit both equally.
        order = (split_step, full_step) if i % 2 == 0 else (full_step, split_step)
        for fn in order:
            start = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - start
            (split_times if fn is split_step else full_times).append(elapsed)
    ratios = [s / f for s, f in zip(split_times, full_times)]
    return {
        "split_s": statistics.median(split_times),
        "unsplit_s": statistics.median(full_times),
        "ratio_of_medians": statistics.median(split_times) / statistics.median(full_times),
        "median_pair_ratio": statistics.median(ratios),
    }


def memory_of_run(*, data_dir: str, subset: int, clients: int = 5) -> dict[str, float]:
    """Dataset bytes vs peak extra Python-heap memory (tracemalloc) of a short real run."""
    config = TrainConfig(
        scheme="acp",
        dataset="mnist",
        data_dir=data_dir,
        subset=subset,
        test_subset=500,
        model="resnet18",
        cut=4,
        clients=clients,
        rounds=1,
        batch_size=128,
        optimizer="adam",
        lr=1e-3,
        progress=False,
        device="cpu",
    )
    full = load_split(config.replace(subset=None), train=True)  # loaded (and cached) first
    dataset_bytes = full.images.numel() * full.images.element_size() + full.labels.numel() * 8
    gc.collect()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tracemalloc.start()
    with tempfile.TemporaryDirectory() as out:
        train(config, out_dir=out, log=None)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "dataset_bytes": float(dataset_bytes),
        "subset_bytes": float(dataset_bytes * subset / len(full)),
        "peak_traced_bytes": float(peak),
        "peak_rss_growth_bytes": float(max(0, rss_after - rss_before)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15, help="timed repetitions (default: 15)")
    parser.add_argument("--batch", type=int, default=128, help="batch size (default: 128)")
    parser.add_argument(
        "--data-dir",
        default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"),
        help="dataset root for the memory part (default: ../shared/data)",
    )
    parser.add_argument("--subset", type=int, default=2000, help="samples of the memory run")
    parser.add_argument("--skip-memory", action="store_true", help="only time iterations")
    args = parser.parse_args(argv)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    t = time_iterations(reps=args.reps, batch=args.batch)
    print(
        f"ResNet-18 paper split, batch {args.batch}, 28x28: split {1000 * t['split_s']:.1f} ms/it, "
        f"unsplit {1000 * t['unsplit_s']:.1f} ms/it, ratio of medians "
        f"{t['ratio_of_medians']:.3f}, median per-pair ratio {t['median_pair_ratio']:.3f} "
        f"(goal <= 1.05)"
    )
    if not args.skip_memory:
        if not (Path(args.data_dir) / "mnist").is_dir():
            print(f"memory part skipped: no MNIST under {args.data_dir}", file=sys.stderr)
            return 0
        m = memory_of_run(data_dir=args.data_dir, subset=args.subset)
        mb = 1e6
        print(
            f"5-client run on {args.subset} MNIST samples: "
            f"dataset {m['dataset_bytes'] / mb:.1f} MB "
            f"(subset share {m['subset_bytes'] / mb:.1f} MB), peak extra traced memory "
            f"{m['peak_traced_bytes'] / mb:.1f} MB, peak RSS growth "
            f"{m['peak_rss_growth_bytes'] / mb:.1f} MB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
