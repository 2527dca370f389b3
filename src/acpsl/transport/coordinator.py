"""Server-side coordination of a networked split-learning run: clients, turns, rounds, drops.

The coordinator owns no model: it decides *who does what when* and delegates every piece of
training to a :class:`ServerBackend` (the engine's server runtime, records and checkpoints,
see :mod:`acpsl.transport.backend`). One driver thread runs the rounds; the gRPC handlers
(:mod:`acpsl.transport.service`) call into the coordinator from the server's thread pool.

Schedule (SPEC section 5: clients are trained one at a time): in each round every live client,
in id order, gets a TRAIN turn; then the round's last client gets an EVAL turn; then the
backend writes the round's record and checkpoint. Only one turn is active at a time, so the
server model sees the clients in the same order as in the in-process engine.

Drop policy (``on_drop``), applied when a client's turn makes no progress for
``client_timeout`` seconds (no call from it; a killed process stops calling) or when its
slot is known dead at the start of its turn:

* ``skip`` — the client is marked dead and its turn is abandoned; the round goes on with the
  next client. Its partial iterations stay in the server model (they happened); its client
  model is discarded (sequential: the next client gets the last model handed back; splitfed:
  it is left out of the average). A dead client takes part again once it rejoins.
* ``wait`` — the server waits up to ``rejoin_timeout`` seconds for the client to rejoin
  (same client id) and then gives it the turn again from the start; if it does not come
  back in time, the turn is skipped as above.

If every client is dead, the driver waits ``rejoin_timeout`` for one to come back and
otherwise stops the run with a :class:`~acpsl.errors.TrainingError` (finished rounds keep
their records and checkpoint, so ``acpsl serve --resume`` continues from there).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from acpsl import __version__
from acpsl.errors import AcpslError, ConfigError, PayloadError, TrainingError
from acpsl.transport import splitlearning_pb2 as pb

log = logging.getLogger("acpsl.transport")

DROP_POLICIES = ("skip", "wait")
#: Consecutive ``Step`` calls with a non-finite loss (finite inputs) that stop the run: one is
#: refused and the run goes on; this many in a row mean the server model diverged.
MAX_NONFINITE_STEPS = 3


class RpcReject(Exception):
    """A call the coordinator refuses; the service turns it into a gRPC status.

    Attributes:
        code: name of a ``grpc.StatusCode`` member (e.g. ``"INVALID_ARGUMENT"``).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class TurnStart:
    """What a TRAIN or EVAL task hands the client besides its coordinates.

    Attributes:
        model_state: client model (and relayed optimizer) state to load; empty: keep yours.
        client_state: client-private state to restore (scheme history, local optimizer).
        reset: rebuild the client's runtime from the configuration before loading anything.
    """

    model_state: bytes = b""
    client_state: bytes = b""
    reset: bool = False


class ServerBackend(Protocol):
    """What the coordinator needs from the training side (implemented over the engine)."""

    @property
    def num_clients(self) -> int:
        """Number of client slots of the run."""

    @property
    def rounds(self) -> int:
        """Rounds of the run."""

    @property
    def next_round(self) -> int:
        """First round still to run (``rounds + 1`` when the run is complete)."""

    @property
    def iteration(self) -> int:
        """Global iterations done so far."""

    @property
    def total_iterations(self) -> int:
        """``T``: the run's total number of training iterations."""

    def config_toml(self) -> str:
        """The run configuration sent to joining clients."""

    def on_join(self, *, client_id: int, fresh: bool) -> None:
        """A client process joined (``fresh``: it still holds the initial state)."""

    def begin_round(self, *, round: int) -> None:
        """Reset the per-round accumulators."""

    def begin_turn(self, *, client_id: int, round: int) -> TurnStart:
        """Start ``client_id``'s training turn; returns what to send with the task."""

    def train_step(self, *, client_id: int, t: int, smashed: bytes, labels: bytes) -> bytes:
        """One iteration on the server; returns the gradient payload. May raise PayloadError."""

    def finish_turn(
        self, *, client_id: int, model_state: bytes, client_state: bytes, stats_json: str
    ) -> None:
        """The client handed its model and state back at the end of its turn."""

    def abandon_turn(self, *, client_id: int) -> None:
        """The client's turn ended without a hand-back (it dropped)."""

    def skip_turn(self, *, client_id: int) -> None:
        """The client's turn was not given: it is dead (dropped earlier, not rejoined)."""

    def end_training(self, *, round: int) -> None:
        """Every training turn of the round is over (SplitFed aggregates here)."""

    def begin_eval(self, *, client_id: int) -> TurnStart:
        """Start an evaluation by ``client_id``; returns what to send with the task."""

    def eval_step(
        self, *, client_id: int, smashed: bytes, labels: bytes, uncompressed: bool
    ) -> tuple[float, int]:
        """Score one test batch; returns (sum of losses, correct). May raise PayloadError."""

    def eval_progress(self) -> tuple[int, int]:
        """``(batches scored, batches expected)`` of the evaluation in progress."""

    def finish_round(self, *, round: int, wire: dict[str, int]) -> dict[str, Any]:
        """Write the round's record (with the wire byte counts) and checkpoint; returns it."""

    def finish_run(self) -> None:
        """Every round is done: write the run's summary."""


@dataclass
class WireCounter:
    """Serialized protobuf sizes (``ByteSize()``) of the messages of one round, by purpose."""

    up: int = 0
    down: int = 0
    model: int = 0
    eval: int = 0

    def as_record(self) -> dict[str, int]:
        """The ``bytes_wire_*`` fields of a record."""
        return {
            "bytes_wire_up": self.up,
            "bytes_wire_down": self.down,
            "bytes_wire_model": self.model,
            "bytes_wire_eval": self.eval,
        }


@dataclass
class _Slot:
    client_id: int
    key: bytes = b""
    alive: bool = False
    joined_once: bool = False
    last_seen: float = 0.0
    pending: pb.Task | None = None


@dataclass
class _Turn:
    turn_id: int
    client_id: int
    kind: int
    round: int
    done: bool = False
    dropped: bool = False
    delivered: bool = False
    steps: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Timing:
    """Time limits of the coordinator, in seconds.

    Attributes:
        client_timeout: a client silent for this long during its turn is dropped. Must exceed
            the time of one client-side iteration and of one evaluation batch.
        join_timeout: how long to wait for every client to join before round 1.
        rejoin_timeout: ``wait`` policy (and all-clients-dead): how long to wait for a rejoin.
        poll_s: longest a ``NextTask`` call is held before answering WAIT.
    """

    client_timeout: float = 60.0
    join_timeout: float = 600.0
    rejoin_timeout: float = 120.0
    poll_s: float = 1.0

    def __post_init__(self) -> None:
        for name in ("client_timeout", "join_timeout", "rejoin_timeout", "poll_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0):
                raise ConfigError(f"invalid {name}={value!r}: must be a positive number of seconds")


class Coordinator:
    """Turn scheduler and session registry of one run.

    Args:
        backend: the training side.
        on_drop: ``skip`` or ``wait`` (see the module docstring).
        timing: time limits.
        clock: monotonic clock (tests may pass a fake one).
    """

    def __init__(
        self,
        *,
        backend: ServerBackend,
        on_drop: str = "skip",
        timing: Timing | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if on_drop not in DROP_POLICIES:
            raise ConfigError(
                f"invalid on_drop={on_drop!r}: choose one of {', '.join(DROP_POLICIES)}"
            )
        self.backend = backend
        self.on_drop = on_drop
        self.timing = timing or Timing()
        self._clock = clock
        self._cond = threading.Condition()
        self._compute = threading.Lock()
        self._slots = [_Slot(client_id=c) for c in range(backend.num_clients)]
        self._turn: _Turn | None = None
        self._turn_ids = 0
        self._finished = False
        self._error: BaseException | None = None
        self._nonfinite = 0
        self._stop = threading.Event()
        self.wire = WireCounter()
        self.records: list[dict[str, Any]] = []
        self.rejected: dict[str, int] = {}
        self.dropped: list[tuple[int, int]] = []

    # ------------------------------------------------------------------------- sessions
    @staticmethod
    def _check_version(version: str) -> None:
        if version != __version__:
            raise RpcReject(
                "FAILED_PRECONDITION",
                f"client runs acpsl {version or '?'}, server runs {__version__}; "
                "use the same version on both sides",
            )

    def get_config(self, request: pb.ConfigRequest) -> pb.ConfigReply:
        """The run's configuration (before joining: building a client takes a while)."""
        self._check_version(request.version)
        return pb.ConfigReply(config_toml=self.backend.config_toml())

    def join(self, request: pb.JoinRequest) -> pb.JoinReply:
        """Register a client (new or rejoining) and issue it a fresh session key."""
        self._check_version(request.version)
        n = len(self._slots)
        # Lock order everywhere: _compute before _cond (the backend must learn of the join
        # before the driver can build this client's next task).
        with self._compute, self._cond:
            now = self._clock()
            if request.requested_id >= 0:
                if request.requested_id >= n:
                    raise RpcReject(
                        "INVALID_ARGUMENT",
                        f"client id {request.requested_id} does not exist: this run has {n} "
                        f"clients (ids 0..{n - 1})",
                    )
                slot = self._slots[request.requested_id]
                if slot.alive and now - slot.last_seen < self.timing.client_timeout:
                    raise RpcReject(
                        "ALREADY_EXISTS",
                        f"client id {slot.client_id} is connected; pick another id or omit it",
                    )
            else:
                free = [s for s in self._slots if not s.alive]
                fresh = [s for s in free if not s.joined_once]
                if not free:
                    raise RpcReject("RESOURCE_EXHAUSTED", f"all {n} client slots are taken")
                slot = (fresh or free)[0]
            slot.key = secrets.token_bytes(16)
            slot.alive = True
            slot.joined_once = True
            slot.last_seen = now
            slot.pending = None
            self.backend.on_join(client_id=slot.client_id, fresh=request.fresh)
            self._cond.notify_all()
            log.info("client %d joined", slot.client_id)
            return pb.JoinReply(
                session=pb.Session(client_id=slot.client_id, key=slot.key),
                poll_s=self.timing.poll_s,
            )

    def _check_session(self, session: pb.Session) -> _Slot:
        """The slot of a valid session; marks it seen. Call with the lock held."""
        cid = session.client_id
        if not 0 <= cid < len(self._slots):
            raise RpcReject("PERMISSION_DENIED", f"unknown client id {cid}; join first")
        slot = self._slots[cid]
        if not slot.alive or not secrets.compare_digest(slot.key, session.key):
            raise RpcReject(
                "PERMISSION_DENIED",
                f"session of client {cid} is unknown or expired (dropped or server restarted); "
                "join again",
            )
        slot.last_seen = self._clock()
        return slot

    def _check_turn(self, session: pb.Session, turn: int, kind: int) -> _Turn:
        """The active turn if it belongs to this session and matches. Call with the lock held."""
        self._check_session(session)
        active = self._turn
        if (
            active is None
            or active.done
            or active.dropped
            or active.turn_id != turn
            or active.client_id != session.client_id
            or active.kind != kind
        ):
            raise RpcReject(
                "FAILED_PRECONDITION",
                f"turn {turn} is not the active {pb.Task.Kind.Name(kind)} turn of client "
                f"{session.client_id}; ask for the next task",
            )
        return active

    # ---------------------------------------------------------------------------- tasks
    def next_task(self, request: pb.TaskRequest) -> pb.Task:
        """Long poll: the client's pending task, DONE, or WAIT after ``poll_s``."""
        deadline = self._clock() + self.timing.poll_s
        with self._cond:
            slot = self._check_session(request.session)
            active = self._turn
            if (
                active is not None
                and active.client_id == slot.client_id
                and active.delivered
                and not (active.done or active.dropped)
            ):
                # The client asks for a new task while its turn is open: it gave the turn up
                # (a refused or failed call aborted it on its side). End it as a drop, so the
                # driver applies the drop policy instead of waiting for a call that never comes.
                active.dropped = True
                log.warning(
                    "client %d gave up its %s turn %d",
                    slot.client_id,
                    pb.Task.Kind.Name(active.kind),
                    active.turn_id,
                )
                self._cond.notify_all()
            while True:
                if slot.pending is not None:
                    task, slot.pending = slot.pending, None
                    if task.kind in (pb.Task.TRAIN, pb.Task.EVAL):
                        self.wire.model += task.ByteSize()
                        if self._turn is not None and self._turn.turn_id == task.turn:
                            self._turn.delivered = True
                    return task
                if self._stop.is_set():
                    # Not DONE: the server may come back with --resume; clients keep trying.
                    raise RpcReject(
                        "UNAVAILABLE", "the server is shutting down; retry until it is back"
                    )
                if self._finished:
                    return pb.Task(kind=pb.Task.DONE, message=self._done_message())
                remaining = deadline - self._clock()
                if remaining <= 0:
                    return pb.Task(kind=pb.Task.WAIT)
                self._cond.wait(timeout=remaining)
                slot = self._check_session(request.session)

    def _done_message(self) -> str:
        if self._error is not None:
            return f"run stopped: {self._error}"
        return "run complete"

    # --------------------------------------------------------------------- training calls
    # Every call that changes training state holds ``_compute`` from its turn check to the
    # end of its update, so check and act are one step: of two identical concurrent calls
    # only the first passes, and a call checked before its turn was dropped is applied
    # before the driver can act on the drop (abandon_turn, the next turn: all under
    # ``_compute``), while a call arriving after the drop is refused.
    def step(self, request: pb.StepRequest) -> pb.StepReply:
        """One training iteration of the active TRAIN turn."""
        with self._compute:
            with self._cond:
                turn = self._check_turn(request.session, request.turn, pb.Task.TRAIN)
                expected = self.backend.iteration + 1
                if request.t != expected:
                    raise RpcReject(
                        "INVALID_ARGUMENT", f"step for iteration {request.t}, expected {expected}"
                    )
            try:
                grad = self.backend.train_step(
                    client_id=request.session.client_id,
                    t=request.t,
                    smashed=request.smashed,
                    labels=request.labels,
                )
            except PayloadError:
                raise  # unusable input (malformed, empty, bad labels, NaN): refused, run goes on
            except TrainingError as exc:  # a non-finite loss on finite inputs
                self._nonfinite += 1
                if self._nonfinite >= MAX_NONFINITE_STEPS:
                    error = TrainingError(
                        f"{self._nonfinite} steps in a row had a non-finite loss: {exc}"
                    )
                    self._fail(error)
                    raise RpcReject("ABORTED", f"the run stopped: {error}") from None
                raise RpcReject("INVALID_ARGUMENT", f"step refused, not applied: {exc}") from None
            self._nonfinite = 0
            reply = pb.StepReply(grad=grad)
            with self._cond:
                turn.steps += 1
                self.wire.up += request.ByteSize()
                self.wire.down += reply.ByteSize()
                self._slots[request.session.client_id].last_seen = self._clock()
        return reply

    def finish_turn(self, request: pb.TurnResult) -> pb.Ack:
        """The client hands its model back: its TRAIN turn is over."""
        with self._compute:
            with self._cond:
                turn = self._check_turn(request.session, request.turn, pb.Task.TRAIN)
            self.backend.finish_turn(
                client_id=turn.client_id,
                model_state=request.model_state,
                client_state=request.client_state,
                stats_json=request.stats_json,
            )
            with self._cond:
                self.wire.model += request.ByteSize()
                turn.done = True
                self._cond.notify_all()
        return pb.Ack()

    def eval_step(self, request: pb.EvalRequest) -> pb.EvalReply:
        """One test batch of the active EVAL turn."""
        with self._compute:
            with self._cond:
                turn = self._check_turn(request.session, request.turn, pb.Task.EVAL)
            loss_sum, correct = self.backend.eval_step(
                client_id=turn.client_id,
                smashed=request.smashed,
                labels=request.labels,
                uncompressed=request.uncompressed,
            )
            reply = pb.EvalReply(loss_sum=loss_sum, correct=correct)
            with self._cond:
                turn.steps += 1
                self.wire.eval += request.ByteSize() + reply.ByteSize()
                self._slots[request.session.client_id].last_seen = self._clock()
        return reply

    def finish_eval(self, request: pb.EvalDone) -> pb.Ack:
        """The evaluating client has sent every test batch (checked: else refused)."""
        with self._compute:
            with self._cond:
                turn = self._check_turn(request.session, request.turn, pb.Task.EVAL)
                done, expected = self.backend.eval_progress()
                if done != expected:
                    raise RpcReject(
                        "FAILED_PRECONDITION",
                        f"evaluation incomplete: {done} of {expected} test batches scored; "
                        "send every test batch before FinishEval",
                    )
                turn.done = True
                self._cond.notify_all()
        return pb.Ack()

    def count_rejection(self, code: str) -> None:
        """Count a refused call by status (shown in the server's summary)."""
        with self._cond:
            self.rejected[code] = self.rejected.get(code, 0) + 1

    # --------------------------------------------------------------------------- driver
    @property
    def finished(self) -> bool:
        """Whether the run is over (complete or stopped by an error)."""
        with self._cond:
            return self._finished

    @property
    def error(self) -> BaseException | None:
        """The error that stopped the run, if any."""
        return self._error

    def _fail(self, exc: BaseException) -> None:
        with self._cond:
            if self._error is None:
                self._error = exc
            self._cond.notify_all()

    def stop(self) -> None:
        """Ask the driver to stop at the next check (server shutdown)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def run(self) -> None:
        """Drive the whole run: wait for the clients, then every remaining round."""
        try:
            self._wait_for_joins()
            for rnd in range(self.backend.next_round, self.backend.rounds + 1):
                self._run_round(rnd)
            with self._compute:
                self.backend.finish_run()
        except BaseException as exc:  # the server must report it, not die silently
            # An acpsl error is reported once, by whoever reads ``error`` (the CLI prints it
            # as its one-line error); anything else is a bug: logged with its traceback.
            if isinstance(exc, AcpslError):
                log.debug("run stopped: %s", exc)
            else:
                log.error("run stopped: %s", exc, exc_info=exc)
            if self._error is None:
                self._error = exc
        finally:
            with self._cond:
                self._finished = True
                for slot in self._slots:
                    slot.pending = None
                self._cond.notify_all()

    def _check_stop(self) -> None:
        if self._error is not None:
            raise self._error
        if self._stop.is_set():
            raise TrainingError("server is shutting down")

    def _wait_for_joins(self) -> None:
        deadline = self._clock() + self.timing.join_timeout
        with self._cond:
            while not all(s.joined_once for s in self._slots):
                self._check_stop()
                remaining = deadline - self._clock()
                if remaining <= 0:
                    joined = sum(s.joined_once for s in self._slots)
                    raise TrainingError(
                        f"only {joined} of {len(self._slots)} clients joined within "
                        f"{self.timing.join_timeout:g} s; start the missing clients or raise "
                        "--join-timeout"
                    )
                self._cond.wait(timeout=min(remaining, 0.5))

    def _run_round(self, rnd: int) -> None:
        self.wire = WireCounter()
        with self._compute:
            self.backend.begin_round(round=rnd)
        last: int | None = None
        for cid in range(len(self._slots)):
            if self._train_turn(cid, rnd):
                last = cid
        if last is None:
            raise TrainingError(f"round {rnd}: no client finished its turn")
        with self._compute:
            self.backend.end_training(round=rnd)
        self._eval(rnd, preferred=last)
        with self._compute:
            record = self.backend.finish_round(round=rnd, wire=self.wire.as_record())
        self.records.append(record)
        # the backend logs the round's line; this one is for debugging the coordinator
        log.debug("round %d finished: %s", rnd, record.get("test_acc"))

    def _train_turn(self, cid: int, rnd: int) -> bool:
        """Run client ``cid``'s TRAIN turn under the drop policy; whether it finished."""
        while True:
            if not self._await_alive(cid):
                with self._compute:
                    self.backend.skip_turn(client_id=cid)
                log.warning("round %d: client %d is gone; its turn is skipped", rnd, cid)
                return False
            with self._compute:
                start = self.backend.begin_turn(client_id=cid, round=rnd)
            task = pb.Task(
                kind=pb.Task.TRAIN,
                round=rnd,
                t_start=self.backend.iteration,
                total=self.backend.total_iterations,
                model_state=start.model_state,
                client_state=start.client_state,
                reset=start.reset,
            )
            if self._run_task(cid, rnd, task):
                return True
            with self._compute:
                self.backend.abandon_turn(client_id=cid)
            self.dropped.append((rnd, cid))
            if self.on_drop == "skip":
                log.warning("round %d: client %d dropped mid-turn; the round goes on", rnd, cid)
                return False
            log.warning("round %d: client %d dropped mid-turn; waiting for it to rejoin", rnd, cid)

    def _eval(self, rnd: int, *, preferred: int) -> None:
        """Evaluate through the cut by ``preferred`` (else by the last live client).

        Each client gets at most two tries (a client that gave its evaluation up, e.g. after
        a transient error, and is still alive, is asked once more).
        """
        tries: dict[int, int] = {}
        cid: int | None = preferred
        while cid is not None:
            tries[cid] = tries.get(cid, 0) + 1
            if self._await_alive(cid, wait=False):
                with self._compute:
                    start = self.backend.begin_eval(client_id=cid)
                task = pb.Task(
                    kind=pb.Task.EVAL,
                    round=rnd,
                    model_state=start.model_state,
                    client_state=start.client_state,
                    reset=start.reset,
                )
                if self._run_task(cid, rnd, task):
                    return
                self.dropped.append((rnd, cid))
            with self._cond:
                live = [
                    s.client_id for s in self._slots if s.alive and tries.get(s.client_id, 0) < 2
                ]
            cid = preferred if preferred in live else (live[-1] if live else None)
        raise TrainingError(f"round {rnd}: no live client could run the evaluation")

    def _await_alive(self, cid: int, *, wait: bool | None = None) -> bool:
        """Whether ``cid`` is (or, under ``wait``, becomes) alive; dead clients are skipped."""
        wait = self.on_drop == "wait" if wait is None else wait
        with self._cond:
            slot = self._slots[cid]
            self._expire(slot)
            if slot.alive:
                return True
            if not wait and any(s.alive for s in self._slots):
                return False
            deadline = self._clock() + self.timing.rejoin_timeout
            while not slot.alive:
                self._check_stop()
                if any(s.alive for s in self._slots) and not wait:
                    return False
                remaining = deadline - self._clock()
                if remaining <= 0:
                    if any(s.alive for s in self._slots):
                        return False
                    raise TrainingError(
                        f"every client is gone and none rejoined within "
                        f"{self.timing.rejoin_timeout:g} s; restart the clients and the "
                        "server with --resume"
                    )
                self._cond.wait(timeout=min(remaining, 0.5))
            return True

    def _expire(self, slot: _Slot) -> None:
        """Mark ``slot`` dead if it has been silent for ``client_timeout``. Lock held."""
        if slot.alive and self._clock() - slot.last_seen > self.timing.client_timeout:
            slot.alive = False
            slot.key = b""
            log.warning(
                "client %d silent for over %g s: marked dropped",
                slot.client_id,
                self.timing.client_timeout,
            )

    def _run_task(self, cid: int, rnd: int, task: pb.Task) -> bool:
        """Hand ``task`` to ``cid`` and wait until it is done (True) or the client drops."""
        with self._cond:
            self._turn_ids += 1
            task.turn = self._turn_ids
            turn = _Turn(turn_id=task.turn, client_id=cid, kind=task.kind, round=rnd)
            self._turn = turn
            slot = self._slots[cid]
            slot.pending = task
            self._cond.notify_all()
            while not turn.done:
                self._check_stop()
                self._expire(slot)
                if not slot.alive or turn.dropped:
                    turn.dropped = True
                    slot.pending = None
                    self._turn = None
                    return False
                self._cond.wait(timeout=0.2)
            self._turn = None
            return True
