"""Benchmark: time of one split-learning iteration with ``acp`` over ``standard``.

The paper's split (ResNet-18, ImageNet stem, greyscale 28x28 MNIST-sized input, B=128, client =
conv1/bn1/relu/maxpool): client forward + compress + decompress + server forward/backward +
compress_grad + decompress_grad + client backward + SGD step on both sides. The two schemes
alternate iteration by iteration so machine load hits both alike; the ratio of the median
wall and CPU times is printed (goal: <= 1.05) together with the uplink bytes of each, with
PASS or FAIL; exits 1 if the goal is missed. The verdict uses the CPU-time ratio on the CPU
(this process's own work, which other jobs on a shared machine do not inflate) and the
wall-time ratio on CUDA (where the host's CPU time is mostly waiting).

Run: ``python benchmarks/bench_acp_iteration.py [--iterations 20] [--device cpu|cuda]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from tqdm import tqdm

from acpsl import models, schemes


def make_iteration(name: str, *, device: torch.device, batch: int, seed: int) -> Callable[[], int]:
    """A closure running one full SL iteration of scheme ``name``; returns its uplink bytes."""
    split = models.create(
        "resnet18", in_channels=1, num_classes=10, cut=4, stem="imagenet", seed=seed
    )
    client_model, server_model = split.client.to(device), split.server.to(device)
    client_opt = torch.optim.SGD(client_model.parameters(), lr=0.01, momentum=0.9)
    server_opt = torch.optim.SGD(server_model.parameters(), lr=0.01, momentum=0.9)
    client_side, server_side = schemes.create(name), schemes.create(name)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1, 28, 28, generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    state = {"t": 0}

    def iteration() -> int:
        state["t"] += 1
        client_opt.zero_grad(set_to_none=True)
        server_opt.zero_grad(set_to_none=True)
        a = client_model(x)
        client_side.set_iteration(t=state["t"], total=10_000)
        up = client_side.compress(a.detach(), labels=y)
        smashed = server_side.decompress(up).to(device).requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(server_model(smashed), y)
        loss.backward()
        server_opt.step()
        assert smashed.grad is not None
        down = server_side.compress_grad(smashed.grad)
        a.backward(client_side.decompress_grad(down).to(device))
        client_opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return len(up)

    return iteration


#: Largest accepted time(acp) / time(standard) per iteration.
GOAL = 1.05


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    runs = {
        name: make_iteration(name, device=device, batch=args.batch, seed=0)
        for name in ("standard", "acp")
    }
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    sizes: dict[str, int] = {}
    for name, run in runs.items():  # warm-up
        for _ in range(3):
            sizes[name] = run()
    for _ in tqdm(range(args.iterations), desc="iterations", leave=False):
        for name, run in runs.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            sizes[name] = run()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    for name in runs:
        print(
            f"{name:8s}: {statistics.median(wall[name]) * 1e3:8.2f} ms/iteration wall, "
            f"{statistics.median(cpu[name]) * 1e3:8.2f} ms CPU, uplink {sizes[name]:9d} bytes"
        )
    ratio_wall = statistics.median(wall["acp"]) / statistics.median(wall["standard"])
    ratio_cpu = statistics.median(cpu["acp"]) / statistics.median(cpu["standard"])
    judged = ratio_wall if device.type == "cuda" else ratio_cpu
    verdict = "PASS" if judged <= GOAL else "FAIL"
    print(
        f"time(acp) / time(standard) = {ratio_wall:.3f} wall, {ratio_cpu:.3f} CPU "
        f"(goal <= {GOAL:g}, judged on {'wall' if device.type == 'cuda' else 'CPU'}) on "
        f"{device}; uplink ratio {sizes['acp'] / sizes['standard']:.3f}  {verdict}"
    )
    return 0 if judged <= GOAL else 1


if __name__ == "__main__":
    raise SystemExit(main())
