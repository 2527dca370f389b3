"""Benchmark: what the network adds to split learning — bytes (framing) and time per iteration.

1. Framing overhead at the paper's smashed-data size (ACP-SL: ResNet-18 cut after the stem,
   B=128, a [128, 64, 7, 7] float32 uplink): serialized protobuf size of the Step request
   (``ByteSize()``, what the records call ``bytes_wire_up``) over the payload bytes
   (smashed data + labels), for ``standard`` and ``acp``; goal <= 1.02. Also an estimate of
   the bytes on TCP: + 5 bytes of gRPC length prefix and 9 bytes of HTTP/2 DATA frame header
   per 16 KiB frame.
2. Time per training iteration over gRPC on loopback (server in this process, the client in
   its own ``acpsl client`` process) against the in-process engine on the same run; ratio
   printed. Both runs use the engine's records (``round_s`` / iterations of the round; the
   fastest round from the second on is compared; each round ends with a one-batch
   evaluation).

Run: ``python benchmarks/bench_network.py [--model resnet18|smallcnn] [--subset 1024]``
(reads MNIST from ``--data-dir``, default ``../shared/data``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from acpsl import schemes
from acpsl.config import TrainConfig
from acpsl.cut.labels import encode_labels
from acpsl.engine.loop import train
from acpsl.transport import splitlearning_pb2 as pb
from acpsl.transport.backend import EngineServerBackend
from acpsl.transport.server import ServerOptions, SplitServer

#: HTTP/2's default largest DATA frame, and the header of each frame.
H2_FRAME = 16_384
H2_HEADER = 9
#: gRPC's per-message prefix (1 byte compressed flag + 4 bytes length).
GRPC_PREFIX = 5


def framing(scheme: str, *, shape: tuple[int, ...], seed: int) -> dict[str, float]:
    """Payload and wire sizes of one uplink and downlink of ``scheme`` at ``shape``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen).relu()
    y = torch.randint(0, 10, (shape[0],), generator=gen)
    client, server = schemes.create(scheme), schemes.create(scheme)
    client.set_iteration(t=1, total=100)
    smashed = client.compress(x, labels=y)
    labels = encode_labels(y)
    server.decompress(smashed)
    grad = server.compress_grad(torch.randn(shape, generator=gen))
    session = pb.Session(client_id=4, key=os.urandom(16))
    up = pb.StepRequest(session=session, turn=12, t=100_000, smashed=smashed, labels=labels)
    down = pb.StepReply(grad=grad)
    payload_up = len(smashed) + len(labels)

    def on_tcp(message_bytes: int) -> int:
        framed = GRPC_PREFIX + message_bytes
        return framed + H2_HEADER * -(-framed // H2_FRAME)

    return {
        "payload_up": payload_up,
        "wire_up": up.ByteSize(),
        "ratio_up": up.ByteSize() / payload_up,
        "tcp_ratio_up": on_tcp(up.ByteSize()) / payload_up,
        "payload_down": len(grad),
        "wire_down": down.ByteSize(),
        "ratio_down": down.ByteSize() / len(grad),
    }


def run_network(config: TrainConfig, out: Path) -> list[dict[str, float]]:
    """The run over gRPC: server here, one ``acpsl client`` process."""
    backend = EngineServerBackend(config=config, out_dir=out, log=None)
    server = SplitServer(backend=backend, options=ServerOptions(port=0))
    server.start()
    client = subprocess.Popen(
        [sys.executable, "-m", "acpsl", "client", "--server", server.address, "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        if not server.wait(timeout=1800):
            raise RuntimeError("the networked run did not finish in 30 minutes")
        output, _ = client.communicate(timeout=60)
    finally:
        server.stop()
        if client.poll() is None:
            client.kill()
    if client.returncode != 0:
        raise RuntimeError(f"client failed:\n{output}")
    return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]


def per_iteration(records: list[dict[str, float]]) -> float:
    """Seconds per iteration: the fastest warm round (round 2 on), so load spikes count less."""
    times = [
        float(r["round_s"]) / (int(r["iteration"]) - int(prev["iteration"]))
        for prev, r in itertools.pairwise(records)
    ]
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_data = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    parser.add_argument("--data-dir", default=str(default_data))
    parser.add_argument("--model", default="resnet18", choices=("resnet18", "smallcnn"))
    parser.add_argument("--scheme", default="standard")
    parser.add_argument("--subset", type=int, default=1024, help="training samples")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="rounds (>= 2; round 1 is warm-up)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (the first round is a warm-up)")

    print("1. framing overhead at the paper's cut, [128, 64, 7, 7] float32, B=128")
    for name in ("standard", "acp"):
        f = framing(name, shape=(128, 64, 7, 7), seed=args.seed)
        print(
            f"   {name:8s} up: payload {f['payload_up']:>9,.0f} B, wire {f['wire_up']:>9,.0f} B,"
            f" ratio {f['ratio_up']:.6f} (with gRPC+HTTP/2 frames ~{f['tcp_ratio_up']:.6f}); "
            f"down: payload {f['payload_down']:>9,.0f} B, ratio {f['ratio_down']:.6f}"
        )

    cut = 4 if args.model == "resnet18" else 1
    config = TrainConfig(
        scheme=args.scheme,
        dataset="mnist",
        data_dir=args.data_dir,
        model=args.model,
        cut=cut,
        subset=args.subset,
        test_subset=args.batch_size,
        clients=1,
        rounds=args.rounds,
        batch_size=args.batch_size,
        lr=0.01,
        seed=args.seed,
        device="cpu",
        progress=False,
    )
    print(
        f"2. time per iteration, {args.model} cut {cut}, {args.scheme}, B={args.batch_size}, "
        f"{args.subset // args.batch_size} iterations per round, CPU "
        f"({torch.get_num_threads()} threads)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        # in-process before and after the networked run, so a load change hits both alike
        start = time.perf_counter()
        local = train(config, out_dir=Path(tmp) / "local", log=None).records
        print(f"   in-process run done in {time.perf_counter() - start:.1f} s")
        start = time.perf_counter()
        remote = run_network(config, Path(tmp) / "net")
        print(f"   networked run done in {time.perf_counter() - start:.1f} s")
        again = train(config, out_dir=Path(tmp) / "again", log=None).records
    t_local = min(per_iteration(local), per_iteration(again))
    t_net = per_iteration(remote)
    same = all(a["test_acc"] == b["test_acc"] for a, b in zip(local, remote))
    last = remote[-1]
    print(f"   in-process: {1000 * t_local:8.1f} ms/iteration")
    print(f"   gRPC      : {1000 * t_net:8.1f} ms/iteration   ratio {t_net / t_local:.3f}")
    print(
        f"   wire/payload over the run: up "
        f"{last['bytes_wire_up'] / (last['bytes_up'] + last['bytes_labels']):.6f}, down "
        f"{last['bytes_wire_down'] / last['bytes_down']:.6f}; same test accuracy: {same}"
    )


if __name__ == "__main__":
    main()
