"""Split learning over gRPC on loopback: real processes, real MNIST, real signals.

Every test binds 127.0.0.1 on a free port, bounds every wait with a timeout, and compares
what crossed the network with the in-process engine run on the same seed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

grpc = pytest.importorskip("grpc")

import torch  # noqa: E402

from acpsl import __version__  # noqa: E402
from acpsl.config import TrainConfig  # noqa: E402
from acpsl.cut.labels import encode_labels  # noqa: E402
from acpsl.cut.payload import KIND_FORWARD, header_size  # noqa: E402
from acpsl.engine.loop import train  # noqa: E402
from acpsl.schemes.standard import StandardScheme, encode_dense  # noqa: E402
from acpsl.transport import splitlearning_pb2 as pb  # noqa: E402
from acpsl.transport import splitlearning_pb2_grpc as pb_grpc  # noqa: E402
from acpsl.transport.backend import EngineClientBackend, EngineServerBackend  # noqa: E402
from acpsl.transport.client import ClientOptions, SplitClient, TransportError  # noqa: E402
from acpsl.transport.coordinator import Timing  # noqa: E402
from acpsl.transport.security import TlsFiles, token_metadata  # noqa: E402
from acpsl.transport.server import ServerOptions, SplitServer  # noqa: E402

pytestmark = pytest.mark.net

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TOKEN = "test-token-123"
#: Fields that legitimately differ between two runs (clock) or exist only on the network.
VOLATILE = {"round_s", "wall_s"}

needs_mnist = pytest.mark.skipif(
    not (DATA / "mnist" / "train-images-idx3-ubyte.gz").exists(),
    reason=f"MNIST not found in {DATA / 'mnist'}",
)


def small_config(**changes: Any) -> TrainConfig:
    """A few-second MNIST run: SmallCNN (cut after block1), 2 clients, 2 rounds."""
    base: dict[str, Any] = {
        "dataset": "mnist",
        "data_dir": str(DATA),
        "model": "smallcnn",
        "cut": 1,
        "subset": 240,
        "test_subset": 100,
        "clients": 2,
        "rounds": 2,
        "batch_size": 32,
        "optimizer": "adam",
        "lr": 0.003,
        "seed": 11,
        "device": "cpu",
        "progress": False,
    }
    base.update(changes)
    return TrainConfig(**base)


def fast_timing(**changes: float) -> Timing:
    values = {"client_timeout": 3.0, "join_timeout": 60.0, "rejoin_timeout": 20.0, "poll_s": 0.2}
    values.update(changes)
    return Timing(**values)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch single-threaded, like the client processes (OMP_NUM_THREADS=1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def reference_records(config: TrainConfig, out: Path) -> list[dict[str, Any]]:
    """The in-process engine's records of ``config``."""
    with one_thread():
        train(config, out_dir=out, log=None)
    return read_jsonl(out / "records.jsonl")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def assert_same_records(net: list[dict[str, Any]], ref: list[dict[str, Any]]) -> None:
    """Every in-process field equal (exactly: same computation, same bytes), clock aside."""
    assert [r["round"] for r in net] == [r["round"] for r in ref]
    for got, want in zip(net, ref):
        for key, value in want.items():
            if key not in VOLATILE:
                assert got[key] == value, f"round {want['round']}: {key}"


def start_server(
    config: TrainConfig,
    out: Path,
    *,
    backend_cls: type[EngineServerBackend] = EngineServerBackend,
    resume: bool = False,
    port: int = 0,
    **options: Any,
) -> SplitServer:
    backend = backend_cls(config=config, out_dir=out, resume=resume, log=None)
    opts: dict[str, Any] = {"port": port, "token": TOKEN, "timing": fast_timing()}
    opts.update(options)
    server = SplitServer(backend=backend, options=ServerOptions(**opts))
    server.start()
    return server


class ClientThread(threading.Thread):
    """An in-process client (the same SplitClient and backend the CLI runs)."""

    def __init__(self, address: str, *, client_id: int = -1, **options: Any) -> None:
        super().__init__(daemon=True)
        opts: dict[str, Any] = {"token": TOKEN, "client_id": client_id, "connect_timeout": 30.0}
        opts.update(options)
        self.client = SplitClient(
            backend=EngineClientBackend(), options=ClientOptions(server=address, **opts)
        )
        self.result: str | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with one_thread():
                self.result = self.client.run()
        except BaseException as exc:
            self.error = exc
        finally:
            self.client.close()

    def finish(self, timeout: float = 60.0) -> str:
        self.join(timeout)
        assert not self.is_alive(), "client thread did not finish in time"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def cli_args(config: TrainConfig) -> list[str]:
    return [
        f"--{k.replace('_', '-')}={v}"
        for k, v in (
            ("dataset", config.dataset),
            ("data_dir", config.data_dir),
            ("model", config.model),
            ("cut", config.cut),
            ("subset", config.subset),
            ("test_subset", config.test_subset),
            ("clients", config.clients),
            ("rounds", config.rounds),
            ("batch_size", config.batch_size),
            ("optimizer", config.optimizer),
            ("lr", config.lr),
            ("seed", config.seed),
            ("device", config.device),
            ("scheme", config.scheme),
            ("mode", config.mode),
        )
    ] + ["--no-progress"]


def spawn_client(address: str, *extra: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "acpsl", "client", "--server", address, "--token", TOKEN]
    return subprocess.Popen(
        [*cmd, "--connect-timeout", "60", *extra],
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish_process(proc: subprocess.Popen[str], timeout: float = 120.0) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"process {proc.args} did not finish in {timeout} s:\n{out}")
    return out


# ------------------------------------------------------------------ processes, real MNIST
@needs_mnist
def test_server_and_three_client_processes_match_in_process_engine(tmp_path: Path) -> None:
    config = small_config(clients=3, subset=288, scheme="acp", rounds=2)
    out, port_file = tmp_path / "net", tmp_path / "port"
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "acpsl", "serve", "--out", str(out), "--port", "0"),
            *("--port-file", str(port_file), "--token", TOKEN, "--client-timeout", "60"),
            *cli_args(config),
        ],
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    clients: list[subprocess.Popen[str]] = []
    try:
        deadline = time.monotonic() + 90
        while not port_file.exists():
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail("server did not start:\n" + finish_process(server))
            time.sleep(0.05)
        address = f"127.0.0.1:{int(port_file.read_text())}"
        clients = [spawn_client(address) for _ in range(3)]
        outputs = [finish_process(p) for p in clients]
        server_out = finish_process(server)
    finally:
        for proc in [server, *clients]:
            if proc.poll() is None:
                proc.kill()
    assert server.returncode == 0, server_out
    for proc, text in zip(clients, outputs):
        assert proc.returncode == 0, text
        assert "run complete" in text
    net = read_jsonl(out / "records.jsonl")
    ref = reference_records(TrainConfig.from_toml(out / "config.toml"), tmp_path / "ref")
    assert_same_records(net, ref)
    assert net[-1]["test_acc"] > 0.5  # it learned (10 classes: chance is 0.1)
    for record in net:
        # wire = payload + framing; framing is a few bytes per message
        payload_up = record["bytes_up"] + record["bytes_labels"]
        assert payload_up < record["bytes_wire_up"] <= 1.01 * payload_up
        assert record["bytes_down"] < record["bytes_wire_down"] <= 1.01 * record["bytes_down"]
        # the relay goes through the server: every hand-off crosses the wire twice
        assert record["bytes_wire_model"] > record["bytes_model"]
        assert record["clients_dropped"] == []
    assert (out / "summary.json").exists() and (out / "checkpoint.pt").exists()


@needs_mnist
def test_client_killed_mid_round_with_sigkill_run_still_finishes(tmp_path: Path) -> None:
    victim_id = 1
    at_victim_step = threading.Event()
    release = threading.Event()

    class Hooked(EngineServerBackend):
        """Holds the victim's second step until the test has killed it."""

        victim_steps = 0

        def train_step(self, *, client_id: int, t: int, smashed: bytes, labels: bytes) -> bytes:
            if client_id == victim_id:
                Hooked.victim_steps += 1
                if Hooked.victim_steps == 2:
                    at_victim_step.set()
                    release.wait(60)
            return super().train_step(client_id=client_id, t=t, smashed=smashed, labels=labels)

    config = small_config(clients=3, subset=288)
    server = start_server(config, tmp_path / "net", backend_cls=Hooked)
    victim: subprocess.Popen[str] | None = None
    try:
        good = [ClientThread(server.address, client_id=c) for c in (0, 2)]
        for thread in good:
            thread.start()
        victim = spawn_client(server.address, "--client-id", str(victim_id))
        assert at_victim_step.wait(120), "the victim never reached its second step"
        victim.send_signal(signal.SIGKILL)  # a real crash, mid-round, mid-step
        victim.wait(30)
        release.set()
        assert server.wait(timeout=120), "the run did not finish after the kill"
        assert [t.finish() for t in good] == ["run complete", "run complete"]
    finally:
        release.set()
        server.stop()
        if victim is not None and victim.poll() is None:
            victim.kill()
    assert victim.returncode == -signal.SIGKILL
    assert server.coordinator.error is None
    records = read_jsonl(tmp_path / "net" / "records.jsonl")
    assert [r["round"] for r in records] == [1, 2]
    assert [r["clients_dropped"] for r in records] == [[victim_id], [victim_id]]
    batches = (96 + 31) // 32  # 288 samples over 3 clients, batch 32
    # round 1: clients 0 and 2 in full plus the victim's 2 steps; round 2: clients 0 and 2
    assert [r["iteration"] for r in records] == [2 * batches + 2, 4 * batches + 2]
    assert all(r["test_acc"] is not None for r in records)


# ------------------------------------------------------------------------------ security
@needs_mnist
def test_wrong_or_missing_token_is_rejected_and_server_keeps_serving(tmp_path: Path) -> None:
    server = start_server(small_config(clients=1, rounds=1), tmp_path / "net")
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.SplitLearningStub(channel)
            request = pb.ConfigRequest(version=__version__)
            for metadata in ((), token_metadata("wrong-token"), (("authorization", TOKEN),)):
                with pytest.raises(grpc.RpcError) as info:
                    stub.GetConfig(request, metadata=metadata, timeout=10)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert "token" in info.value.details()
            reply = stub.GetConfig(request, metadata=token_metadata(TOKEN), timeout=10)
            assert "smallcnn" in reply.config_toml
            with pytest.raises(grpc.RpcError) as info:
                stub.Join(
                    pb.JoinRequest(requested_id=0, version="0.0.0"),
                    metadata=token_metadata(TOKEN),
                    timeout=10,
                )
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        # a real client with the wrong token stops with a clear error
        client = ClientThread(server.address, token="nope", connect_timeout=5.0)
        client.start()
        with pytest.raises(TransportError, match="UNAUTHENTICATED"):
            client.finish()
        # ... and the server still serves the right one to the end
        good = ClientThread(server.address)
        good.start()
        assert server.wait(timeout=90)
        assert good.finish() == "run complete"
    finally:
        server.stop()
    assert len(read_jsonl(tmp_path / "net" / "records.jsonl")) == 1


@needs_mnist
def test_malformed_and_oversized_payloads_rejected_while_good_client_continues(
    tmp_path: Path,
) -> None:
    limit = 1 << 20  # one SmallCNN batch (32 x 32 x 14 x 14 float32 = 802,838 B) fits
    config = small_config(clients=2, scheme="standard")
    server = start_server(config, tmp_path / "net", max_message_bytes=limit)
    good = ClientThread(server.address, client_id=0, max_message_bytes=limit)
    good.start()
    md = token_metadata(TOKEN)
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.SplitLearningStub(channel)
            join = stub.Join(
                pb.JoinRequest(requested_id=1, version=__version__, fresh=True),
                metadata=md,
                timeout=10,
            )
            deadline = time.monotonic() + 120
            task = pb.Task()
            while task.kind != pb.Task.TRAIN:
                assert time.monotonic() < deadline, "the rogue client never got its turn"
                task = stub.NextTask(pb.TaskRequest(session=join.session), metadata=md, timeout=30)

            def step(**fields: Any) -> grpc.RpcError:
                msg: dict[str, Any] = {
                    "session": join.session,
                    "turn": task.turn,
                    "t": task.t_start + 1,
                    "smashed": b"",
                    "labels": encode_labels(torch.zeros(32, dtype=torch.int64)),
                }
                msg.update(fields)
                with pytest.raises(grpc.RpcError) as info:
                    stub.Step(pb.StepRequest(**msg), metadata=md, timeout=30)
                return info.value

            def dense(*shape: int) -> bytes:
                return encode_dense(
                    torch.zeros(shape), scheme_id=StandardScheme.wire_id, kind=KIND_FORWARD
                )

            err = step(smashed=b"definitely not a payload")
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "malformed payload" in err.details() and "magic" in err.details()
            truncated = dense(32, 32, 14, 14)[:-3]
            err = step(smashed=truncated)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "truncated" in err.details()
            err = step(smashed=dense(32, 3, 5, 5))  # well-formed, wrong shape for the model
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            err = step(smashed=dense(31, 32, 14, 14))  # 31 samples, 32 labels
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "labels" in err.details()
            # inputs that used to kill the run (NaN loss) or the handler (IndexError)
            err = step(smashed=dense(0, 32, 14, 14), labels=encode_labels(torch.zeros(0)))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "empty" in err.details()
            err = step(smashed=dense(32, 32, 14, 14), labels=encode_labels(torch.full((32,), 10)))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "classes" in err.details()
            nan = encode_dense(
                torch.full((32, 32, 14, 14), float("nan")),
                scheme_id=StandardScheme.wire_id,
                kind=KIND_FORWARD,
            )
            err = step(smashed=nan)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "NaN" in err.details()
            err = step(smashed=b"\0" * (limit + 1))
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            err = step(smashed=dense(32, 32, 14, 14), turn=task.turn + 99)
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
            err = step(smashed=dense(32, 32, 14, 14), t=task.t_start + 5)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "iteration" in err.details()
            # the rogue goes silent: dropped after client_timeout, the good client goes on
        assert server.wait(timeout=120)
        assert good.finish() == "run complete"
    finally:
        server.stop()
    rejected = server.coordinator.rejected
    assert rejected == {"INVALID_ARGUMENT": 8, "FAILED_PRECONDITION": 1}
    assert server.coordinator.error is None
    records = read_jsonl(tmp_path / "net" / "records.jsonl")
    assert [r["clients_dropped"] for r in records] == [[1], [1]]
    # only the good client's payloads were accepted and counted: 4 batches (32,32,32,24)
    sizes = (32, 32, 32, 24)
    header = header_size(4)
    assert records[0]["bytes_up"] == sum(header + 4 * b * 32 * 14 * 14 for b in sizes)
    assert records[0]["bytes_labels"] == sum(header_size(1) + 1 + b for b in sizes)
    assert records[0]["iteration"] == len(sizes)


@needs_mnist
def test_step_declaring_another_shape_is_refused_before_decoding_and_server_keeps_serving(
    tmp_path: Path,
) -> None:
    # Issue 10, defect 1: a 36-byte top-k step declaring [1, 32, 1024, 1024] (the cut is
    # [B, 32, 14, 14]) was accepted with status OK and applied; it must be INVALID_ARGUMENT.
    import struct

    from acpsl.cut.indices import index_width
    from acpsl.cut.payload import encode_header
    from acpsl.schemes.topk import TopkScheme

    config = small_config(clients=2, scheme="topk")
    server = start_server(config, tmp_path / "net")
    good = ClientThread(server.address, client_id=0)
    good.start()
    md = token_metadata(TOKEN)
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.SplitLearningStub(channel)
            join = stub.Join(
                pb.JoinRequest(requested_id=1, version=__version__, fresh=True),
                metadata=md,
                timeout=10,
            )
            deadline = time.monotonic() + 120
            task = pb.Task()
            while task.kind != pb.Task.TRAIN:
                assert time.monotonic() < deadline, "the rogue client never got its turn"
                task = stub.NextTask(pb.TaskRequest(session=join.session), metadata=md, timeout=30)

            def step(smashed: bytes, count: int) -> grpc.RpcError:
                labels = encode_labels(torch.zeros(count, dtype=torch.int64))
                request = pb.StepRequest(
                    session=join.session,
                    turn=task.turn,
                    t=task.t_start + 1,
                    smashed=smashed,
                    labels=labels,
                )
                with pytest.raises(grpc.RpcError) as info:
                    stub.Step(request, metadata=md, timeout=30)
                return info.value

            d = 32 * 1024 * 1024
            hostile = b"".join(
                (
                    encode_header(
                        scheme_id=TopkScheme.wire_id, kind=KIND_FORWARD, shape=(1, 32, 1024, 1024)
                    ),
                    struct.pack("<I", 1),
                    b"\x00",
                    bytes((index_width(d) + 7) // 8),
                    struct.pack("<f", 1.0),
                )
            )
            assert len(hostile) == 36
            started = time.monotonic()
            err = step(hostile, 1)
            assert time.monotonic() - started < 5  # the step lock was held 13.7 s before
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "(1, 32, 1024, 1024)" in err.details() and "[B, 32, 14, 14]" in err.details()
            big = TopkScheme().compress(torch.randn(33, 32, 14, 14))  # batch size is 32
            err = step(big, 33)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "batch of 33" in err.details()
            # the rogue goes silent: dropped after client_timeout, the good client goes on
        assert server.wait(timeout=120)
        assert good.finish() == "run complete"
    finally:
        server.stop()
    assert server.coordinator.rejected == {"INVALID_ARGUMENT": 2}
    assert server.coordinator.error is None
    records = read_jsonl(tmp_path / "net" / "records.jsonl")
    assert [r["round"] for r in records] == [1, 2]
    assert [r["clients_dropped"] for r in records] == [[1], [1]]
    assert records[0]["iteration"] == 4  # only the good client's 4 batches were applied


def _openssl_cert(
    folder: Path, name: str, san: str = "IP:127.0.0.1,DNS:localhost"
) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}",
         "-addext", f"subjectAltName={san}"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@needs_mnist
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not available")
def test_tls_with_client_certificates_and_token(tmp_path: Path) -> None:
    server_cert, server_key = _openssl_cert(tmp_path, "server")
    client_cert, client_key = _openssl_cert(tmp_path, "client")
    server = start_server(
        small_config(clients=1, rounds=1),
        tmp_path / "net",
        tls=TlsFiles(cert=str(server_cert), key=str(server_key), ca=str(client_cert)),
    )
    try:
        # plaintext, and TLS without a client certificate, cannot get in
        with grpc.insecure_channel(server.address) as channel:
            with pytest.raises(grpc.RpcError) as info:
                pb_grpc.SplitLearningStub(channel).GetConfig(
                    pb.ConfigRequest(version=__version__),
                    metadata=token_metadata(TOKEN),
                    timeout=5,
                )
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        anonymous = ClientThread(
            server.address, tls=TlsFiles(ca=str(server_cert)), connect_timeout=2.0
        )
        anonymous.start()
        with pytest.raises(TransportError):
            anonymous.finish()
        client = ClientThread(
            server.address,
            tls=TlsFiles(cert=str(client_cert), key=str(client_key), ca=str(server_cert)),
        )
        client.start()
        assert server.wait(timeout=90)
        assert client.finish() == "run complete"
    finally:
        server.stop()
    records = read_jsonl(tmp_path / "net" / "records.jsonl")
    assert len(records) == 1 and records[0]["test_acc"] > 0


# ---------------------------------------------------------------------------- resume
@needs_mnist
def test_server_restarted_with_resume_continues_exactly(tmp_path: Path) -> None:
    in_round_two = threading.Event()

    class Watched(EngineServerBackend):
        def train_step(self, *, client_id: int, t: int, smashed: bytes, labels: bytes) -> bytes:
            if self._round == 2:
                in_round_two.set()
            return super().train_step(client_id=client_id, t=t, smashed=smashed, labels=labels)

    config = small_config(scheme="acp")
    out = tmp_path / "net"
    first = start_server(config, out, backend_cls=Watched)
    port = first.port
    clients = [ClientThread(first.address, client_id=c) for c in range(2)]
    for thread in clients:
        thread.start()
    try:
        assert in_round_two.wait(120), "round 2 never started"
        first.stop()  # the server dies mid-round 2; round 1 is on disk
        assert [r["round"] for r in read_jsonl(out / "records.jsonl")] == [1]
        second = start_server(config, out, resume=True, port=port)
        try:
            assert second.wait(timeout=120)
            assert [t.finish() for t in clients] == ["run complete", "run complete"]
        finally:
            second.stop()
    finally:
        first.stop()
    net = read_jsonl(out / "records.jsonl")
    assert_same_records(net, reference_records(config, tmp_path / "ref"))


class _Crash(Exception):
    """Stands for a client process dying: the thread stops calling the server."""


@needs_mnist
def test_wait_policy_gives_the_turn_again_to_a_client_that_rejoins(tmp_path: Path) -> None:
    config = small_config(clients=2, rounds=2)
    server = start_server(
        config, tmp_path / "net", on_drop="wait", timing=fast_timing(client_timeout=2.0)
    )
    crashed = ClientThread(server.address, client_id=1)
    backend = crashed.client.backend
    real_turn = backend.train_turn
    calls = {"steps": 0}

    def crashing_turn(*, task: pb.Task, step: Any) -> Any:
        def dying_step(t: int, smashed: bytes, labels: bytes) -> bytes:
            calls["steps"] += 1
            if calls["steps"] == 3:
                raise _Crash("gone mid-turn")
            return step(t, smashed, labels)

        return real_turn(task=task, step=dying_step)

    backend.train_turn = crashing_turn  # type: ignore[method-assign]
    first = ClientThread(server.address, client_id=0)
    try:
        first.start()
        crashed.start()
        crashed.join(120)
        assert isinstance(crashed.error, _Crash)
        # a new process for client 1 (fresh state) comes back while the server waits
        again = ClientThread(server.address, client_id=1)
        again.start()
        assert server.wait(timeout=120)
        assert first.finish() == again.finish() == "run complete"
    finally:
        server.stop()
    assert server.coordinator.dropped == [(1, 1)]
    records = read_jsonl(tmp_path / "net" / "records.jsonl")
    assert [r["clients_dropped"] for r in records] == [[1], []]
    per_client = (120 + 31) // 32
    # the dropped turn's 2 accepted steps happened; then client 1 redid its whole turn
    assert [r["iteration"] for r in records] == [2 * per_client + 2, 4 * per_client + 2]
    assert records[-1]["test_acc"] > 0.3


@needs_mnist
def test_splitfed_over_the_network_matches_in_process_engine(tmp_path: Path) -> None:
    config = small_config(mode="splitfed", scheme="acp", clients=2, rounds=2)
    server = start_server(config, tmp_path / "net")
    clients = [ClientThread(server.address) for _ in range(2)]
    try:
        for thread in clients:
            thread.start()
        assert server.wait(timeout=120)
        assert [t.finish() for t in clients] == ["run complete", "run complete"]
    finally:
        server.stop()
    net = read_jsonl(tmp_path / "net" / "records.jsonl")
    assert_same_records(net, reference_records(config, tmp_path / "ref"))
    # uploads + downloads of the average, counted like in-process; all crossed the wire
    assert all(r["bytes_wire_model"] > r["bytes_model"] > 0 for r in net)


@needs_mnist
def test_training_options_travel_to_clients_and_match_in_process_engine(tmp_path: Path) -> None:
    """Augmentation, cosine schedule, bf16 and channels-last: the clients get them with the
    configuration and the records equal the in-process engine's."""
    config = small_config(
        clients=2,
        rounds=2,
        augment="crop-flip",
        lr_schedule="cosine",
        lr_min=1e-4,
        precision="bf16",
        channels_last=True,
    )
    server = start_server(config, tmp_path / "net")
    clients = [ClientThread(server.address) for _ in range(2)]
    try:
        for thread in clients:
            thread.start()
        assert server.wait(timeout=120)
        assert [t.finish() for t in clients] == ["run complete", "run complete"]
        assert clients[0].client.backend.config == config.replace(progress=False)
    finally:
        server.stop()
    assert TrainConfig.from_toml(tmp_path / "net" / "config.toml") == config
    net = read_jsonl(tmp_path / "net" / "records.jsonl")
    assert_same_records(net, reference_records(config, tmp_path / "ref"))


# --------------------------------------------------------- server-side checks, no network
@needs_mnist
def test_evaluation_uses_server_labels_and_hand_back_is_all_or_nothing(tmp_path: Path) -> None:
    from acpsl.cut.state import decode_state_dict, encode_state_dict
    from acpsl.errors import CheckpointError, PayloadError
    from acpsl.transport.backend import _client_state

    out = tmp_path / "net"
    backend = EngineServerBackend(config=small_config(clients=1, rounds=1), out_dir=out, log=None)
    try:
        with pytest.raises(CheckpointError, match="another acpsl serve"):
            EngineServerBackend(config=small_config(clients=1), out_dir=out, log=None)
        run = backend.run
        runtime = run.clients[0]
        # -- evaluation: in order, against the server's own test labels, all batches
        backend.begin_eval(client_id=0)
        x, y = run.test_set.batch(torch.arange(0, 32))
        payload = runtime.encode_eval(x)
        with pytest.raises(PayloadError, match="do not match the server's test set"):
            backend.eval_step(
                client_id=0, smashed=payload, labels=encode_labels((y + 1) % 10), uncompressed=False
            )
        backend.eval_step(client_id=0, smashed=payload, labels=encode_labels(y), uncompressed=False)
        assert backend.eval_progress() == (1, 4)  # 100 test samples, batch 32
        with pytest.raises(PayloadError, match="test batch 1"):  # batch 0 again: out of order
            backend.eval_step(
                client_id=0, smashed=payload, labels=encode_labels(y), uncompressed=False
            )
        with pytest.raises(PayloadError, match="does not evaluate uncompressed"):
            backend.eval_step(client_id=0, smashed=payload, labels=b"", uncompressed=True)
        with pytest.raises(CheckpointError, match="no complete evaluation"):
            backend.finish_round(round=1, wire={})
        # -- hand-back: validated as a whole before anything is loaded
        before = {k: v.clone() for k, v in runtime.model.state_dict().items()}
        good = decode_state_dict(runtime.export_state(with_optimizer=True))
        keys = list(good["model"])

        def handed(change: Any) -> bytes:
            state = decode_state_dict(runtime.export_state(with_optimizer=True))
            for key in keys[:-1]:
                state["model"][key] = state["model"][key] + 1  # a partial load would show
            change(state)
            return encode_state_dict(state)

        def wrong_shape(state: dict[str, Any]) -> None:
            state["model"][keys[-1]] = torch.zeros(3)

        def not_finite(state: dict[str, Any]) -> None:
            state["model"][keys[-1]] = torch.full_like(state["model"][keys[-1]], float("nan"))

        def wrong_dtype(state: dict[str, Any]) -> None:
            state["model"][keys[-1]] = state["model"][keys[-1]].double()

        client_state = _client_state(runtime, splitfed=False)
        for change, message in ((wrong_shape, "shape|does not fit"), (not_finite, "NaN"),
                                (wrong_dtype, "float64")):  # fmt: skip
            with pytest.raises(PayloadError, match=message):
                backend.finish_turn(
                    client_id=0,
                    model_state=handed(change),
                    client_state=client_state,
                    stats_json="",
                )
        with pytest.raises(PayloadError):  # a good model with a broken private state
            backend.finish_turn(
                client_id=0,
                model_state=handed(lambda s: None),
                client_state=b"junk",
                stats_json="",
            )
        for key, value in runtime.model.state_dict().items():
            assert torch.equal(value, before[key]), f"{key} changed by a refused hand-back"
        backend.finish_turn(
            client_id=0,
            model_state=handed(lambda s: None),
            client_state=client_state,
            stats_json="",
        )
        assert torch.equal(runtime.model.state_dict()[keys[0]], before[keys[0]] + 1)
    finally:
        backend.close()
    EngineServerBackend(
        config=small_config(clients=1), out_dir=tmp_path / "other", log=None
    ).close()


class CliThread(threading.Thread):
    """``acpsl ARGV`` (the real command line) in a thread of this process."""

    def __init__(self, argv: list[str]) -> None:
        super().__init__(daemon=True)
        self.argv = argv
        self.code: int | None = None

    def run(self) -> None:
        from acpsl.cli import main

        with one_thread():
            self.code = main(self.argv)

    def finish(self, timeout: float = 120.0) -> int | None:
        self.join(timeout)
        assert not self.is_alive(), f"acpsl {self.argv[0]} did not finish in time"
        return self.code


class _OneSlot:
    """Just enough of a backend to build a SplitServer (which binds its port)."""

    num_clients = 1


def spawn_server(config: TrainConfig, out: Path, port_file: Path, *extra: str) -> Any:
    port_file.unlink(missing_ok=True)
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "acpsl", "serve", "--out", str(out)),
            *("--port-file", str(port_file), "--token", TOKEN, "--client-timeout", "60"),
            *extra,
            *cli_args(config),
        ],
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_port(server: subprocess.Popen[str], port_file: Path, timeout: float = 90) -> int:
    deadline = time.monotonic() + timeout
    while not port_file.exists():
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            pytest.fail("server did not start:\n" + finish_process(server))
        time.sleep(0.05)
    return int(port_file.read_text())


@needs_mnist
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not available")
def test_tls_server_cert_cli_and_server_sigkill_then_resume(tmp_path: Path) -> None:
    """The documented setup (server certificate only, via the CLI flags), and a server
    process killed with SIGKILL mid-run, restarted with ``acpsl serve --resume``."""
    from acpsl.errors import CheckpointError, ConfigError

    # the certificate names only "acpsl-test": dialling 127.0.0.1 needs --tls-server-name
    cert, key = _openssl_cert(tmp_path, "acpsl-test", san="DNS:acpsl-test")
    config = small_config(clients=1, rounds=3)
    out, port_file = tmp_path / "net", tmp_path / "port"
    tls = ("--tls-cert", str(cert), "--tls-key", str(key))
    server = spawn_server(config, out, port_file, "--port", "0", *tls)
    procs = [server]
    try:
        port = wait_port(server, port_file)
        address = f"127.0.0.1:{port}"
        # a second server on the same port, or on the same run directory, is refused
        with pytest.raises(ConfigError, match="already running on that port"):
            SplitServer(backend=_OneSlot(), options=ServerOptions(port=port))  # type: ignore[arg-type][arg-type]
        with pytest.raises(CheckpointError, match="another acpsl serve"):
            EngineServerBackend(config=config, out_dir=out, resume=True, log=None)
        # without the name override the certificate does not match the address
        creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(address, creds) as channel:
            with pytest.raises(grpc.RpcError) as info:
                pb_grpc.SplitLearningStub(channel).GetConfig(
                    pb.ConfigRequest(version=__version__), metadata=token_metadata(TOKEN), timeout=5
                )
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        # the client CLI (in a thread: one process start less), TLS from its flags
        argv = ["client", "--server", address, "--token", TOKEN, "--connect-timeout", "60"]
        client = CliThread([*argv, "--tls-ca", str(cert), "--tls-server-name", "acpsl-test"])
        client.start()
        records = out / "records.jsonl"
        deadline = time.monotonic() + 120
        checkpoint = out / "checkpoint.pt"
        while not (checkpoint.exists() and records.read_text().count("\n") >= 1):
            assert server.poll() is None, finish_process(server)
            assert time.monotonic() < deadline, "round 1 never finished"
            time.sleep(0.01)
        server.send_signal(signal.SIGKILL)  # a real crash: no stop(), no cleanup
        server.wait(30)
        assert len(read_jsonl(records)) < 3, "the server finished before it could be killed"
        second = spawn_server(config, out, port_file, "--resume", "--port", str(port), *tls)
        procs.append(second)
        second_out = finish_process(second)
        assert client.finish() == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert server.returncode == -signal.SIGKILL
    assert second.returncode == 0, second_out
    assert f"resuming {out} after round" in second_out
    net = read_jsonl(out / "records.jsonl")
    assert [r["round"] for r in net] == [1, 2, 3]  # no gap, no duplicate
    assert_same_records(net, reference_records(config, tmp_path / "ref"))
