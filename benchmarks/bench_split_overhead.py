"""Overhead of split learning through bytes, and memory of a 5-client run.

1. Time per training iteration of ResNet-18 with the ACP-SL paper split (ImageNet stem, cut
   after the max-pool) on MNIST-sized batches, split through the cut as bytes (client
   forward, encode, decode, server forward/backward, gradient encode/decode, client
   backward: :class:`acpsl.engine.ClientRuntime` / :class:`acpsl.engine.ServerRuntime`),
   against the same model trained unsplit. Repetitions of the two are interleaved; the
   ratio of the medians must be <= 1.05 (PASS/FAIL).
2. Memory, in a fresh subprocess, from the kernel's peak resident set (``VmHWM`` in
   /proc/self/status, which sees torch's allocations, unlike tracemalloc): loading the full
   60,000-image MNIST training set, then building a 5-client run on it
   (:func:`acpsl.engine.setup.build_run`), against building it on a small subset of the
   same loaded data. Clients hold int64 index tensors into the one dataset, so the run
   holds one copy of the dataset, not two or more (PASS/FAIL), and the clients share the
   dataset's storage.

Exits 1 when a goal is missed. Needs Linux (/proc) for the memory part.

Run: ``python benchmarks/bench_split_overhead.py [--reps 15] [--batch 128] [--data-dir DIR]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from acpsl import models, schemes
from acpsl.config import TrainConfig
from acpsl.engine import ClientRuntime, ServerRuntime
from acpsl.engine.optim import make_optimizer
from acpsl.engine.setup import load_split

#: Goal of the timing part: split through bytes at most 5% slower than unsplit (medians).
GOAL = 1.05
#: Goal of the memory part: building the run adds less than one more copy of the dataset.
MAX_EXTRA_COPIES = 1.0


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


def _memory_kb() -> dict[str, int]:
    """``VmHWM`` (peak resident set) and ``VmRSS`` of this process, in kB, from /proc."""
    text = Path("/proc/self/status").read_text()
    return {
        key: int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1))  # type: ignore[union-attr]
        for key in ("VmHWM", "VmRSS")
    }


def _reset_peak() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux ``clear_refs`` 5); False where refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def memory_child(*, data_dir: str, clients: int, model: str, subset: int) -> dict[str, float]:
    """In a fresh process: the RSS of loading full MNIST, then of building a run on it.

    Baseline after the imports; load the 60,000 training images and the test set (the copy
    of the dataset that must be resident, and the loader's transient peak); reset the peak
    (``VmHWM``, Linux ``clear_refs``); build the ``clients``-client run
    (:func:`acpsl.engine.setup.build_run`) on the first ``subset`` samples of that loaded
    dataset (``0``: all of them) and read the build's peak.
    """
    from acpsl.engine.setup import build_run

    config = TrainConfig(
        scheme="acp",
        dataset="mnist",
        data_dir=data_dir,
        subset=subset or None,
        model=model,
        cut=4 if model == "resnet18" else None,
        stem="imagenet",
        clients=clients,
        optimizer="adam",
        lr=1e-3,
        progress=False,
        device="cpu",
    )
    torch.zeros(1).add_(1)  # initialise torch's allocator before the baseline
    gc.collect()
    base = _memory_kb()
    full = load_split(config.replace(subset=None), train=True)
    after_load = _memory_kb()
    load_split(config, train=False)  # cached, like the training set
    gc.collect()
    reset = _reset_peak()
    before = _memory_kb()["VmRSS"]
    run = build_run(config, device=torch.device("cpu"))
    after = _memory_kb()
    modules = {id(r.model): r.model for r in run.clients}
    modules[id(run.server.model)] = run.server.model
    kb = 1024
    return {
        "samples": float(len(run.train_set)),
        "dataset_bytes": float(
            full.images.numel() * full.images.element_size()
            + full.labels.numel() * full.labels.element_size()
        ),
        "load_peak_extra_bytes": float((after_load["VmHWM"] - base["VmHWM"]) * kb),
        "load_resident_extra_bytes": float((after_load["VmRSS"] - base["VmRSS"]) * kb),
        "build_peak_bytes": float(((after["VmHWM"] if reset else after["VmRSS"]) - before) * kb),
        "model_bytes": float(
            sum(t.numel() * t.element_size() for m in modules.values() for t in m.parameters())
        ),
        "parts_bytes": float(sum(p.numel() * p.element_size() for p in run.parts)),
        "shared": float(
            all(p.dtype == torch.int64 and p.dim() == 1 for p in run.parts)
            and run.train_set.images.data_ptr() == full.images.data_ptr()
        ),
        "peak_reset": float(reset),
    }


def _child(*, data_dir: str, clients: int, model: str, subset: int) -> dict[str, float]:
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import bench_split_overhead as b; "
        "print(json.dumps(b.memory_child(data_dir=sys.argv[2], clients=int(sys.argv[3]), "
        "model=sys.argv[4], subset=int(sys.argv[5]))))"
    )
    argv = [str(Path(__file__).parent), data_dir, str(clients), model, str(subset)]
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory_of_run(*, data_dir: str, clients: int, model: str) -> dict[str, float]:
    """How many copies of the training set a run on full MNIST holds (two fresh processes).

    The run is built once on all 60,000 samples and once on ``20 * clients`` of them, each
    in its own fresh process after loading the same dataset: the two builds differ only in
    what grows with the training data (the clients' int64 index tensors, and a copy of the
    images if a client made one). ``copies`` = (resident dataset after loading + that
    difference) / dataset bytes: about 1 when the clients index one shared dataset, 2 or
    more if they copied it.
    """
    full = _child(data_dir=data_dir, clients=clients, model=model, subset=0)
    small = _child(data_dir=data_dir, clients=clients, model=model, subset=20 * clients)
    data_extra = full["build_peak_bytes"] - small["build_peak_bytes"]
    return {
        **full,
        "small_samples": small["samples"],
        "small_build_peak_bytes": small["build_peak_bytes"],
        "data_extra_bytes": data_extra,
        "copies": (full["load_resident_extra_bytes"] + max(0.0, data_extra))
        / full["dataset_bytes"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15, help="timed repetitions (default: 15)")
    parser.add_argument("--batch", type=int, default=128, help="batch size (default: 128)")
    parser.add_argument(
        "--goal", type=float, default=GOAL, help=f"largest split/unsplit ratio (default: {GOAL})"
    )
    parser.add_argument(
        "--data-dir",
        default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"),
        help="dataset root for the memory part (default: ../shared/data)",
    )
    parser.add_argument("--clients", type=int, default=5, help="clients of the memory run")
    parser.add_argument(
        "--model", default="resnet18", help="model of the memory run (default: resnet18)"
    )
    parser.add_argument("--skip-memory", action="store_true", help="only time iterations")
    parser.add_argument("--skip-timing", action="store_true", help="only measure memory")
    args = parser.parse_args(argv)

    failed = False
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if not args.skip_timing:
        t = time_iterations(reps=args.reps, batch=args.batch)
        ok = t["ratio_of_medians"] <= args.goal
        failed |= not ok
        print(
            f"ResNet-18 paper split, batch {args.batch}, 28x28, {args.reps} reps: split "
            f"{1000 * t['split_s']:.1f} ms/it, unsplit {1000 * t['unsplit_s']:.1f} ms/it "
            f"(medians), ratio of medians {t['ratio_of_medians']:.3f}, median per-pair ratio "
            f"{t['median_pair_ratio']:.3f}: {'PASS' if ok else 'FAIL'} (goal <= {args.goal})"
        )
    if not args.skip_memory:
        if not (Path(args.data_dir) / "mnist").is_dir():
            print(f"memory part skipped: no MNIST under {args.data_dir}", file=sys.stderr)
            return 1 if failed else 0
        m = memory_of_run(data_dir=args.data_dir, clients=args.clients, model=args.model)
        mb, data = 1e6, m["dataset_bytes"]
        ok = bool(m["shared"]) and m["copies"] < 1 + MAX_EXTRA_COPIES
        failed |= not ok
        print(
            f"full MNIST ({int(m['samples'])} samples, {data / mb:.1f} MB): loading it leaves "
            f"+{m['load_resident_extra_bytes'] / mb:.1f} MB resident (peak "
            f"+{m['load_peak_extra_bytes'] / mb:.1f} MB = "
            f"{m['load_peak_extra_bytes'] / data:.2f}x the dataset, transient, in the loader)"
        )
        print(
            f"building a {args.clients}-client {args.model} run: peak "
            f"+{m['build_peak_bytes'] / mb:.1f} MB on all samples vs "
            f"+{m['small_build_peak_bytes'] / mb:.1f} MB on {int(m['small_samples'])} (models "
            f"{m['model_bytes'] / mb:.1f} MB of parameters): the training data adds "
            f"{m['data_extra_bytes'] / mb:.2f} MB (index tensors {m['parts_bytes'] / mb:.2f} MB)"
        )
        print(
            f"dataset copies held: {m['copies']:.3f}; clients index one shared dataset: "
            f"{bool(m['shared'])}: {'PASS' if ok else 'FAIL'} (goal: fewer than "
            f"{1 + MAX_EXTRA_COPIES:g} copies)"
        )
    print("FAIL" if failed else "PASS")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
