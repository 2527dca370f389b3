"""Throughput of every scheme's cut (compress + decompress) against ``torch.clone``.

Usage::

    python benchmarks/bench_schemes.py [--shape 128 64 8 8] [--repeats 20] [--threads 1]

For each registered scheme, with its default parameters, on one float32 batch (ReLU'd
Gaussian, like post-activation smashed data): the best time of ``compress`` followed by
``decompress``, and the ratio ``clone time / scheme time`` (1.0 = as fast as copying the
tensor once). Also printed: the downlink (``compress_grad`` + ``decompress_grad``) time and the
uplink bytes against the float32 size. Goals: ratio >= 0.2 for every scheme except top-k and
RandTopk (>= 0.05), which must select per sample.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

import acpsl.schemes as schemes

GOALS = {"topk": 0.05, "randtopk": 0.05}
DEFAULT_GOAL = 0.2


def paired_seconds(
    fn: Callable[[], object], reference: Callable[[], object], *, repeats: int
) -> tuple[float, float]:
    """Best wall time of ``fn`` and of ``reference`` over ``repeats`` interleaved calls.

    Interleaving and taking the minimum make the ratio robust to a loaded machine: both are
    measured under the same conditions, and the minimum is the run least disturbed.
    """
    fn()
    reference()
    best, best_ref = float("inf"), float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        reference()
        middle = time.perf_counter()
        fn()
        end = time.perf_counter()
        best_ref = min(best_ref, middle - start)
        best = min(best, end - middle)
    return best, best_ref


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs="+", default=[128, 64, 8, 8])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(*args.shape, generator=gen).relu()
    g = torch.randn(*args.shape, generator=gen)
    labels = torch.randint(0, 10, (args.shape[0],), generator=gen)
    print(
        f"batch {tuple(x.shape)} float32 = {4 * x.numel()} bytes; torch threads "
        f"{torch.get_num_threads()}; times: best of {args.repeats}, interleaved with clone"
    )
    header = (
        f"{'scheme':<10} {'clone ms':>8} {'up ms':>8} {'ratio':>7} {'goal':>5} {'down ms':>8} "
        f"{'up bytes':>10} {'of fp32':>8}"
    )
    print(header)
    print("-" * len(header))
    failed = []
    for name in schemes.names():
        client, server = schemes.create(name), schemes.create(name)
        client.set_iteration(t=1, total=100)
        server.set_iteration(t=1, total=100)

        def uplink(client: schemes.Scheme = client, server: schemes.Scheme = server) -> bytes:
            data = client.compress(x, labels=labels)
            server.decompress(data)
            return data

        up, clone = paired_seconds(uplink, x.clone, repeats=args.repeats)
        data = uplink()
        down, _ = paired_seconds(
            lambda client=client, server=server: client.decompress_grad(server.compress_grad(g)),
            x.clone,
            repeats=args.repeats,
        )
        ratio = clone / up
        goal = GOALS.get(name, DEFAULT_GOAL)
        if ratio < goal:
            failed.append(name)
        print(
            f"{name:<10} {clone * 1e3:8.3f} {up * 1e3:8.3f} {ratio:7.3f} {goal:5.2f} "
            f"{down * 1e3:8.3f} {len(data):10d} {len(data) / (4 * x.numel()):8.3f}"
        )
    print("below goal: " + (", ".join(failed) if failed else "none"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
