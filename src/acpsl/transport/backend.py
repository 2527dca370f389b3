"""The engine behind the network: server and client backends built from the in-process pieces.

Nothing here is a second training loop. Both sides build the run with the engine's
:func:`~acpsl.engine.setup.build_run` from the same configuration, so data, partition, model
initialization, seeds and the per-round shuffles are the in-process engine's. Each iteration
is the engine's :class:`~acpsl.engine.client.ClientRuntime` ``forward``/``backward`` on the
client and :class:`~acpsl.engine.server.ServerRuntime` ``step`` on the server, with the
four byte strings crossing gRPC instead of a function call. Records, checkpoints, resume
and the summary are the engine's (:mod:`acpsl.engine.loop`, :mod:`acpsl.engine.records`,
:mod:`acpsl.engine.checkpoint`); a record is the in-process record plus the bytes measured
on the wire (``bytes_wire_*``, serialized protobuf sizes) and the clients dropped.

The server keeps a mirror of every client (its :class:`~acpsl.engine.setup.Run` holds the
client runtimes, as in-process): at the end of each turn the client hands back its model
(the sequential relay, or the SplitFed upload) and its private state (scheme history, local
optimizer). So the checkpoint is exactly the in-process one, and a client whose process was
restarted, or a server restarted with ``--resume``, is resynchronized from it.

Traffic accounting. ``bytes_model`` counts what the in-process engine counts (a sequential
hand-off once, client to client; SplitFed uploads and the downloads of the average), so the
records of both are equal; the relay through the server really moves a hand-off twice, and
that is what ``bytes_wire_model`` shows.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from acpsl.config import TrainConfig
from acpsl.cut.labels import decode_labels, encode_labels
from acpsl.cut.payload import KIND_FORWARD
from acpsl.cut.state import decode_state_dict, encode_state_dict
from acpsl.engine import loop as engine_loop
from acpsl.engine.aggregate import weighted_average
from acpsl.engine.checkpoint import prepare_run_dir, save_checkpoint
from acpsl.engine.client import ClientRuntime
from acpsl.engine.records import (
    RunSummary,
    clean_float,
    gen_error,
    ratio_fields,
    summarize,
    truncate_records,
    write_atomic,
)
from acpsl.engine.setup import Run, build_run, resolve_device, shuffle_order
from acpsl.errors import CheckpointError, ConfigError, PayloadError
from acpsl.locks import PidLock
from acpsl.logs import show_progress
from acpsl.schemes.standard import StandardScheme, decode_dense, encode_dense
from acpsl.transport import splitlearning_pb2 as pb
from acpsl.transport.client import EvalFn, StepFn, TurnAborted, TurnOutput
from acpsl.transport.coordinator import TurnStart

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

Log = Callable[[str], None]
_log = logging.getLogger("acpsl.transport")
#: Per-iteration scheme statistics a client reports with its turn (lists of numbers):
#: ``ratio`` = realised fraction dropped, ``p_target`` = ACP-SL's P_t (eq. 13).
_STAT_KEYS = ("ratio", "p_target", "table2_bytes", "bound_bytes")

#: Byte counters of the records, per round and cumulative (the in-process ones).
_TOTALS = engine_loop._TOTALS
#: Wire counters (serialized protobuf sizes), per round in ``bytes_wire_<k>``.
WIRE_KEYS = ("up", "down", "model", "eval")
#: Lock file a serving process holds in its run directory.
LOCK_FILE = "serve.lock"


class RunDirLock(PidLock):
    """An exclusive lock on ``DIR/serve.lock`` for as long as a server writes ``DIR``
    (:class:`acpsl.locks.PidLock`: a crashed server never blocks ``--resume``).

    Raises:
        CheckpointError: another process holds the lock.
    """

    def __init__(self, folder: Path) -> None:
        path = folder / LOCK_FILE

        def busy(holder: str) -> CheckpointError:
            return CheckpointError(
                f"another acpsl serve (pid {holder or '?'}) is using the run directory "
                f"{folder} (it holds {path}); stop that server first, or choose another --out"
            )

        super().__init__(path, busy=busy)


def config_from_toml_text(text: str, **overrides: Any) -> TrainConfig:
    """A :class:`TrainConfig` from TOML text, with local ``overrides`` (data_dir, device, ...).

    Raises:
        ConfigError: the text is not valid TOML or not a valid configuration.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"the server sent an invalid configuration: {exc}") from None
    data.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(data)


def _client_state(runtime: ClientRuntime, *, splitfed: bool) -> bytes:
    """Client-private state: the scheme's (history, RNG), and the local optimizer in SplitFed."""
    state: dict[str, Any] = {"scheme": runtime.scheme.state_dict()}
    if splitfed:
        state["optimizer"] = runtime.optimizer.state_dict()
    return encode_state_dict(state)


def _check_tensors(got: Any, want: dict[str, torch.Tensor], what: str) -> None:
    """``got`` is a state dict with exactly ``want``'s keys, shapes and dtypes, all finite."""
    if not isinstance(got, dict) or set(got) != set(want):
        extra = sorted(map(str, set(got) - set(want))) if isinstance(got, dict) else []
        missing = sorted(set(want) - set(got)) if isinstance(got, dict) else sorted(want)
        raise PayloadError(
            f"{what} does not fit the client model: missing {missing[:3]}, unexpected {extra[:3]}"
        )
    for key, ref in want.items():
        value = got[key]
        if not isinstance(value, torch.Tensor):
            raise PayloadError(f"{what}: {key} is not a tensor")
        if value.shape != ref.shape or value.dtype != ref.dtype:
            raise PayloadError(
                f"{what}: {key} has dtype {value.dtype} and shape {tuple(value.shape)}, the "
                f"model's has {ref.dtype} and {tuple(ref.shape)}"
            )
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise PayloadError(f"{what}: {key} holds NaN or infinite values")


def _check_hand_back(runtime: ClientRuntime, model_state: bytes, client_state: bytes) -> None:
    """Validate a turn's hand-back without touching ``runtime``: decode it, check the model
    tensors (keys, shapes, dtypes, finite), then load model, optimizer and private state into
    a copy of the runtime and check the optimizer state (shapes of its per-parameter tensors,
    finite values).

    Raises:
        PayloadError: anything does not fit; ``runtime`` is unchanged.
    """
    state = decode_state_dict(model_state)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise PayloadError("client state payload does not hold a model state")
    _check_tensors(state["model"], runtime.model.state_dict(), "handed-back model")
    model, optimizer, scheme = copy.deepcopy((runtime.model, runtime.optimizer, runtime.scheme))
    scratch = ClientRuntime(
        client_id=runtime.client_id,
        model=model,
        optimizer=optimizer,
        scheme=scheme,
        device=runtime.device,
    )
    scratch.import_state(model_state)
    _load_client_state(scratch, client_state)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for param in params:
        for name, value in optimizer.state.get(param, {}).items():
            if not isinstance(value, torch.Tensor):
                continue
            if value.dim() > 0 and value.shape != param.shape:
                raise PayloadError(
                    f"handed-back optimizer state {name!r} has shape {tuple(value.shape)} "
                    f"for a parameter of shape {tuple(param.shape)}"
                )
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise PayloadError(f"handed-back optimizer state {name!r} holds NaN or inf")


def _load_client_state(runtime: ClientRuntime, data: bytes) -> None:
    """Inverse of :func:`_client_state`.

    Raises:
        PayloadError: the bytes are malformed or do not fit this client.
    """
    state = decode_state_dict(data)
    if not isinstance(state, dict) or not isinstance(state.get("scheme"), dict):
        raise PayloadError("client state payload does not hold a scheme state")
    try:
        runtime.scheme.load_state_dict(state["scheme"])
        if "optimizer" in state:
            runtime.optimizer.load_state_dict(state["optimizer"])
    except (CheckpointError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise PayloadError(f"client state payload does not fit this client: {exc}") from None


class EngineServerBackend:
    """The server side of a networked run over the engine (see the module docstring).

    Args:
        config: the run's configuration (the clients receive it).
        out_dir: run directory (records, checkpoint, config, partition, summary).
        resume: continue from ``out_dir``'s checkpoint of the last finished round.
        log: where progress lines go (default: the ``acpsl.transport`` logger at INFO;
            ``None``: silent).

    Raises:
        CheckpointError: ``out_dir`` holds a run and ``resume`` is False, or the checkpoint
            does not match ``config``.
    """

    def __init__(
        self,
        *,
        config: TrainConfig,
        out_dir: str | Path,
        resume: bool = False,
        log: Log | None = _log.info,
    ) -> None:
        self.config = config
        self._say: Log = log if log is not None else (lambda _msg: None)
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self._lock = RunDirLock(self.out)
        try:
            self._setup(config, resume=resume)
        except BaseException:
            self._lock.release()
            raise

    def close(self) -> None:
        """Release the run directory (the server stopped)."""
        self._lock.release()

    def _setup(self, config: TrainConfig, *, resume: bool) -> None:
        self.records_path = self.out / engine_loop.RECORDS
        self.ckpt_path = self.out / engine_loop.CHECKPOINT
        # under the run-directory lock: no other server writes here
        ckpt = prepare_run_dir(
            self.out,
            config=config,
            resume=resume,
            checkpoint=engine_loop.CHECKPOINT,
            records=engine_loop.RECORDS,
            say=self._say,
        )
        self.run: Run = build_run(config, device=resolve_device(config.device))
        # labels outside the dataset's classes are refused before they reach the model
        self.run.server.num_classes = self.run.test_set.num_classes
        write_atomic(self.out / engine_loop.CONFIG, config.to_toml().encode("utf-8"))
        engine_loop._write_partition(self.run, self.out / engine_loop.PARTITION, self._say)
        self.totals: dict[str, int] = dict.fromkeys(_TOTALS, 0)
        self.wire_totals: dict[str, int] = {f"bytes_wire_{k}_total": 0 for k in WIRE_KEYS}
        self._t = 0
        self._wall_before = 0.0
        self._next_round = 1
        # Which clients' private state the server holds beyond the initial one.
        self._has_state = [False] * config.clients
        if ckpt is not None:
            engine_loop._restore(self.run, ckpt)
            self.records = truncate_records(self.records_path, rounds=int(ckpt["round"]))
            self.totals = {k: int(ckpt["totals"][k]) for k in _TOTALS}
            self.wire_totals = {k: int(ckpt["totals"].get(k, 0)) for k in self.wire_totals}
            self._t = int(ckpt["iteration"])
            self._wall_before = float(ckpt["wall_s"])
            self._next_round = int(ckpt["round"]) + 1
            self._has_state = [True] * config.clients
            self._say(f"resuming {self.out} after round {ckpt['round']} (iteration {self._t})")
        else:
            write_atomic(self.records_path, b"")
            self.records = []
            save_checkpoint(  # round 0, as in-process (acpsl.engine.checkpoint)
                self.ckpt_path,
                engine_loop._checkpoint_state(
                    self.run, round_index=0, t=0, totals=self.totals, wall_s=0.0
                ),
            )
        self._total = self.run.total_iterations()
        self._synced = [False] * config.clients
        self._segment_start: float | None = None
        self._aggregate: bytes = b""
        self.summary: RunSummary | None = None
        self.begin_round(round=self._next_round)
        self._segment_start = None  # the clock starts with the first round, not the joins

    # -------------------------------------------------------------------------- counters
    @property
    def num_clients(self) -> int:
        return self.config.clients

    @property
    def rounds(self) -> int:
        return self.config.rounds

    @property
    def next_round(self) -> int:
        return self._next_round

    @property
    def iteration(self) -> int:
        return self._t

    @property
    def total_iterations(self) -> int:
        return self._total

    @property
    def splitfed(self) -> bool:
        """Whether the run averages client models (SplitFed) rather than relaying one."""
        return self.config.mode == "splitfed"

    def config_toml(self) -> str:
        return self.config.to_toml()

    # ---------------------------------------------------------------------------- turns
    def on_join(self, *, client_id: int, fresh: bool) -> None:
        # A fresh process holds the initial state; it is in sync unless we hold a newer one.
        self._synced[client_id] = fresh and not self._has_state[client_id]

    def begin_round(self, *, round: int) -> None:
        self._round = round
        self._round_start = time.perf_counter()
        if self._segment_start is None:
            self._segment_start = self._round_start
        self._acc: dict[str, Any] = {
            "bytes_up": 0,
            "bytes_down": 0,
            "bytes_labels": 0,
            "bytes_model": 0,
            "loss_sum": 0.0,
            "correct": 0,
            "seen": 0,
            "ratios": [],
            "kept": [],
            "table2": None,
            "bound": None,
            "finished": [],
            "dropped": [],
        }
        self._eval: dict[str, Any] = {}

    def _resync(self, client_id: int) -> TurnStart:
        """Everything a client whose state is unknown needs: reset, model, private state."""
        runtime = self.run.clients[client_id]
        self._synced[client_id] = True
        model = b""
        if not self.splitfed and self.run.holder is not None:
            model = runtime.export_state(with_optimizer=True)
        elif self.splitfed and (self._has_state[client_id] or self._aggregate):
            model = runtime.export_state(with_optimizer=True)
        private = b""
        if self._has_state[client_id]:
            private = _client_state(runtime, splitfed=self.splitfed)
        return TurnStart(model_state=model, client_state=private, reset=True)

    def begin_turn(self, *, client_id: int, round: int) -> TurnStart:
        self._prev_holder = self.run.holder
        if not self._synced[client_id]:
            start = self._resync(client_id)
            if not self.splitfed and self.run.holder not in (None, client_id):
                self._acc["bytes_model"] += len(start.model_state)  # the hand-off it replaces
        elif self.splitfed:
            start = TurnStart(model_state=self._aggregate)  # counted when it was averaged
        elif self.run.holder is not None and self.run.holder != client_id:
            handoff = self.run.clients[self.run.holder].export_state(with_optimizer=True)
            self._acc["bytes_model"] += len(handoff)
            start = TurnStart(model_state=handoff)
        else:
            start = TurnStart()
        if not self.splitfed:
            self.run.holder = client_id
        return start

    def train_step(self, *, client_id: int, t: int, smashed: bytes, labels: bytes) -> bytes:
        down, loss, hits = self.run.server.step(client_id, smashed, labels, t=t, total=self._total)
        n = int(decode_labels(labels).numel())
        acc = self._acc
        acc["bytes_up"] += len(smashed)
        acc["bytes_labels"] += len(labels)
        acc["bytes_down"] += len(down)
        acc["loss_sum"] += loss * n
        acc["correct"] += hits
        acc["seen"] += n
        self._t = t
        return down

    def finish_turn(
        self, *, client_id: int, model_state: bytes, client_state: bytes, stats_json: str
    ) -> None:
        stats = _parse_stats(stats_json)
        runtime = self.run.clients[client_id]
        # All or nothing: a bad hand-back must not leave a half-loaded model (in sequential
        # mode the runtimes share one model, so it would be relayed to the next client).
        _check_hand_back(runtime, model_state, client_state)
        runtime.import_state(model_state)
        _load_client_state(runtime, client_state)
        self._has_state[client_id] = True
        acc = self._acc
        # "ratio" is the realised fraction dropped per iteration, "p_target" ACP-SL's P_t
        acc["ratios"].extend(stats["p_target"])
        acc["kept"].extend(1.0 - r for r in stats["ratio"])
        for key, name in (("table2", "table2_bytes"), ("bound", "bound_bytes")):
            for value in stats[name]:
                acc[key] = (acc[key] or 0.0) + value
        acc["finished"].append(client_id)

    def abandon_turn(self, *, client_id: int) -> None:
        if not self.splitfed:
            self.run.holder = self._prev_holder  # the relayed model died with the client
        self._synced[client_id] = False
        self._acc["dropped"].append(client_id)

    def skip_turn(self, *, client_id: int) -> None:
        self._acc["dropped"].append(client_id)

    def end_training(self, *, round: int) -> None:
        if not self.splitfed:
            return
        # SplitFed: average the uploads of the clients that finished, weighted by data size
        # (engine.aggregate), and count uploads and downloads as the in-process engine does.
        finished = sorted(set(self._acc["finished"]))
        uploads = [self.run.clients[c].export_state(with_optimizer=False) for c in finished]
        states = [decode_state_dict(u)["model"] for u in uploads]
        average = weighted_average(states, weights=[self.run.sizes[c] for c in finished])
        self._aggregate = encode_state_dict({"model": average})
        for runtime in self.run.clients:
            runtime.import_state(self._aggregate)
        self._acc["bytes_model"] += sum(len(u) for u in uploads) + len(self._aggregate) * len(
            self.run.clients
        )

    # ----------------------------------------------------------------------- evaluation
    def begin_eval(self, *, client_id: int) -> TurnStart:
        self._eval = {
            "loss": 0.0,
            "correct": 0,
            "count": 0,
            "bytes": 0,
            "raw_loss": 0.0,
            "raw_correct": 0,
            "raw_count": 0,
            "next": 0,  # next test batch expected (compressed), and uncompressed
            "raw_next": 0,
        }
        if not self._synced[client_id]:
            return self._resync(client_id)
        if self.splitfed:
            return TurnStart(model_state=self._aggregate)
        if self.run.holder is not None and self.run.holder != client_id:
            # The holder is gone: its model (kept by the server) evaluates on this client.
            return TurnStart(
                model_state=self.run.clients[self.run.holder].export_state(with_optimizer=True)
            )
        return TurnStart()

    def _eval_batches(self) -> int:
        return -(-len(self.run.test_set) // self.config.batch_size)

    def eval_progress(self) -> tuple[int, int]:
        ev = self._eval
        per_batch = 2 if self.config.eval_uncompressed else 1
        done = int(ev.get("next", 0)) + int(ev.get("raw_next", 0))
        return done, per_batch * self._eval_batches()

    def _test_labels(self, labels: bytes, *, cursor: str) -> tuple[int, torch.Tensor]:
        """The server's own labels of the next test batch (the client sends the batches in
        order); the client's labels must equal them.

        Raises:
            PayloadError: every batch was scored already, or the labels differ.
        """
        k = int(self._eval[cursor])
        batches, size = self._eval_batches(), self.config.batch_size
        if k >= batches:
            raise PayloadError(f"all {batches} test batches were scored already")
        y = self.run.test_set.labels[k * size : min((k + 1) * size, len(self.run.test_set))]
        sent = decode_labels(labels)
        if sent.shape != y.shape or not torch.equal(sent, y):
            raise PayloadError(
                f"labels of test batch {k} ({sent.numel()} labels) do not match the server's "
                f"test set ({y.numel()} labels); the client's test data differs from the "
                "server's (same dataset, --test-subset and data files on both sides?)"
            )
        return k, y

    def eval_step(
        self, *, client_id: int, smashed: bytes, labels: bytes, uncompressed: bool
    ) -> tuple[float, int]:
        # Scored against the server's own test labels (the server builds the same test set
        # from the configuration), so a client cannot choose what counts as correct.
        ev = self._eval
        if not ev:
            raise PayloadError("no evaluation in progress")
        if uncompressed:
            if not self.config.eval_uncompressed:
                raise PayloadError("this run does not evaluate uncompressed smashed data")
            _, y = self._test_labels(labels, cursor="raw_next")
            x = decode_dense(
                smashed,
                scheme_id=StandardScheme.wire_id,
                kind=KIND_FORWARD,
                what="uncompressed evaluation payload",
                limit=self.run.server.limit,  # the cut's shape, checked before decoding
            )
            if x.dim() == 0 or x.shape[0] != y.shape[0]:
                raise PayloadError(
                    f"uncompressed evaluation payload of shape {tuple(x.shape)} does not match "
                    f"{y.shape[0]} labels"
                )
            if not bool(torch.isfinite(x).all()):
                raise PayloadError("uncompressed evaluation payload holds NaN or infinity")
            loss, correct, count = self.run.server.score(x, y)
            ev["raw_loss"] += loss
            ev["raw_correct"] += correct
            ev["raw_count"] += count
            ev["raw_next"] += 1
            return loss, correct
        _, y = self._test_labels(labels, cursor="next")
        loss, correct, count = self.run.server.evaluate(client_id, smashed, labels)
        ev["loss"] += loss
        ev["correct"] += correct
        ev["count"] += count
        ev["bytes"] += len(smashed) + len(labels)
        ev["next"] += 1
        return loss, correct

    # ---------------------------------------------------------------------------- rounds
    def finish_round(self, *, round: int, wire: dict[str, int]) -> dict[str, Any]:
        acc, ev = self._acc, self._eval
        done, expected = self.eval_progress()
        if not ev or ev["count"] == 0 or done != expected:
            raise CheckpointError(f"round {round} has no complete evaluation; cannot write it")
        ratios: list[float] = acc["ratios"]
        seen = acc["seen"]
        record: dict[str, Any] = {
            "round": round,
            "iteration": self._t,
            "train_loss": clean_float(acc["loss_sum"] / seen) if seen else None,
            "train_acc": acc["correct"] / seen if seen else None,
            "bytes_up": acc["bytes_up"],
            "bytes_down": acc["bytes_down"],
            "bytes_labels": acc["bytes_labels"],
            "bytes_model": acc["bytes_model"],
            **ratio_fields(ratios, kept=acc["kept"]),
            "table2_bytes_up": clean_float(acc["table2"]),
            "bound_bytes_up": clean_float(acc["bound"]),
            "kept_counts": engine_loop._kept_total(self.run),
            "test_acc": ev["correct"] / ev["count"],
            "test_loss": clean_float(ev["loss"] / ev["count"]),
            "bytes_eval": ev["bytes"],
        }
        record["gen_error"] = gen_error(record)
        if self.config.eval_uncompressed and ev["raw_count"]:
            record["test_acc_uncompressed"] = ev["raw_correct"] / ev["raw_count"]
            record["test_loss_uncompressed"] = clean_float(ev["raw_loss"] / ev["raw_count"])
        engine_loop.add_totals(record, self.totals)
        now = time.perf_counter()
        assert self._segment_start is not None
        record["round_s"] = now - self._round_start
        record["wall_s"] = self._wall_before + (now - self._segment_start)
        for key in WIRE_KEYS:
            value = int(wire.get(f"bytes_wire_{key}", 0))
            record[f"bytes_wire_{key}"] = value
            self.wire_totals[f"bytes_wire_{key}_total"] += value
        record.update(self.wire_totals)
        record["clients_dropped"] = sorted(set(acc["dropped"]))
        record = engine_loop.save_round(
            self.run, self.out, record, t=self._t, totals={**self.totals, **self.wire_totals}
        )
        self.records.append(record)
        self._next_round = round + 1
        self._say(engine_loop._round_line(record, self.config.rounds))
        if round < self.config.rounds:
            self.begin_round(round=round + 1)
        return record

    def finish_run(self) -> None:
        self.summary = summarize(self.records, out_dir=self.out, targets=self.config.target_acc)
        write_atomic(
            self.out / engine_loop.SUMMARY,
            json.dumps(self.summary.to_dict(), indent=2).encode("utf-8"),
        )
        self._say("summary:\n" + self.summary.table())


def _parse_stats(text: str) -> dict[str, list[float]]:
    """Validate a turn's statistics JSON: lists of finite numbers under known keys.

    Raises:
        PayloadError: the text is not such JSON.
    """
    try:
        data = json.loads(text) if text else {}
    except json.JSONDecodeError as exc:
        raise PayloadError(f"turn statistics are not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PayloadError("turn statistics must be a JSON object")
    out: dict[str, list[float]] = {}
    for key in _STAT_KEYS:
        values = data.get(key, [])
        if not isinstance(values, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in values
        ):
            raise PayloadError(f"turn statistics: {key!r} must be a list of finite numbers")
        out[key] = [float(v) for v in values]
    return out


class EngineClientBackend:
    """The client side of a networked run over the engine (see the module docstring).

    Args:
        data_dir: this client's dataset root (``None``: the server configuration's).
        device: this client's device (``None``: the server configuration's).
        progress: show a progress bar per turn (``None``: the configuration's).
        model: this client's ``MODULE:FUNCTION`` for the run's plug-in model, when its copy
            of the module lives elsewhere (``None``: the configuration's).
        dataset: the same for a plug-in dataset.
    """

    def __init__(
        self,
        *,
        data_dir: str | None = None,
        device: str | None = None,
        progress: bool | None = None,
        model: str | None = None,
        dataset: str | None = None,
    ) -> None:
        self._overrides = {
            "data_dir": data_dir,
            "device": device,
            "progress": progress,
            "model": model,
            "dataset": dataset,
        }
        self.config: TrainConfig | None = None
        self.client_id = -1
        self._run: Run | None = None

    @property
    def runtime(self) -> ClientRuntime:
        """This client's runtime (after :meth:`configure`)."""
        if self._run is None:
            raise ConfigError("the client is not configured yet: join a server first")
        return self._run.clients[self.client_id]

    def configure(self, *, config_toml: str, client_id: int) -> None:
        self.config = config_from_toml_text(config_toml, **self._overrides)
        if client_id >= self.config.clients:
            raise ConfigError(
                f"client id {client_id} does not exist: the run has {self.config.clients} "
                f"clients (ids 0..{self.config.clients - 1})"
            )
        self._run = build_run(self.config, device=resolve_device(self.config.device))
        self.client_id = client_id

    def set_client_id(self, client_id: int) -> None:
        if self.config is None or not 0 <= client_id < self.config.clients:
            raise ConfigError(f"the server gave client id {client_id}, outside this run")
        self.client_id = client_id

    @property
    def splitfed(self) -> bool:
        """Whether the run averages client models."""
        return self.config is not None and self.config.mode == "splitfed"

    def _apply(self, task: pb.Task) -> tuple[bytes, bytes]:
        """Apply a task's reset/model/state; returns a snapshot of the state before the turn."""
        if task.reset:
            assert self.config is not None
            self._run = build_run(self.config, device=resolve_device(self.config.device))
        runtime = self.runtime
        if task.model_state:
            runtime.import_state(task.model_state)
        if task.client_state:
            _load_client_state(runtime, task.client_state)
        return runtime.export_state(with_optimizer=True), _client_state(runtime, splitfed=True)

    def _restore(self, snapshot: tuple[bytes, bytes]) -> None:
        runtime = self.runtime
        runtime.import_state(snapshot[0])
        _load_client_state(runtime, snapshot[1])

    def train_turn(self, *, task: pb.Task, step: StepFn) -> TurnOutput:
        snapshot = self._apply(task)
        run, runtime, config = self._run, self.runtime, self.config
        assert run is not None and config is not None
        c = self.client_id
        order = run.parts[c][
            shuffle_order(seed=config.seed, round_index=task.round, client=c, size=run.sizes[c])
        ]
        stats: dict[str, list[float]] = {key: [] for key in _STAT_KEYS}
        t = int(task.t_start)
        bar = tqdm(
            total=(order.numel() + config.batch_size - 1) // config.batch_size,
            desc=f"client {c} round {task.round}",
            unit="it",
            disable=not show_progress(config.progress),
            leave=False,
            dynamic_ncols=True,
        )
        try:
            for x, y in run.train_set.batches(order, batch_size=config.batch_size):
                t += 1
                up = runtime.forward(x, y, t=t, total=int(task.total))
                for key, value in runtime.scheme.stats().items():
                    if key in _STAT_KEYS:
                        stats[key].append(float(value))
                runtime.backward(step(t, up.smashed, up.labels))
                bar.update(1)
        except TurnAborted:
            self._restore(snapshot)  # the server dropped this turn: forget its updates
            raise
        finally:
            bar.close()
        return TurnOutput(
            model_state=runtime.export_state(with_optimizer=not self.splitfed),
            client_state=_client_state(runtime, splitfed=self.splitfed),
            stats_json=json.dumps(stats),
        )

    @torch.no_grad()
    def evaluate(self, *, task: pb.Task, send: EvalFn) -> None:
        snapshot = self._apply(task)
        run, runtime, config = self._run, self.runtime, self.config
        assert run is not None and config is not None
        n = len(run.test_set)
        try:
            for x, y in run.test_set.batches(torch.arange(n), batch_size=config.batch_size):
                labels = encode_labels(y)
                send(runtime.encode_eval(x), labels, False)
                if config.eval_uncompressed:
                    raw = encode_dense(
                        runtime.smash(x), scheme_id=StandardScheme.wire_id, kind=KIND_FORWARD
                    )
                    send(raw, labels, True)
        except TurnAborted:
            self._restore(snapshot)
            raise
