"""What a run records: one JSON line per finished round, and the end-of-run summary.

``records.jsonl`` is appended as the run goes, one object per finished round, with the
field names of SPEC sections 6 and 7. Each line is flushed and fsync'ed before the round's
checkpoint is written, so after a crash the file holds every round the checkpoint holds
(possibly one more, which a resume drops: no gap, no duplicate).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acpsl.errors import CheckpointError, os_error_reason

#: Fields every record line has, in the order they are written (SPEC sections 6 and 7).
RECORD_FIELDS: tuple[str, ...] = (
    "round",
    "iteration",
    "train_loss",
    "train_acc",
    "test_acc",
    "test_loss",
    "bytes_up",
    "bytes_down",
    "bytes_labels",
    "bytes_model",
    "bytes_up_total",
    "bytes_down_total",
    "bytes_labels_total",
    "bytes_model_total",
    "bytes_eval",
    "bytes_eval_total",
    "ratio_mean",
    "ratio_min",
    "ratio_max",
    "kept_frac_mean",
    "kept_frac_min",
    "kept_frac_max",
    "ratios",
    "gen_error",
    "table2_bytes_up",
    "bound_bytes_up",
    "kept_counts",
    "round_s",
    "wall_s",
)
#: Fields only present when the run evaluates without compression too.
UNCOMPRESSED_FIELDS: tuple[str, ...] = ("test_acc_uncompressed", "test_loss_uncompressed")
#: Cumulative byte counters a target report gives.
TOTAL_FIELDS: tuple[str, ...] = (
    "bytes_up_total",
    "bytes_down_total",
    "bytes_labels_total",
    "bytes_model_total",
)


def ratio_fields(ratios: Sequence[float], *, kept: Sequence[float] = ()) -> dict[str, Any]:
    """The pruning-ratio and kept-fraction fields of a round's record (SPEC section 6).

    Args:
        ratios: ACP-SL's ``P_t`` of eq. 13, one per iteration of the round, in iteration
            order (the first is iteration ``record["iteration"] - len(ratios) + 1``); recorded
            as ``ratios`` so plots can show ``P_t`` against the global iteration, beside its
            mean, min and max (``ratio_*``). Schemes without a pruning ratio give an empty
            list: ``None`` statistics.
        kept: the realised fraction of channels or values sent, one per iteration, for every
            scheme (``kept_frac_*``). ``round(P_t * N) / N`` channels are pruned, so
            ``kept_frac`` is not exactly ``1 - P_t``.
    """
    values = [float(r) for r in ratios]
    fracs = [float(k) for k in kept]
    return {
        **_stat_fields("ratio", values),
        **_stat_fields("kept_frac", fracs),
        "ratios": [clean_float(v) for v in values],
    }


def _stat_fields(prefix: str, values: Sequence[float]) -> dict[str, float | None]:
    return {
        f"{prefix}_mean": clean_float(sum(values) / len(values)) if values else None,
        f"{prefix}_min": clean_float(min(values)) if values else None,
        f"{prefix}_max": clean_float(max(values)) if values else None,
    }


def step_fractions(stats: Mapping[str, float]) -> tuple[float | None, float | None]:
    """``(P_t, kept fraction)`` of one iteration from a scheme's :meth:`stats`.

    ``P_t`` is the ratio ACP-SL's policy chose (eq. 13; its ``p_target``), ``None`` for
    schemes without one; the kept fraction is the share of channels or values really sent
    (``1 - stats["ratio"]``, the realised fraction dropped), ``None`` when not reported.
    """
    p_t = stats.get("p_target")
    dropped = stats.get("ratio")
    return (
        None if p_t is None else float(p_t),
        None if dropped is None else 1.0 - float(dropped),
    )


def upgrade_record(record: Mapping[str, Any], *, scheme: str | None) -> dict[str, Any]:
    """A record in today's field meanings, also when it was written before ``kept_frac_*``.

    Old records held the realised fraction *dropped* in ``ratio_*`` for every scheme. Their
    kept fractions are ``1 - ratio_*``; their ``ratio_*`` (``P_t``) are kept for ``acp``
    (whose realised fraction is ``round(P_t N) / N``, within ``1 / (2N)`` of ``P_t``) and set
    to ``None`` for the other schemes, which have no pruning ratio. Records that have
    ``kept_frac_*`` are returned unchanged (as a copy).
    """
    out = dict(record)
    if "kept_frac_mean" in out:
        return out
    for stat in ("mean", "min", "max"):
        dropped = out.get(f"ratio_{stat}")
        # the old min/max of the dropped fraction are the max/min of the kept one
        flip = {"mean": "mean", "min": "max", "max": "min"}[stat]
        out[f"kept_frac_{flip}"] = None if dropped is None else clean_float(1.0 - float(dropped))
    if scheme != "acp":
        for stat in ("mean", "min", "max"):
            out[f"ratio_{stat}"] = None
        out["ratios"] = []
    return out


def gen_error(record: Mapping[str, Any]) -> float | None:
    """Generalization error of a round: training accuracy minus test accuracy.

    The RandTopk paper's Fig. 4(b) quantity. The training accuracy is the one measured on the
    round's training batches as they were trained (``train_acc``), so for RandTopk it includes
    eq. 7's random selection, as in training.
    """
    train, test = record.get("train_acc"), record.get("test_acc")
    if train is None or test is None:
        return None
    return clean_float(float(train) - float(test))


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old or the new file.

    The bytes go to a fresh temporary file in the same folder (:func:`tempfile.mkstemp`, so
    two writers never share one), which is fsync'ed and moves onto ``path`` with
    :func:`os.replace` (atomic on POSIX and Windows); then the folder itself is fsync'ed, so
    the rename survives a power cut too. On failure the temporary file is removed.

    Raises:
        CheckpointError: the file cannot be written (a full disk, permissions), naming it.
    """
    path = Path(path)
    folder = path.parent
    with run_file_errors(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    fsync_dir(folder)


@contextlib.contextmanager
def run_file_errors(path: Path) -> Iterator[None]:
    """Turn an :class:`OSError` writing ``path`` (a run's file) into a one-line error.

    Raises:
        CheckpointError: naming the file and the system's reason (e.g. no space left).
    """
    try:
        yield
    except OSError as exc:
        raise CheckpointError(f"cannot write {path}: {os_error_reason(exc)}") from None


def fsync_dir(folder: Path) -> None:
    """fsync a directory, so a rename or a new file in it is durable (no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - platforms that cannot open a directory (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - file systems that refuse to fsync a directory
        pass
    finally:
        os.close(fd)


def append_record(path: Path, record: Mapping[str, Any]) -> None:
    """Append one record as a JSON line, flushed and fsync'ed before returning."""
    line = json.dumps(dict(record), allow_nan=False) + "\n"
    with run_file_errors(path), path.open("a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every complete record line of ``path`` (a torn last line from a crash is ignored).

    Raises:
        CheckpointError: if a line other than the last is not valid JSON.
    """
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    out: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1 and not line.endswith("\n"):
                break  # torn write of the last line: the round it belonged to is redone
            raise CheckpointError(
                f"{path}: line {i + 1} is not valid JSON; the file is corrupt"
            ) from None
    return out


def truncate_records(path: Path, *, rounds: int) -> list[dict[str, Any]]:
    """Keep the records of rounds ``1..rounds`` and rewrite ``path`` with exactly those.

    Used on resume: lines past the checkpoint's round (written just before a crash hit the
    checkpoint) are dropped, so the resumed run appends with no duplicate.

    Raises:
        CheckpointError: if a round in ``1..rounds`` is missing or duplicated.
    """
    kept = [r for r in read_records(path) if int(r.get("round", 0)) <= rounds]
    got = [int(r["round"]) for r in kept]
    if got != list(range(1, rounds + 1)):
        raise CheckpointError(
            f"{path} holds rounds {got} but the checkpoint finished round {rounds}; "
            "the run directory is inconsistent: start a new run in another "
            "out_dir (--out)"
        )
    text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in kept)
    write_atomic(path, text.encode("utf-8"))
    return kept


def clean_float(value: float | None) -> float | None:
    """``value`` as a JSON-safe float: ``None`` stays ``None``, NaN and inf become ``None``."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


# ------------------------------------------------------------------------------- summary
@dataclass(frozen=True)
class TargetResult:
    """When a run first reached a target test accuracy.

    Attributes:
        target: the accuracy asked for, a fraction in (0, 1].
        round: first round whose ``test_acc >= target`` (``None``: not reached).
        iteration: global iteration at the end of that round.
        bytes: cumulative ``bytes_*_total`` counters at that round, plus ``bytes_total``.
    """

    target: float
    round: int | None
    iteration: int | None
    bytes: dict[str, int] = field(default_factory=dict)

    @property
    def reached(self) -> bool:
        """Whether the target was reached."""
        return self.round is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "target": self.target,
            "reached": self.reached,
            "round": self.round,
            "iteration": self.iteration,
            **self.bytes,
        }


def targets_reached(
    records: Sequence[Mapping[str, Any]], targets: Sequence[float]
) -> list[TargetResult]:
    """Rounds and cumulative bytes to reach each accuracy in ``targets`` (SPEC section 6)."""
    out = []
    for target in targets:
        hit = next((r for r in records if (r.get("test_acc") or 0.0) >= target), None)
        if hit is None:
            out.append(TargetResult(target=float(target), round=None, iteration=None))
            continue
        counts = {k: int(hit[k]) for k in TOTAL_FIELDS}
        counts["bytes_total"] = sum(counts.values())
        out.append(
            TargetResult(
                target=float(target),
                round=int(hit["round"]),
                iteration=int(hit["iteration"]),
                bytes=counts,
            )
        )
    return out


@dataclass(frozen=True)
class RunSummary:
    """The outcome of :func:`acpsl.engine.train`.

    Attributes:
        out_dir: the run directory.
        records: every round's record, in order.
        final_acc: test accuracy after the last round.
        best_acc: highest test accuracy of any round.
        best_round: the round that reached ``best_acc`` first.
        totals: cumulative ``bytes_up/down/labels/model/eval_total`` and ``bytes_total``
            (training traffic: up + down + labels + model).
        targets: one :class:`TargetResult` per ``config.target_acc``.
        wall_s: seconds spent training and evaluating (summed over resumed segments).
    """

    out_dir: Path
    records: list[dict[str, Any]]
    final_acc: float
    best_acc: float
    best_round: int
    totals: dict[str, int]
    targets: list[TargetResult]
    wall_s: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what ``summary.json`` holds), without the per-round records."""
        return {
            "out_dir": str(self.out_dir),
            "rounds": len(self.records),
            "final_acc": self.final_acc,
            "best_acc": self.best_acc,
            "best_round": self.best_round,
            "totals": dict(self.totals),
            "targets": [t.to_dict() for t in self.targets],
            "wall_s": self.wall_s,
        }

    def table(self) -> str:
        """A printable summary table."""
        t = self.totals
        rows = [
            ("rounds", str(len(self.records))),
            ("final test accuracy", f"{100 * self.final_acc:.2f}%"),
            ("best test accuracy", f"{100 * self.best_acc:.2f}% (round {self.best_round})"),
            ("bytes up (smashed data)", format_bytes(t["bytes_up_total"])),
            ("bytes down (gradients)", format_bytes(t["bytes_down_total"])),
            ("bytes labels", format_bytes(t["bytes_labels_total"])),
            ("bytes model (hand-off/aggregation)", format_bytes(t["bytes_model_total"])),
            ("bytes training total", format_bytes(t["bytes_total"])),
            ("bytes evaluation (apart)", format_bytes(t["bytes_eval_total"])),
            ("wall time", f"{self.wall_s:.1f} s"),
        ]
        for target in self.targets:
            label = f"to reach {100 * target.target:g}%"
            if target.reached:
                value = (
                    f"round {target.round}, "
                    f"{format_bytes(target.bytes['bytes_total'])} "
                    f"(up {format_bytes(target.bytes['bytes_up_total'])})"
                )
            else:
                value = "not reached"
            rows.append((label, value))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def summarize(
    records: Sequence[Mapping[str, Any]],
    *,
    out_dir: Path,
    targets: Sequence[float],
) -> RunSummary:
    """Build the :class:`RunSummary` of a finished run from its records.

    Raises:
        CheckpointError: if there is no record (the run finished no round).
    """
    if not records:
        raise CheckpointError(f"{out_dir} holds no finished round to summarize")
    recs = [dict(r) for r in records]
    accs = [float(r["test_acc"]) for r in recs]
    best = max(range(len(accs)), key=lambda i: (accs[i], -i))
    last = recs[-1]
    totals = {k: int(last[k]) for k in TOTAL_FIELDS}
    totals["bytes_total"] = sum(totals.values())
    totals["bytes_eval_total"] = int(last.get("bytes_eval_total", 0))
    return RunSummary(
        out_dir=out_dir,
        records=recs,
        final_acc=accs[-1],
        best_acc=accs[best],
        best_round=int(recs[best]["round"]),
        totals=totals,
        targets=targets_reached(recs, targets),
        wall_s=float(last.get("wall_s", 0.0)),
    )


def format_bytes(n: float) -> str:
    """Human-readable byte count with the exact number (``"12.3 MB (12,345,678 B)"``)."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            if unit == "B":
                return f"{int(n):,} B"
            return f"{value:.2f} {unit} ({int(n):,} B)"
        value /= 1000
    return f"{int(n):,} B"  # pragma: no cover
