"""Cold start: the first call of each scheme in a fresh process, after the set-up step.

Numba compiles a kernel on its first call with a new type signature (about 9 s for all of
them on an idle machine) unless its on-disk cache holds it; the README's set-up step runs
``python -m acpsl.warmup`` so that it does. For every registered scheme this benchmark starts
a new Python process, imports acpsl and PyTorch (not timed), then times the scheme's first
encode/decode of a ResNet-18-cut-shaped batch (``[128, 64, 8, 8]``) both ways, and, for
comparison, the second. Goal: the first call under 1 s. The ratio first/second says how much
of the first call is one-off work (loading cached machine code, allocations).

Run ``python -m acpsl.warmup`` first (``make bench`` does, through its set-up); with a
cold cache the first calls include compilation and the goal is missed, which is what the
set-up step exists to avoid.

Run: ``python benchmarks/bench_cold_start.py [SCHEME ...]``. Exits 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

#: Goal: seconds of a scheme's first call in a fresh process.
GOAL_S = 1.0

_CHILD = r"""
import json, sys, time
import torch
from acpsl import schemes
from acpsl.warmup import VARIANTS

name = sys.argv[1]
params = dict(VARIANTS.get(name, ({},))[0])
gen = torch.Generator().manual_seed(0)
x = torch.relu(torch.randn(128, 64, 8, 8, generator=gen))
y = torch.arange(128) % 10

def call():
    client, server = schemes.create(name, **params), schemes.create(name, **params)
    start = time.perf_counter()
    payload = client.compress(x, labels=y, training=True)
    rebuilt = server.decompress(payload)
    client.decompress_grad(server.compress_grad(torch.ones_like(rebuilt)))
    return time.perf_counter() - start

first = call()
second = call()
print(json.dumps({"first": first, "second": second}))
"""


def measure(name: str) -> dict[str, float]:
    """First and second call of ``name`` in a new process (seconds)."""
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, name], capture_output=True, text=True, check=True
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    from acpsl import schemes

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("schemes", nargs="*", help="only these (default: every scheme)")
    args = parser.parse_args(argv)
    failed = []
    head = f"{'scheme':<10} {'first call':>11} {'second':>9} {'first/second':>13}"
    print(f"{head}  goal < {GOAL_S} s")
    for name in args.schemes or schemes.names():
        t = measure(name)
        ok = t["first"] < GOAL_S
        if not ok:
            failed.append(name)
        ratio = t["first"] / t["second"] if t["second"] > 0 else float("inf")
        print(
            f"{name:<10} {t['first']:>10.3f}s {t['second']:>8.3f}s {ratio:>13.1f}  "
            f"{'PASS' if ok else 'FAIL'}"
        )
    if failed:
        print(f"first call over {GOAL_S} s: {', '.join(failed)} (is the Numba cache warm?)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
