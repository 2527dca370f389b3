"""Compile the cut's Numba kernels ahead of time: ``python -m acpsl.warmup``.

Numba compiles a kernel the first time it is called with a new type signature (about 9 s
for all of them on an idle machine, a minute on a loaded one) and caches the machine code on
disk (beside :mod:`acpsl.kernels`, or in ``$NUMBA_CACHE_DIR``). The set-up step
(``make demo`` / ``make test`` create the environment) runs this module once, so that the
first scheme call of any later process only loads the cache (well under a second).

It goes through the public scheme API, not the kernels themselves: every registered scheme
encodes and decodes a batch of each shape kind training and evaluation use (4-D smashed data
large enough for the multi-threaded kernels, a small 2-D feature batch for the serial ones),
forward and backward, with the parameters that select each code path (index lists and bit
masks, 2/4/8-bit codes). A scheme whose kernels change is thus warmed without touching this
file.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

logger = logging.getLogger(__name__)

#: Scheme parameters that select the kernels' code paths (others use their defaults).
VARIANTS: dict[str, tuple[dict[str, Any], ...]] = {
    "topk": ({"keep_ratio": 0.05}, {"keep_ratio": 0.6}),
    "randtopk": ({"keep_ratio": 0.05, "alpha": 0.1}, {"keep_ratio": 0.6, "alpha": 0.1}),
    "sizered": ({"keep_ratio": 0.1},),
    "quant": ({"bits": 2}, {"bits": 4}, {"bits": 8}),
    "l1": ({"lam": 1e-4},),
}


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Smashed-data-like batches (non-negative, with zeros, as after a ReLU) and labels."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for shape in ((32, 64, 8, 8), (6, 64)):
        x = torch.relu(torch.randn(*shape, generator=gen))
        y = torch.arange(shape[0]) % 3
        out.append((x, y))
    # one batch with a single label (ACP-SL's K = 1 path)
    out.append((out[1][0], torch.zeros(6, dtype=torch.int64)))
    return out


def warm_scheme(name: str, params: dict[str, Any]) -> float:
    """Run every codec path of scheme ``name`` once; returns the seconds it took."""
    from acpsl import schemes

    start = time.perf_counter()
    for x, y in _batches():
        client = schemes.create(name, **params)
        server = schemes.create(name, **params)
        for training in (True, False):
            payload = client.compress(x, labels=y if training else None, training=training)
            rebuilt = server.decompress(payload)
            if training:
                down = server.compress_grad(torch.ones_like(rebuilt))
                client.decompress_grad(down)
    return time.perf_counter() - start


def warm(
    names: Sequence[str] | None = None, *, log: Callable[[str], None] | None = None
) -> dict[str, float]:
    """Compile (or load from the cache) the kernels of ``names`` (default: every scheme).

    Returns:
        Seconds per scheme.
    """
    from acpsl import schemes

    say = log if log is not None else logger.info
    times: dict[str, float] = {}
    for name in names or schemes.names():
        seconds = sum(warm_scheme(name, p) for p in VARIANTS.get(name, ({},)))
        times[name] = seconds
        say(f"{name}: {seconds:.2f} s")
    return times


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m acpsl.warmup [SCHEME ...]``."""
    parser = argparse.ArgumentParser(
        prog="python -m acpsl.warmup",
        description="Compile the cut's Numba kernels now (cached on disk), so that the first "
        "scheme call of later processes costs well under a second.",
    )
    parser.add_argument("schemes", nargs="*", help="only these schemes (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="warm-up %(message)s")
    start = time.perf_counter()
    warm(args.schemes or None)
    logger.info("kernels ready in %.1f s", time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
