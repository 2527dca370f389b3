"""Benchmark: LCIS cost does not grow with the number of labels K (SPEC section 2).

Times :func:`acpsl.lcis.lcis_scores` on a batch of B=128, N=64, H=W=8 at K=10 and K=100
labels and prints the ratio of the median times (goal: <= 2; the naive eq. 4 would be ~100x),
with PASS or FAIL; exits 1 if the goal is missed. Also times the naive pairwise form of eq. 4
at both K for contrast. The two K alternate in rounds so machine load hits both alike.

Run: ``python benchmarks/bench_lcis.py [--repeats 200] [--rounds 5]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch

from acpsl.lcis import lcis_scores

#: Largest accepted time(K=100) / time(K=10).
GOAL = 2.0


def batch(*, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """B=128, N=64, 8x8 ReLU features with every one of ``classes`` labels present."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(128) % classes
    features = torch.relu(torch.randn(128, 64, 8, 8, generator=gen))
    return features, labels


def naive_pairs(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 4 summed over label pairs explicitly (O(K^2 N H W)), for contrast."""
    present = torch.unique(labels)
    means = torch.stack([features[labels == n].mean(dim=0) for n in present]).double()
    k = means.shape[0]
    total = torch.zeros(features.shape[1], dtype=torch.float64)
    for a in range(k):
        total += (means[a + 1 :] * means[a]).sum(dim=(0, 2, 3))
    return total / (k * (k - 1) / 2)


def median_seconds(fn: Callable[[], object], *, repeats: int) -> float:
    """Median CPU time of ``fn`` over ``repeats`` calls after a short warm-up.

    CPU time of this process (one torch thread), so that other jobs on a shared machine do
    not distort the ratio.
    """
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5, help="alternations of K=10 and K=100")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    inputs = {k: batch(classes=k, seed=k) for k in (10, 100)}
    per_round = max(5, args.repeats // args.rounds)
    fast: dict[int, list[float]] = {10: [], 100: []}
    for _ in range(args.rounds):
        for k, (x, y) in inputs.items():
            fast[k].append(median_seconds(partial(lcis_scores, x, y), repeats=per_round))
    naive = {
        k: median_seconds(partial(naive_pairs, x, y), repeats=max(5, args.repeats // 10))
        for k, (x, y) in inputs.items()
    }
    for k in inputs:
        print(
            f"K={k:3d}: lcis_scores {statistics.median(fast[k]) * 1e3:7.3f} ms   "
            f"naive eq. 4 {naive[k] * 1e3:8.3f} ms"
        )
    ratio = statistics.median(fast[100]) / statistics.median(fast[10])
    naive_ratio = naive[100] / naive[10]
    verdict = "PASS" if ratio <= GOAL else "FAIL"
    print(
        f"time(K=100) / time(K=10): lcis_scores {ratio:.2f} (goal <= {GOAL:g}) {verdict}; "
        f"naive {naive_ratio:.1f}"
    )
    return 0 if ratio <= GOAL else 1


if __name__ == "__main__":
    raise SystemExit(main())
