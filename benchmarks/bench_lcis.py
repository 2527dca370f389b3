"""Benchmark: LCIS cost does not grow with the number of labels K (SPEC section 2).

Times :func:`acpsl.lcis.lcis_scores` on a batch of B=128, N=64, H=W=8 at K=10 and K=100
labels and prints the ratio (goal: <= 2; the naive eq. 4 would be ~100x). Also times the
naive pairwise form of eq. 4 at both K for contrast.

Run: ``python benchmarks/bench_lcis.py [--repeats 200]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch

from acpsl.lcis import lcis_scores


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[int, tuple[float, float]] = {}
    for k in (10, 100):
        x, y = batch(classes=k, seed=k)
        fast = median_seconds(partial(lcis_scores, x, y), repeats=args.repeats)
        naive = median_seconds(partial(naive_pairs, x, y), repeats=max(5, args.repeats // 10))
        results[k] = (fast, naive)
        print(f"K={k:3d}: lcis_scores {fast * 1e3:7.3f} ms   naive eq. 4 {naive * 1e3:8.3f} ms")
    ratio = results[100][0] / results[10][0]
    naive_ratio = results[100][1] / results[10][1]
    print(f"time(K=100) / time(K=10): lcis_scores {ratio:.2f} (goal <= 2), naive {naive_ratio:.1f}")


if __name__ == "__main__":
    main()
