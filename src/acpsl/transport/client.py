"""The client process of a networked run (``acpsl client --server HOST:PORT``).

A :class:`SplitClient` joins the server, then long-polls for tasks. A TRAIN task is its turn:
it loads the client model it is handed, runs its pass over its data shard through the cut
(one ``Step`` call per mini-batch: smashed data and labels up, gradient down) and hands the
model back. An EVAL task pushes the test set through the cut. DONE ends the process.

What the client computes is delegated to a :class:`ClientBackend` (the engine's
:class:`~acpsl.engine.client.ClientRuntime` and data pipeline, see
:mod:`acpsl.transport.backend`); this module only moves bytes and handles the connection:
the server being briefly unreachable (restarting with ``--resume``) or forgetting the
session makes the client rejoin under the same client id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from acpsl import __version__
from acpsl.errors import ConfigError, TrainingError
from acpsl.transport import splitlearning_pb2 as pb
from acpsl.transport import splitlearning_pb2_grpc as pb_grpc
from acpsl.transport.security import (
    DEFAULT_MAX_MESSAGE_BYTES,
    TlsFiles,
    channel_credentials,
    message_options,
    token_metadata,
)

log = logging.getLogger("acpsl.transport")

#: ``step(t, smashed, labels) -> gradient payload``: one training iteration over the network.
StepFn = Callable[[int, bytes, bytes], bytes]
#: ``send(smashed, labels, uncompressed) -> (loss_sum, correct)``: one test batch.
EvalFn = Callable[[bytes, bytes, bool], tuple[float, int]]


class TransportError(TrainingError):
    """The client cannot reach the server, or the server refused it for good."""


class TurnAborted(Exception):
    """The server no longer accepts this turn (the client was dropped); rejoin and go on."""


@dataclass(frozen=True)
class TurnOutput:
    """What a client hands back at the end of a TRAIN turn.

    Attributes:
        model_state: the client model (sequential: with its optimizer, the relay; SplitFed:
            the model alone, the upload to average).
        client_state: client-private state (scheme history; SplitFed: the local optimizer).
        stats_json: per-iteration scheme statistics (``ratio``, ``table2_bytes``,
            ``bound_bytes`` lists) as JSON.
    """

    model_state: bytes
    client_state: bytes
    stats_json: str


class ClientBackend(Protocol):
    """What the client process computes (implemented over the engine)."""

    def configure(self, *, config_toml: str, client_id: int) -> None:
        """Build the run (data, partition, models, schemes) from the server's configuration.

        ``client_id`` is the id asked for (-1: not known until the client joins).
        """

    def set_client_id(self, client_id: int) -> None:
        """The id the server gave this client (which shard, model copy and scheme it uses)."""

    def train_turn(self, *, task: pb.Task, step: StepFn) -> TurnOutput:
        """Run one TRAIN turn (applying the task's reset/model/state first)."""

    def evaluate(self, *, task: pb.Task, send: EvalFn) -> None:
        """Push the test set through the cut (inference mode) with ``send``."""


@dataclass(frozen=True)
class ClientOptions:
    """How the client connects.

    Attributes:
        server: ``host:port`` of the server.
        token: shared token (``None``: send none).
        tls: TLS files (``None``: plaintext).
        max_message_bytes: largest message accepted or sent.
        client_id: id to ask for (-1: the lowest free one).
        connect_timeout: how long to keep retrying while the server is unreachable.
        rpc_timeout: deadline of one call (a Step includes the server's forward/backward).
    """

    server: str
    token: str | None = None
    tls: TlsFiles | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    client_id: int = -1
    connect_timeout: float = 60.0
    rpc_timeout: float = 120.0

    def __post_init__(self) -> None:
        host, sep, port = self.server.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(f"invalid server address {self.server!r}: use HOST:PORT")


def open_channel(options: ClientOptions) -> grpc.Channel:
    """A channel to ``options.server`` with the message limit and TLS when configured."""
    opts: list[tuple[str, int | str]] = list(message_options(options.max_message_bytes))
    # Reconnect quickly after a server restart (gRPC's default backoff grows to 120 s).
    opts += [
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]
    if options.tls is None:
        return grpc.insecure_channel(options.server, options=opts)
    if options.tls.server_name:
        opts.append(("grpc.ssl_target_name_override", options.tls.server_name))
    return grpc.secure_channel(options.server, channel_credentials(options.tls), options=opts)


class SplitClient:
    """One client process's connection and task loop.

    Args:
        backend: the client's computation.
        options: connection options.
        sleep: how to wait between retries (tests may pass a fake).
    """

    def __init__(
        self,
        *,
        backend: ClientBackend,
        options: ClientOptions,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.backend = backend
        self.options = options
        self._sleep = sleep
        self._metadata = token_metadata(options.token)
        self._channel = open_channel(options)
        self._stub = pb_grpc.SplitLearningStub(self._channel)
        self.session: pb.Session | None = None
        self.poll_s = 1.0
        self.turns = 0
        self.evals = 0
        self.tasks_received = 0
        self.wire_sent = 0
        self.wire_received = 0

    # --------------------------------------------------------------------------- calls
    def _rpc(self, name: str, request: object, *, timeout: float) -> object:
        method = getattr(self._stub, name)
        reply = method(request, timeout=timeout, metadata=self._metadata)
        self.wire_sent += request.ByteSize()  # type: ignore[attr-defined]
        self.wire_received += reply.ByteSize()
        return reply

    def _retrying(self, name: str, request: object, *, retry_codes: tuple[Any, ...]) -> object:
        """A call retried with backoff while it fails with ``retry_codes``, up to the timeout."""
        deadline = time.monotonic() + self.options.connect_timeout
        delay = 0.1
        while True:
            try:
                return self._rpc(name, request, timeout=min(self.options.rpc_timeout, 30.0))
            except grpc.RpcError as exc:
                code = exc.code()
                if code not in retry_codes or time.monotonic() > deadline:
                    raise TransportError(
                        f"{name} to {self.options.server} failed: {code.name}: {exc.details()}"
                    ) from None
                self._sleep(delay)
                delay = min(2 * delay, 1.0)

    def _configure(self) -> None:
        """Fetch the run's configuration and build the client before joining."""
        reply = self._retrying(
            "GetConfig",
            pb.ConfigRequest(version=__version__),
            retry_codes=(grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED),
        )
        assert isinstance(reply, pb.ConfigReply)
        self.backend.configure(config_toml=reply.config_toml, client_id=self.options.client_id)

    def _join(self) -> None:
        """Join (or rejoin under the same id), retrying while the server is unreachable."""
        wanted = self.session.client_id if self.session is not None else self.options.client_id
        reply = self._retrying(
            "Join",
            pb.JoinRequest(
                requested_id=wanted, version=__version__, fresh=self.tasks_received == 0
            ),
            retry_codes=(
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                # our old session may still look alive until the server times it out
                grpc.StatusCode.ALREADY_EXISTS,
            ),
        )
        assert isinstance(reply, pb.JoinReply)
        self.session = reply.session
        self.poll_s = reply.poll_s or 1.0
        self.backend.set_client_id(reply.session.client_id)
        log.info("joined %s as client %d", self.options.server, reply.session.client_id)

    def _session(self) -> pb.Session:
        assert self.session is not None
        return self.session

    def _turn_call(self, name: str, request: object) -> object:
        """A call inside a turn; a refused turn becomes :class:`TurnAborted`."""
        try:
            return self._rpc(name, request, timeout=self.options.rpc_timeout)
        except grpc.RpcError as exc:
            code = exc.code()
            if code in (
                grpc.StatusCode.PERMISSION_DENIED,  # dropped: session expired
                grpc.StatusCode.FAILED_PRECONDITION,  # the turn is over
                grpc.StatusCode.UNAVAILABLE,  # server down or restarting
                grpc.StatusCode.CANCELLED,  # server shutting down
                grpc.StatusCode.ABORTED,  # the run stopped
            ):
                raise TurnAborted(f"{name}: {code.name}: {exc.details()}") from None
            raise TransportError(f"{name} refused: {code.name}: {exc.details()}") from None

    # ---------------------------------------------------------------------------- tasks
    def _train(self, task: pb.Task) -> None:
        session = self._session()

        def step(t: int, smashed: bytes, labels: bytes) -> bytes:
            reply = self._turn_call(
                "Step",
                pb.StepRequest(
                    session=session, turn=task.turn, t=t, smashed=smashed, labels=labels
                ),
            )
            assert isinstance(reply, pb.StepReply)
            return reply.grad

        out = self.backend.train_turn(task=task, step=step)
        self._turn_call(
            "FinishTurn",
            pb.TurnResult(
                session=session,
                turn=task.turn,
                model_state=out.model_state,
                client_state=out.client_state,
                stats_json=out.stats_json,
            ),
        )
        self.turns += 1

    def _evaluate(self, task: pb.Task) -> None:
        session = self._session()

        def send(smashed: bytes, labels: bytes, uncompressed: bool) -> tuple[float, int]:
            reply = self._turn_call(
                "EvalStep",
                pb.EvalRequest(
                    session=session,
                    turn=task.turn,
                    smashed=smashed,
                    labels=labels,
                    uncompressed=uncompressed,
                ),
            )
            assert isinstance(reply, pb.EvalReply)
            return reply.loss_sum, int(reply.correct)

        self.backend.evaluate(task=task, send=send)
        self._turn_call("FinishEval", pb.EvalDone(session=session, turn=task.turn))
        self.evals += 1

    def run(self) -> str:
        """Join and serve tasks until the server says DONE; returns the server's last message.

        Raises:
            TransportError: the server stayed unreachable for ``connect_timeout`` or refused
                the client for good (wrong token, wrong version, no free slot).
        """
        self._configure()
        self._join()
        unreachable_since: float | None = None
        while True:
            try:
                task = self._rpc(
                    "NextTask",
                    pb.TaskRequest(session=self._session()),
                    timeout=self.poll_s + min(self.options.rpc_timeout, 30.0),
                )
                unreachable_since = None
            except grpc.RpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.PERMISSION_DENIED:
                    log.warning("session refused (%s); rejoining", exc.details())
                    self._join()
                    continue
                if code in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    grpc.StatusCode.CANCELLED,
                ):
                    now = time.monotonic()
                    unreachable_since = unreachable_since or now
                    if now - unreachable_since > self.options.connect_timeout:
                        raise TransportError(
                            f"server {self.options.server} unreachable for "
                            f"{self.options.connect_timeout:g} s: {exc.details()}"
                        ) from None
                    self._sleep(0.2)
                    continue
                raise TransportError(f"NextTask refused: {code.name}: {exc.details()}") from None
            assert isinstance(task, pb.Task)
            if task.kind in (pb.Task.TRAIN, pb.Task.EVAL):
                self.tasks_received += 1
            try:
                if task.kind == pb.Task.TRAIN:
                    self._train(task)
                elif task.kind == pb.Task.EVAL:
                    self._evaluate(task)
                elif task.kind == pb.Task.DONE:
                    log.info("server says: %s", task.message)
                    return task.message
            except TurnAborted as exc:
                log.warning("turn %d aborted: %s", task.turn, exc)

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()
