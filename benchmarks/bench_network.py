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
3. Real TCP bytes of that networked run: the client connects through a counting TCP proxy on
   loopback, so every byte of gRPC, HTTP/2 (frames, headers, settings, pings) is counted.
   Printed: TCP bytes per direction over the protobuf bytes the client sent/received (all
   calls, polls included), and the client-to-server TCP bytes over the uplink payloads
   (smashed data + labels + evaluation payloads).

Exit status 1 when a framing goal is missed (any wire/payload ratio above 1.02 at the
paper's size), so CI can run it.

Run: ``python benchmarks/bench_network.py [--model resnet18|smallcnn] [--subset 1024]``
(reads MNIST from ``--data-dir``, default ``../shared/data``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

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
#: Largest accepted wire bytes / payload bytes at the paper's cut.
GOAL = 1.02


class CountingProxy:
    """A TCP proxy on 127.0.0.1 that forwards to ``target`` and counts bytes per direction.

    Threads: one accepting, two per connection; every socket has a timeout and everything
    stops with :meth:`close`.
    """

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.up = 0  # client -> server
        self.down = 0  # server -> client
        self.connections = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._spawn(self._accept)

    def _spawn(self, fn: Any, *args: Any) -> None:
        thread = threading.Thread(target=fn, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self.connections += 1
            for sock in (client, server):
                sock.settimeout(0.2)
            self._spawn(self._pump, client, server, "up")
            self._spawn(self._pump, server, client, "down")

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        try:
            while not self._stop.is_set():
                try:
                    data = src.recv(1 << 16)
                except TimeoutError:
                    continue
                if not data:
                    break
                dst.sendall(data)
                with self._lock:
                    if direction == "up":
                        self.up += len(data)
                    else:
                        self.down += len(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=2)


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


def run_network(config: TrainConfig, out: Path) -> tuple[list[dict[str, float]], dict[str, int]]:
    """The run over gRPC: server here, one ``acpsl client`` process through a counting proxy.

    Returns:
        The records, and the byte counts: ``tcp_up``/``tcp_down`` (proxy) and
        ``pb_sent``/``pb_received`` (protobuf sizes of every call, from the client's report).
    """
    backend = EngineServerBackend(config=config, out_dir=out, log=None)
    server = SplitServer(backend=backend, options=ServerOptions(port=0))
    server.start()
    proxy = CountingProxy(server.port)
    client = subprocess.Popen(
        [
            *(sys.executable, "-m", "acpsl", "client", "--no-progress"),
            *("--server", f"127.0.0.1:{proxy.port}"),
        ],
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
        proxy.close()
    if client.returncode != 0:
        raise RuntimeError(f"client failed:\n{output}")
    found = re.search(r"([\d,]+) B sent, ([\d,]+) B received", output)
    if found is None:
        raise RuntimeError(f"no byte report in the client's output:\n{output}")
    counts = {
        "tcp_up": proxy.up,
        "tcp_down": proxy.down,
        "pb_sent": int(found.group(1).replace(",", "")),
        "pb_received": int(found.group(2).replace(",", "")),
        "connections": proxy.connections,
    }
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    return records, counts


def per_iteration(records: list[dict[str, float]]) -> float:
    """Seconds per iteration: the fastest warm round (round 2 on), so load spikes count less."""
    times = [
        float(r["round_s"]) / (int(r["iteration"]) - int(prev["iteration"]))
        for prev, r in itertools.pairwise(records)
    ]
    return min(times)


def main() -> int:
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

    failures: list[str] = []
    print("1. framing overhead at the paper's cut, [128, 64, 7, 7] float32, B=128")
    for name in ("standard", "acp"):
        f = framing(name, shape=(128, 64, 7, 7), seed=args.seed)
        for key in ("ratio_up", "tcp_ratio_up", "ratio_down"):
            if f[key] > GOAL:
                failures.append(f"{name} {key} {f[key]:.6f} > {GOAL}")
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
        remote, counts = run_network(config, Path(tmp) / "net")
        print(f"   networked run done in {time.perf_counter() - start:.1f} s")
        again = train(config, out_dir=Path(tmp) / "again", log=None).records
    t_local = min(per_iteration(local), per_iteration(again))
    t_net = per_iteration(remote)
    same = all(a["test_acc"] == b["test_acc"] for a, b in zip(local, remote))
    last = remote[-1]
    print(f"   in-process: {1000 * t_local:8.1f} ms/iteration")
    print(f"   gRPC      : {1000 * t_net:8.1f} ms/iteration   ratio {t_net / t_local:.3f}")
    wire_up = last["bytes_wire_up_total"] / (last["bytes_up_total"] + last["bytes_labels_total"])
    wire_down = last["bytes_wire_down_total"] / last["bytes_down_total"]
    print(
        f"   protobuf/payload over the run (bytes_wire_*): up {wire_up:.6f}, down "
        f"{wire_down:.6f}; same test accuracy: {same}"
    )
    payload_up = sum(
        last[f"bytes_{k}_total"] for k in ("up", "labels", "eval")
    )  # every uplink payload (eval: smashed data + labels of the test batches)
    tcp_payload = counts["tcp_up"] / payload_up
    print(
        f"3. real TCP bytes through a counting proxy ({counts['connections']} connection(s)):"
        f"\n   client->server {counts['tcp_up']:,} B = {counts['tcp_up'] / counts['pb_sent']:.6f}"
        f" x protobuf sent ({counts['pb_sent']:,} B, all calls)"
        f"\n   server->client {counts['tcp_down']:,} B = "
        f"{counts['tcp_down'] / counts['pb_received']:.6f} x protobuf received "
        f"({counts['pb_received']:,} B)"
        f"\n   client->server TCP / uplink payloads (smashed + labels + eval, {payload_up:,} B):"
        f" {tcp_payload:.6f}"
    )
    if args.model == "resnet18" and args.batch_size == 128:  # the paper's cut size
        for name, value in (("protobuf up", wire_up), ("TCP up", tcp_payload)):
            if value > GOAL:
                failures.append(f"measured {name} ratio {value:.6f} > {GOAL}")
    if failures:
        print("FRAMING GOAL MISSED: " + "; ".join(failures))
        return 1
    print(f"framing goal met (every wire/payload ratio <= {GOAL})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
