"""The split-learning training loop: rounds of clients, records, checkpoints, resume.

One round = every client, one at a time, passes once over its local data (seeded per-round
shuffle, last partial batch kept); every iteration goes through the cut as bytes
(:class:`~acpsl.engine.client.ClientRuntime`, :class:`~acpsl.engine.server.ServerRuntime`).
After the round the test set is evaluated through the cut too, one record line is appended
and a checkpoint is written.

Modes (SPEC section 5):

* ``sequential`` (vanilla SL): one client model is relayed from client to client. What is
  relayed is the model *and its optimizer state* (momentum, Adam moments), so a run over IID
  clients behaves like one model trained on all the data, as a user expects; the hand-off
  bytes (``bytes_model``) count both. A hand-off happens whenever the next client to train is
  not the one holding the model (also from the last client of a round to the first of the
  next); the very first client builds the initial model itself from the run's seed.
* ``splitfed``: every client starts the round from the same client model; after the round
  each client uploads its model and downloads the data-size-weighted average (both counted
  in ``bytes_model``). Each client's optimizer state stays on that client (it is local, like
  a FedAvg client's) and is not sent.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from acpsl import data as acpsl_data
from acpsl.config import TrainConfig
from acpsl.cut.labels import encode_labels
from acpsl.engine.aggregate import splitfed_aggregate
from acpsl.engine.checkpoint import (
    load_checkpoint,
    prepare_run_dir,
    rounds_note,
    save_checkpoint,
)
from acpsl.engine.metrics import StepLogger
from acpsl.engine.records import (
    RECORD_FIELDS,
    UNCOMPRESSED_FIELDS,
    RunSummary,
    append_record,
    clean_float,
    gen_error,
    ratio_fields,
    step_fractions,
    summarize,
    truncate_records,
    write_atomic,
)
from acpsl.engine.setup import (
    Run,
    build_run,
    check_config,
    histogram_table,
    resolve_device,
    shuffle_order,
)
from acpsl.errors import CheckpointError, TrainingError, os_error_reason
from acpsl.logs import show_progress

Log = Callable[[str], None]

logger = logging.getLogger("acpsl.engine")

#: File names inside a run directory.
RECORDS = "records.jsonl"
CHECKPOINT = "checkpoint.pt"
CONFIG = "config.toml"
PARTITION = "partition.json"
SUMMARY = "summary.json"
KEPT_CHANNELS = "kept_channels.json"

_TOTALS = (
    "bytes_up_total",
    "bytes_down_total",
    "bytes_labels_total",
    "bytes_model_total",
    "bytes_eval_total",
)


def train(
    config: TrainConfig,
    *,
    out_dir: str | Path,
    resume: bool = False,
    log: Log | None = logger.info,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> RunSummary:
    """Train a split-learning run and write its records (SPEC sections 5-7).

    Writes ``out_dir/config.toml`` (the resolved configuration), ``partition.json`` (the
    per-client label histogram), ``records.jsonl`` (one line per finished round),
    ``checkpoint.pt`` (after every round), ``kept_channels.json`` (schemes that report
    per-channel kept counts, i.e. ACP-SL) and, at the end, ``summary.json``.

    Args:
        config: the run's configuration.
        out_dir: run directory (created if needed).
        resume: continue from the checkpoint of the last finished round. With no checkpoint
            and no record in ``out_dir`` the run starts from round 1; records without a
            checkpoint are refused (never deleted).
        log: where progress lines and the summary table go (default: the
            ``acpsl.engine`` logger at INFO; ``None``: silent).
        on_round: called with each round's record after its checkpoint is written.

    Returns:
        The :class:`RunSummary` of all rounds (including those before a resume).

    Raises:
        CheckpointError: ``out_dir`` already holds a run and ``resume`` is False, the
            checkpoint is corrupt or was made with a different configuration, or the run
            directory cannot be created or written (a file in the way, permissions, a full
            disk).
        TrainingError: the loss became non-finite.
        ConfigError, DataError: bad configuration or missing dataset files.
    """
    say: Log = log if log is not None else (lambda _msg: None)
    check_config(config)
    out = Path(out_dir)
    make_run_dir(out)
    records_path, ckpt_path = out / RECORDS, out / CHECKPOINT

    ckpt = prepare_run_dir(
        out, config=config, resume=resume, checkpoint=CHECKPOINT, records=RECORDS, say=say
    )
    if ckpt is not None:
        note = rounds_note(ckpt["config"], config)
        if note is not None:
            say(note)

    device = resolve_device(config.device)
    run = build_run(config, device=device)
    write_atomic(out / CONFIG, config.to_toml().encode("utf-8"))
    _write_partition(run, out / PARTITION, say)

    totals = dict.fromkeys(_TOTALS, 0)
    t, wall_before, start_round = 0, 0.0, 1
    if ckpt is not None:
        _restore(run, ckpt)
        records = truncate_records(records_path, rounds=int(ckpt["round"]))
        totals = {k: int(ckpt["totals"][k]) for k in _TOTALS}
        t, wall_before = int(ckpt["iteration"]), float(ckpt["wall_s"])
        start_round = int(ckpt["round"]) + 1
        say(f"resuming {out} after round {ckpt['round']} (iteration {t})")
    else:
        write_atomic(records_path, b"")
        records = []
        # round 0: a record is finished exactly when a checkpoint covers it (resume drops
        # the others), so a crash inside round 1 never leaves records without a checkpoint
        save_checkpoint(
            ckpt_path, _checkpoint_state(run, round_index=0, t=0, totals=totals, wall_s=0.0)
        )

    say(
        f"training {config.scheme} on {config.dataset} ({len(run.train_set)} train / "
        f"{len(run.test_set)} test samples), {config.model} {cut_text(run)}, "
        f"{config.clients} clients ({config.mode}), {config.rounds} rounds, device {device}"
    )
    total_iters = run.total_iterations()
    # per-step metrics (metrics.csv, TensorBoard); rows are flushed every round, so a crash
    # loses none that the records hold
    metrics = StepLogger(config.loggers, out_dir=out, start_iteration=t)
    segment_start = time.perf_counter()
    for r in range(start_round, config.rounds + 1):
        round_start = time.perf_counter()
        record, t = _train_round(run, round_index=r, t=t, total=total_iters, metrics=metrics)
        record.update(_evaluate(run))
        record["gen_error"] = gen_error(record)
        add_totals(record, totals)
        now = time.perf_counter()
        record["round_s"] = now - round_start
        record["wall_s"] = wall_before + (now - segment_start)
        record = save_round(run, out, record, t=t, totals=totals)
        records.append(record)
        metrics.round(record)
        say(_round_line(record, config.rounds))
        if on_round is not None:
            on_round(record)
    metrics.close()

    summary = summarize(records, out_dir=out, targets=config.target_acc)
    write_atomic(out / SUMMARY, json.dumps(summary.to_dict(), indent=2).encode("utf-8"))
    say("summary:\n" + summary.table())
    return summary


def add_totals(record: dict[str, Any], totals: dict[str, int]) -> None:
    """Add a round's byte counts (``bytes_up`` ...) to the running ``totals``
    (``bytes_up_total`` ...) and copy the totals into ``record``."""
    for key in _TOTALS:
        totals[key] += int(record[key.removesuffix("_total")])
    record.update(totals)


def save_round(
    run: Run, out: Path, record: dict[str, Any], *, t: int, totals: dict[str, int]
) -> dict[str, Any]:
    """Make a finished round durable, in this order: its record line (fsync'ed), the
    per-channel kept counts, then the checkpoint (so the records never lag the checkpoint).

    Args:
        run: the run (models, optimizers, scheme states go into the checkpoint).
        out: the run directory.
        record: the round's record.
        t: the global iteration reached.
        totals: the cumulative counters the checkpoint restores on resume.

    Returns:
        The record with its fields in :data:`RECORD_FIELDS` order (as written).
    """
    record = _ordered(record)
    append_record(out / RECORDS, record)
    kept = _kept_channels(run)
    if kept is not None:
        data = json.dumps({"round": record["round"], **kept}).encode("utf-8")
        write_atomic(out / KEPT_CHANNELS, data)
    state = _checkpoint_state(
        run, round_index=int(record["round"]), t=t, totals=totals, wall_s=record["wall_s"]
    )
    save_checkpoint(out / CHECKPOINT, state)
    return record


def make_run_dir(out: Path) -> None:
    """Create the run directory ``out`` (and its parents) if needed.

    Raises:
        CheckpointError: ``out`` (or a parent) is a file, or cannot be created (permissions,
            read-only or full disk), with the reason in one line.
    """
    if out.exists() and not out.is_dir():
        raise CheckpointError(
            f"cannot use {out} as the run directory: it exists and is not a directory; "
            "choose another out_dir (--out)"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(
            f"cannot create the run directory {out}: {os_error_reason(exc)}; choose another "
            "out_dir (--out)"
        ) from None


# ----------------------------------------------------------------------------- one round
def _train_round(
    run: Run, *, round_index: int, t: int, total: int, metrics: StepLogger | None = None
) -> tuple[dict[str, Any], int]:
    """Every client passes once over its data; returns the round's partial record and ``t``.

    Each iteration goes to ``metrics`` (``metrics.csv`` / TensorBoard) when it is active."""
    config, server = run.config, run.server
    bytes_up = bytes_down = bytes_labels = bytes_model = 0
    loss_sum, correct, seen = 0.0, 0, 0
    ratios: list[float] = []
    kept_fracs: list[float] = []
    table2: float | None = None
    bound: float | None = None
    bar = tqdm(
        total=sum(run.batches_per_client()),
        desc=f"round {round_index}/{config.rounds}",
        unit="it",
        disable=not show_progress(config.progress),
        leave=False,
        dynamic_ncols=True,
    )
    try:
        for c, client in enumerate(run.clients):
            if config.mode == "sequential":
                if run.holder is not None and run.holder != c:
                    handoff = run.clients[run.holder].export_state(with_optimizer=True)
                    client.import_state(handoff)
                    bytes_model += len(handoff)
                run.holder = c
            order = run.parts[c][
                shuffle_order(
                    seed=config.seed, round_index=round_index, client=c, size=run.sizes[c]
                )
            ]
            # In memory: slices by index; other datasets: a DataLoader with workers.
            for x, y in run.train_set.batches(order, batch_size=config.batch_size):
                t += 1
                up = client.forward(x, y, t=t, total=total)
                stats = client.scheme.stats()
                try:
                    down, loss, hits = server.step(c, up.smashed, up.labels, t=t, total=total)
                except TrainingError as exc:
                    raise TrainingError(f"round {round_index}, iteration {t}: {exc}") from None
                client.backward(down)
                n = int(y.numel())
                bytes_up += len(up.smashed)
                bytes_labels += len(up.labels)
                bytes_down += len(down)
                loss_sum += loss * n
                correct += hits
                seen += n
                p_t, kept_frac = step_fractions(stats)
                if p_t is not None:
                    ratios.append(p_t)
                if kept_frac is not None:
                    kept_fracs.append(kept_frac)
                if metrics is not None and metrics.active:
                    metrics.step(
                        {
                            "round": round_index,
                            "iteration": t,
                            "client": c,
                            "loss": loss,
                            "batch": n,
                            "bytes_up": len(up.smashed),
                            "bytes_down": len(down),
                            "bytes_labels": len(up.labels),
                            "p_t": p_t,
                            "kept_frac": kept_frac,
                        }
                    )
                if "table2_bytes" in stats:
                    table2 = (table2 or 0.0) + float(stats["table2_bytes"])
                if "bound_bytes" in stats:
                    bound = (bound or 0.0) + float(stats["bound_bytes"])
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
    finally:
        bar.close()
    if config.mode == "splitfed":
        bytes_model += splitfed_aggregate(run.clients, sizes=run.sizes)
    record: dict[str, Any] = {
        "round": round_index,
        "iteration": t,
        "train_loss": loss_sum / seen,
        "train_acc": correct / seen,
        "bytes_up": bytes_up,
        "bytes_down": bytes_down,
        "bytes_labels": bytes_labels,
        "bytes_model": bytes_model,
        **ratio_fields(ratios, kept=kept_fracs),
        "table2_bytes_up": clean_float(table2),
        "bound_bytes_up": clean_float(bound),
        "kept_counts": _kept_total(run),
    }
    return record, t


def _evaluate(run: Run) -> dict[str, Any]:
    """Test accuracy and loss through the cut (and uncompressed, when asked).

    The last client of the round (it holds the newest client model) compresses the test set
    with ``training=False``; those bytes are ``bytes_eval``, apart from training traffic.
    """
    config, server = run.config, run.server
    c = run.holder if run.holder is not None else len(run.clients) - 1
    client = run.clients[c]
    loss_sum, correct, count, bytes_eval = 0.0, 0, 0, 0
    raw_loss, raw_correct = 0.0, 0
    n = len(run.test_set)
    for x, y in run.test_set.batches(torch.arange(n), batch_size=config.batch_size):
        payload, labels = client.encode_eval(x), encode_labels(y)
        bytes_eval += len(payload) + len(labels)
        batch_loss, batch_correct, batch_count = server.evaluate(c, payload, labels)
        loss_sum += batch_loss
        correct += batch_correct
        count += batch_count
        if config.eval_uncompressed:
            raw = server.score(client.smash(x), y)
            raw_loss += raw[0]
            raw_correct += raw[1]
    out: dict[str, Any] = {
        "test_acc": correct / count,
        "test_loss": clean_float(loss_sum / count),
        "bytes_eval": bytes_eval,
    }
    if config.eval_uncompressed:
        out["test_acc_uncompressed"] = raw_correct / count
        out["test_loss_uncompressed"] = clean_float(raw_loss / count)
    return out


# ------------------------------------------------------------------------- bookkeeping
def _kept_per_client(run: Run) -> list[list[int]] | None:
    counts = []
    for client in run.clients:
        fn = getattr(client.scheme, "kept_counts", None)
        if not callable(fn):
            return None
        value = fn()
        if value is None:
            return None
        counts.append([int(v) for v in torch.as_tensor(value).reshape(-1).tolist()])
    return counts


def _kept_total(run: Run) -> list[int] | None:
    kept = _kept_channels(run)
    return None if kept is None else kept["total"]


def _kept_channels(run: Run) -> dict[str, Any] | None:
    per_client = _kept_per_client(run)
    if per_client is None or not per_client:
        return None
    return {"total": [sum(col) for col in zip(*per_client)], "clients": per_client}


def _ordered(record: dict[str, Any]) -> dict[str, Any]:
    keys = [k for k in (*RECORD_FIELDS, *UNCOMPRESSED_FIELDS) if k in record]
    keys += [k for k in record if k not in keys]
    return {k: record[k] for k in keys}


def _round_line(record: dict[str, Any], rounds: int) -> str:
    ratio, kept = record.get("ratio_mean"), record.get("kept_frac_mean")
    extra = f", P_t {100 * ratio:.1f}%" if ratio is not None else ""
    if kept is not None and kept < 1:
        extra += f", sent {100 * kept:.1f}% of the cut"
    return (
        f"round {record['round']}/{rounds}: train loss {record['train_loss']:.4f} "
        f"acc {100 * record['train_acc']:.2f}%, test acc {100 * record['test_acc']:.2f}%, "
        f"up {record['bytes_up']:,} B, down {record['bytes_down']:,} B{extra}, "
        f"{record['round_s']:.1f} s"
    )


def cut_text(run: Run) -> str:
    """``"cut 4 (client: conv1, bn1, relu, maxpool)"``: the cut the run really uses (the
    model's default when ``config.cut`` is unset)."""
    from acpsl.models.split import FLATTEN

    model = run.client_models[0].model if run.client_models else run.clients[0].model
    names = [name for name, _ in model.named_children() if name != FLATTEN]
    if not names:
        return "cut " + ("default" if run.config.cut is None else str(run.config.cut))
    return f"cut {len(names)} (client: {', '.join(names)})"


def _write_partition(run: Run, path: Path, say: Log) -> None:
    labels = run.train_set.labels
    hist = acpsl_data.label_histogram(labels, run.parts, run.train_set.num_classes)
    payload = {
        "partition": run.config.partition,
        "beta": run.config.beta,
        "clients": run.config.clients,
        "num_classes": run.train_set.num_classes,
        "sizes": run.sizes,
        "histogram": [[int(v) for v in row] for row in hist],
    }
    write_atomic(path, json.dumps(payload, indent=1).encode("utf-8"))
    say("label histogram per client:\n" + histogram_table(hist, run.sizes))


def _checkpoint_state(
    run: Run, *, round_index: int, t: int, totals: dict[str, int], wall_s: float
) -> dict[str, Any]:
    return {
        "round": round_index,
        "iteration": t,
        "wall_s": wall_s,
        "config": run.config.to_dict(),
        "totals": dict(totals),
        "holder": -1 if run.holder is None else run.holder,
        "client_models": [
            {"model": c.model.state_dict(), "optimizer": c.optimizer.state_dict()}
            for c in run.client_models
        ],
        "client_schemes": [c.scheme.state_dict() for c in run.clients],
        "server": {
            "model": run.server.model.state_dict(),
            "optimizer": run.server.optimizer.state_dict(),
            "schemes": {c: s.state_dict() for c, s in run.server.schemes.items()},
        },
    }


def _restore(run: Run, ckpt: dict[str, Any]) -> None:
    try:
        models = ckpt["client_models"]
        if len(models) != len(run.client_models):
            raise CheckpointError(
                f"checkpoint holds {len(models)} client models, the run has "
                f"{len(run.client_models)}"
            )
        for runtime, state in zip(run.client_models, models):
            runtime.model.load_state_dict(state["model"])
            runtime.optimizer.load_state_dict(state["optimizer"])
        for runtime, state in zip(run.clients, ckpt["client_schemes"]):
            runtime.scheme.load_state_dict(state)
        run.server.model.load_state_dict(ckpt["server"]["model"])
        run.server.optimizer.load_state_dict(ckpt["server"]["optimizer"])
        for c, state in ckpt["server"]["schemes"].items():
            run.server.scheme(int(c)).load_state_dict(state)
        holder = int(ckpt["holder"])
        run.holder = None if holder < 0 else holder
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint does not fit this run: {exc}") from None
    if not math.isfinite(float(ckpt["wall_s"])):
        raise CheckpointError("checkpoint holds a non-finite wall time; it is corrupt")


def restore_run(run_dir: str | Path, *, config: TrainConfig | None = None) -> Run:
    """The :class:`Run` of a run directory at its last checkpoint (models, optimizers and
    scheme state restored), for analyses of a trained run (:mod:`acpsl.analysis.diagnose`).

    Args:
        run_dir: a run directory holding ``config.toml`` and ``checkpoint.pt``.
        config: the configuration to build the run with (default: the run's ``config.toml``);
            it must train the same models, e.g. the run's with another ``data_dir`` or
            ``eval_uncompressed=True``.

    Raises:
        CheckpointError: the files are missing or corrupt, or the checkpoint does not fit.
        DataError: the run's dataset is not available.
    """
    path = Path(run_dir)
    if config is None:
        if not (path / CONFIG).exists():
            raise CheckpointError(f"{path / CONFIG} is missing: {path} is not a run directory")
        config = TrainConfig.from_toml(path / CONFIG)
    if not (path / CHECKPOINT).exists():
        raise CheckpointError(
            f"{path / CHECKPOINT} is missing: the run's trained models are needed (runs "
            "copied without checkpoints can be reported, not analysed)"
        )
    ckpt = load_checkpoint(path / CHECKPOINT)
    run = build_run(config, device=resolve_device(config.device))
    _restore(run, ckpt)
    return run


def evaluate(run: Run) -> dict[str, Any]:
    """Test accuracy and loss of ``run`` through the cut (the scheme's inference mode), and
    uncompressed when ``run.config.eval_uncompressed`` (what each round's record holds)."""
    return _evaluate(run)
