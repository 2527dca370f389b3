"""Fast checks of the transport's pieces: framing sizes, security settings, sessions, CLI."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("grpc")

import torch

from acpsl import __version__
from acpsl.cut.labels import encode_labels
from acpsl.cut.payload import header_size
from acpsl.errors import ConfigError, PayloadError
from acpsl.schemes.standard import StandardScheme
from acpsl.transport import splitlearning_pb2 as pb
from acpsl.transport.backend import _parse_stats, config_from_toml_text
from acpsl.transport.client import ClientOptions
from acpsl.transport.coordinator import Coordinator, RpcReject, Timing
from acpsl.transport.security import (
    TOKEN_ENV,
    TlsFiles,
    TokenAuthInterceptor,
    message_options,
    resolve_token,
    server_credentials,
)


def _varint_len(n: int) -> int:
    size = 1
    while n >= 0x80:
        n >>= 7
        size += 1
    return size


def _field_len(payload: int) -> int:
    """Bytes of one length-delimited protobuf field (1-byte tag) holding ``payload`` bytes."""
    return 1 + _varint_len(payload) + payload


def test_step_framing_is_exactly_payload_plus_a_few_bytes_at_paper_size() -> None:
    """ACP-SL's ResNet-18 cut: a [128, 64, 7, 7] float32 uplink (SPEC section 5)."""
    x = torch.randn(128, 64, 7, 7)
    smashed = StandardScheme().compress(x)
    labels = encode_labels(torch.arange(128) % 10)
    assert len(smashed) == header_size(4) + 4 * x.numel() == 1_605_655
    assert len(labels) == header_size(1) + 1 + 128
    session = pb.Session(client_id=3, key=b"k" * 16)
    msg = pb.StepRequest(session=session, turn=7, t=1234, smashed=smashed, labels=labels)
    session_len = 2 + _field_len(16)  # client_id (tag + 1-byte varint) + key
    expected = (
        _field_len(session_len)
        + 1 + _varint_len(7)  # turn
        + 1 + _varint_len(1234)  # t
        + _field_len(len(smashed))
        + _field_len(len(labels))
    )  # fmt: skip
    assert msg.ByteSize() == expected == len(smashed) + len(labels) + 34
    assert msg.ByteSize() / (len(smashed) + len(labels)) <= 1.02
    reply = pb.StepReply(grad=StandardScheme().compress_grad(x))
    assert reply.ByteSize() == _field_len(1_605_655) == 1_605_655 + 4
    # the bytes on the wire decode back to the very same payload
    assert pb.StepRequest.FromString(msg.SerializeToString()).smashed == smashed


def test_message_limit_validation() -> None:
    assert message_options(1024) == [
        ("grpc.max_send_message_length", 1024),
        ("grpc.max_receive_message_length", 1024),
    ]
    for bad in (0, -1, 2**31, True):
        with pytest.raises(ConfigError, match="max message size"):
            message_options(bad)


def test_token_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    file = tmp_path / "token"
    file.write_text("from-file\n")
    assert resolve_token(token="given", token_file=str(file)) == "given"
    assert resolve_token(token=None, token_file=str(file)) == "from-file"
    assert resolve_token(token=None, token_file=None) == "from-env"
    monkeypatch.delenv(TOKEN_ENV)
    assert resolve_token(token=None, token_file=None) is None
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(ConfigError, match="empty"):
        resolve_token(token=None, token_file=str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="cannot read token file"):
        resolve_token(token=None, token_file=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="non-empty"):
        TokenAuthInterceptor(token="")


def test_tls_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="both a certificate and its private key"):
        TlsFiles(cert="c.pem")
    with pytest.raises(ConfigError, match="--tls-cert and --tls-key"):
        server_credentials(TlsFiles(ca="ca.pem"))
    not_pem = tmp_path / "x.pem"
    not_pem.write_text("hello")
    with pytest.raises(ConfigError, match="not PEM"):
        server_credentials(TlsFiles(cert=str(not_pem), key=str(not_pem)))
    with pytest.raises(ConfigError, match="cannot read"):
        server_credentials(TlsFiles(cert=str(tmp_path / "no.pem"), key=str(not_pem)))


def test_client_options_reject_bad_address() -> None:
    for bad in ("localhost", ":50051", "host:port"):
        with pytest.raises(ConfigError, match="HOST:PORT"):
            ClientOptions(server=bad)
    assert ClientOptions(server="127.0.0.1:50051").client_id == -1


def test_turn_statistics_are_validated() -> None:
    stats = _parse_stats(json.dumps({"ratio": [0.5, 0.75], "table2_bytes": [10]}))
    assert stats == {
        "ratio": [0.5, 0.75],
        "p_target": [],  # ACP-SL's P_t, per iteration; absent for the other schemes
        "table2_bytes": [10.0],
        "bound_bytes": [],
    }
    for bad in ("{", "[]", json.dumps({"ratio": "x"}), '{"ratio": [NaN]}', '{"ratio": [true]}'):
        with pytest.raises(PayloadError, match="turn statistics"):
            _parse_stats(bad)


def test_config_from_server_text_applies_local_overrides() -> None:
    from acpsl.config import TrainConfig

    text = TrainConfig(dataset="mnist", data_dir="/server/data", clients=3).to_toml()
    config = config_from_toml_text(text, data_dir="/client/data", device=None)
    assert (config.data_dir, config.clients, config.device) == ("/client/data", 3, "auto")
    with pytest.raises(ConfigError, match="invalid configuration"):
        config_from_toml_text("clients = [")


class _Backend:
    """Just enough of a ServerBackend for session handling."""

    num_clients = 2
    joins: list[tuple[int, bool]]

    def __init__(self) -> None:
        self.joins = []

    def config_toml(self) -> str:
        return 'scheme = "standard"\n'

    def on_join(self, *, client_id: int, fresh: bool) -> None:
        self.joins.append((client_id, fresh))


def _coordinator(now: list[float]) -> tuple[Coordinator, _Backend]:
    backend = _Backend()

    def clock() -> float:
        now[0] += 0.001  # a fake clock that still moves, so long polls end
        return now[0]

    coordinator = Coordinator(
        backend=backend,  # type: ignore[arg-type]
        timing=Timing(client_timeout=5.0, poll_s=0.01),
        clock=clock,
    )
    return coordinator, backend


def _code(fn: Any, *args: Any) -> str:
    with pytest.raises(RpcReject) as info:
        fn(*args)
    return info.value.code


def test_sessions_ids_and_expiry() -> None:
    now = [100.0]
    coordinator, backend = _coordinator(now)
    join = pb.JoinRequest
    assert _code(coordinator.join, join(requested_id=0, version="9.9")) == "FAILED_PRECONDITION"
    assert _code(coordinator.get_config, pb.ConfigRequest(version="")) == "FAILED_PRECONDITION"
    assert "standard" in coordinator.get_config(pb.ConfigRequest(version=__version__)).config_toml
    assert _code(coordinator.join, join(requested_id=2, version=__version__)) == "INVALID_ARGUMENT"
    first = coordinator.join(join(requested_id=-1, version=__version__, fresh=True))
    second = coordinator.join(join(requested_id=-1, version=__version__))
    assert (first.session.client_id, second.session.client_id) == (0, 1)
    assert backend.joins == [(0, True), (1, False)]
    assert _code(coordinator.join, join(requested_id=-1, version=__version__)) == (
        "RESOURCE_EXHAUSTED"
    )
    assert _code(coordinator.join, join(requested_id=1, version=__version__)) == "ALREADY_EXISTS"
    # a forged key, or an unknown id, is refused
    forged = pb.Session(client_id=0, key=b"x" * 16)
    assert _code(coordinator.next_task, pb.TaskRequest(session=forged)) == "PERMISSION_DENIED"
    ghost = pb.Session(client_id=7, key=first.session.key)
    assert _code(coordinator.next_task, pb.TaskRequest(session=ghost)) == "PERMISSION_DENIED"
    # a valid session with nothing to do is told to wait
    task = coordinator.next_task(pb.TaskRequest(session=first.session))
    assert task.kind == pb.Task.WAIT
    # no turn is active: a step is out of turn
    step = pb.StepRequest(session=first.session, turn=1, t=1)
    assert _code(coordinator.step, step) == "FAILED_PRECONDITION"
    # client 1 silent past the timeout: its id can be taken over, its old session dies
    now[0] += 6.0
    again = coordinator.join(join(requested_id=1, version=__version__))
    assert again.session.key != second.session.key
    stale = pb.TaskRequest(session=second.session)
    assert _code(coordinator.next_task, stale) == "PERMISSION_DENIED"


def test_coordinator_rejects_unknown_drop_policy_and_bad_timing() -> None:
    with pytest.raises(ConfigError, match="on_drop"):
        Coordinator(backend=_Backend(), on_drop="retry")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="client_timeout"):
        Timing(client_timeout=0)


def test_cli_registers_serve_and_client() -> None:
    from acpsl.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(
        ["serve", "--out", "run", "--port", "0", "--on-drop", "wait", "--clients", "3"]
    )
    assert (args.command, args.port, args.on_drop, args.clients) == ("serve", 0, "wait", 3)
    args = parser.parse_args(["client", "--server", "127.0.0.1:1", "--client-id", "2"])
    assert (args.command, args.server, args.client_id) == ("client", "127.0.0.1:1", 2)
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--port", "1"])  # --out is required


# ------------------------------------------------------------------ binding, run directory
def test_second_server_on_the_same_port_fails_with_a_clear_error() -> None:
    from acpsl.transport.server import ServerOptions, SplitServer

    first = SplitServer(backend=_Backend(), options=ServerOptions(port=0))  # type: ignore[arg-type]
    try:
        with pytest.raises(ConfigError, match=r"another server .* Stop it, or choose another"):
            SplitServer(backend=_Backend(), options=ServerOptions(port=first.port))  # type: ignore[arg-type]
    finally:
        first.stop()


def test_run_directory_lock_keeps_a_second_server_out(tmp_path: Path) -> None:
    from acpsl.errors import CheckpointError
    from acpsl.transport.backend import RunDirLock

    lock = RunDirLock(tmp_path)
    with pytest.raises(CheckpointError, match=r"another acpsl serve \(pid \d+\).*--out"):
        RunDirLock(tmp_path)
    lock.release()
    lock.release()  # idempotent
    RunDirLock(tmp_path).release()  # free again


# ------------------------------------------------------------------ coordinator semantics
class _Driven:
    """A whole ServerBackend in memory: 1 client, 1 round, 2 eval batches; slow steps."""

    num_clients = 1
    rounds = 1
    total_iterations = 100

    def __init__(self) -> None:
        self.t = 0
        self.applied: list[int] = []
        self.evals = 0
        self.abandoned = 0
        self.round_done = False

    next_round = 1

    @property
    def iteration(self) -> int:
        return self.t

    def config_toml(self) -> str:
        return ""

    def on_join(self, *, client_id: int, fresh: bool) -> None:
        pass

    def begin_round(self, *, round: int) -> None:
        pass

    def begin_turn(self, *, client_id: int, round: int) -> Any:
        from acpsl.transport.coordinator import TurnStart

        return TurnStart()

    def train_step(self, *, client_id: int, t: int, smashed: bytes, labels: bytes) -> bytes:
        from acpsl.errors import TrainingError

        if smashed == b"bad":
            raise PayloadError("bad payload")
        if smashed == b"nan":
            raise TrainingError("non-finite training loss (nan)")
        time.sleep(0.2)  # long enough for a second identical call to arrive meanwhile
        self.t = t
        self.applied.append(t)
        return b"grad"

    def finish_turn(self, **_: Any) -> None:
        pass

    def abandon_turn(self, *, client_id: int) -> None:
        self.abandoned += 1

    def skip_turn(self, *, client_id: int) -> None:
        pass

    def end_training(self, *, round: int) -> None:
        pass

    def begin_eval(self, *, client_id: int) -> Any:
        from acpsl.transport.coordinator import TurnStart

        self.evals = 0
        return TurnStart()

    def eval_step(self, **_: Any) -> tuple[float, int]:
        self.evals += 1
        return 0.0, 0

    def eval_progress(self) -> tuple[int, int]:
        return self.evals, 2

    def finish_round(self, *, round: int, wire: dict[str, int]) -> dict[str, Any]:
        self.round_done = True
        return {"round": round}

    def finish_run(self) -> None:
        pass


def _driven(offset: list[float]) -> tuple[Coordinator, _Driven, pb.Session, Any]:
    backend = _Driven()
    coordinator = Coordinator(
        backend=backend,  # type: ignore[arg-type]
        timing=Timing(client_timeout=5.0, poll_s=0.05, rejoin_timeout=1.0),
        clock=lambda: time.monotonic() + offset[0],
    )
    driver = threading.Thread(target=coordinator.run, daemon=True)
    driver.start()
    session = coordinator.join(pb.JoinRequest(requested_id=0, version=__version__)).session
    return coordinator, backend, session, driver


def _next(coordinator: Coordinator, session: pb.Session, kind: int) -> pb.Task:
    for _ in range(200):
        task = coordinator.next_task(pb.TaskRequest(session=session))
        if task.kind == kind:
            return task
    raise AssertionError(f"no {pb.Task.Kind.Name(kind)} task came")


def test_two_concurrent_identical_steps_apply_exactly_once_and_bad_steps_keep_the_run() -> None:
    from concurrent.futures import ThreadPoolExecutor

    coordinator, backend, session, driver = _driven([0.0])
    task = _next(coordinator, session, pb.Task.TRAIN)

    def step(t: int, smashed: bytes = b"x") -> str:
        try:
            coordinator.step(pb.StepRequest(session=session, turn=task.turn, t=t, smashed=smashed))
        except RpcReject as exc:
            return exc.code
        return "OK"

    with ThreadPoolExecutor(2) as pool:
        results = sorted(pool.map(step, [1, 1]))
    assert results == ["INVALID_ARGUMENT", "OK"]
    assert backend.applied == [1] and backend.iteration == 1
    # unusable input: refused (the service makes it INVALID_ARGUMENT), the run goes on
    with pytest.raises(PayloadError):
        step(2, b"bad")
    # one non-finite loss: refused, not applied, the run goes on
    assert step(2, b"nan") == "INVALID_ARGUMENT" and coordinator.error is None
    assert step(2) == "OK" and backend.applied == [1, 2]
    # finish_eval before every test batch is refused; the turn stays open
    coordinator.finish_turn(pb.TurnResult(session=session, turn=task.turn))
    ev = _next(coordinator, session, pb.Task.EVAL)
    done = pb.EvalDone(session=session, turn=ev.turn)
    assert _code(coordinator.finish_eval, done) == "FAILED_PRECONDITION"
    coordinator.eval_step(pb.EvalRequest(session=session, turn=ev.turn))
    assert _code(coordinator.finish_eval, done) == "FAILED_PRECONDITION"
    # the client gives the evaluation up (asks for a new task): it is offered once more
    again = _next(coordinator, session, pb.Task.EVAL)
    assert again.turn != ev.turn
    assert _code(coordinator.eval_step, pb.EvalRequest(session=session, turn=ev.turn)) == (
        "FAILED_PRECONDITION"
    )
    for _ in range(2):
        coordinator.eval_step(pb.EvalRequest(session=session, turn=again.turn))
    coordinator.finish_eval(pb.EvalDone(session=session, turn=again.turn))
    driver.join(10)
    assert not driver.is_alive() and coordinator.error is None and backend.round_done
    assert coordinator.rejected == {}  # counted by the service, not here


def test_non_finite_losses_in_a_row_stop_the_run() -> None:
    coordinator, backend, session, driver = _driven([0.0])
    task = _next(coordinator, session, pb.Task.TRAIN)
    request = pb.StepRequest(session=session, turn=task.turn, t=1, smashed=b"nan")
    assert [_code(coordinator.step, request) for _ in range(3)] == [
        "INVALID_ARGUMENT",
        "INVALID_ARGUMENT",
        "ABORTED",
    ]
    driver.join(10)
    assert "3 steps in a row" in str(coordinator.error)
    assert backend.applied == []


def test_a_step_checked_after_its_turn_was_dropped_is_not_applied() -> None:
    offset = [0.0]
    coordinator, backend, session, driver = _driven(offset)
    task = _next(coordinator, session, pb.Task.TRAIN)
    codes: list[str] = []

    def late_step() -> None:
        request = pb.StepRequest(session=session, turn=task.turn, t=1, smashed=b"x")
        codes.append(_code(coordinator.step, request))

    with coordinator._compute:  # the server is busy: the step queues before its check
        late = threading.Thread(target=late_step)
        late.start()
        offset[0] += 10.0  # ... and meanwhile the client's silence exceeds client_timeout
        deadline = time.monotonic() + 10
        while coordinator._slots[0].alive:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    late.join(10)
    assert codes == ["PERMISSION_DENIED"] and backend.applied == []
    coordinator.stop()
    driver.join(10)


def test_cli_tls_flags_parse_and_are_checked(tmp_path: Path) -> None:
    from acpsl.cli import build_parser
    from acpsl.transport.cli import run_serve

    parser = build_parser()
    args = parser.parse_args(
        ["client", "--server", "127.0.0.1:1", "--tls-ca", "ca.pem", "--tls-server-name", "srv"]
    )
    assert (args.tls_ca, args.tls_server_name, args.tls_cert, args.tls_key) == (
        "ca.pem",
        "srv",
        None,
        None,
    )
    args = parser.parse_args(["serve", "--out", str(tmp_path), "--tls-client-ca", "ca.pem"])
    with pytest.raises(ConfigError, match="--tls-client-ca needs TLS"):
        run_serve(args)
    assert not (tmp_path / "serve.lock").exists()  # refused before touching the run directory
