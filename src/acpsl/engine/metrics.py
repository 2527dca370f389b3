"""Per-step metrics beside ``records.jsonl``: a CSV file and, optionally, TensorBoard.

``records.jsonl`` has one line per round; a run configured with ``loggers = ["csv"]``
(``acpsl train --logger csv``) also writes ``OUT/metrics.csv`` with one row per training
iteration (timm's ``summary.csv``, per step), and ``"tensorboard"`` writes event files to
``OUT/tensorboard/`` (``pip install 'acpsl[tensorboard]'``; view with ``tensorboard --logdir
OUT``): per step the loss, the bytes of the cut and ACP-SL's ``P_t``, per round the test
accuracy and loss.

On resume the CSV keeps the rows of the finished rounds (those up to the checkpoint's
iteration) and TensorBoard purges later steps, so neither holds a duplicate step.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from acpsl.config import LOGGERS
from acpsl.errors import ConfigError

#: The CSV file and the TensorBoard folder inside a run directory.
METRICS_CSV = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
#: Columns of ``metrics.csv``, one row per training iteration (empty cell: no value).
STEP_FIELDS = (
    "round",
    "iteration",
    "client",
    "loss",
    "batch",
    "bytes_up",
    "bytes_down",
    "bytes_labels",
    "p_t",
    "kept_frac",
)
#: Round-level values sent to TensorBoard (record field -> tag).
_ROUND_TAGS = {
    "test_acc": "eval/test_acc",
    "test_loss": "eval/test_loss",
    "train_acc": "train/round_acc",
    "train_loss": "train/round_loss",
    "bytes_up_total": "cut/bytes_up_total",
    "bytes_down_total": "cut/bytes_down_total",
    "ratio_mean": "acp/p_t_round_mean",
    "kept_frac_mean": "cut/kept_frac_round_mean",
}
_STEP_TAGS = {
    "loss": "train/loss",
    "bytes_up": "cut/bytes_up",
    "bytes_down": "cut/bytes_down",
    "p_t": "acp/p_t",
    "kept_frac": "cut/kept_frac",
}


def check_loggers(names: Sequence[str]) -> None:
    """Raise :class:`ConfigError` for an unknown logger name."""
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise ConfigError(
            f"unknown logger {unknown[0]!r}; choose from {', '.join(LOGGERS)} "
            "(records.jsonl is always written)"
        )


class StepLogger:
    """Writes per-step and per-round metrics to the loggers a run asks for.

    Args:
        names: logger names (:data:`LOGGERS`); empty: a no-op.
        out_dir: the run directory.
        start_iteration: the global iteration already finished (0 for a new run); rows and
            events after it, left by an interrupted run, are dropped.

    Raises:
        ConfigError: an unknown name, or ``tensorboard`` without the package installed.
    """

    def __init__(self, names: Sequence[str], *, out_dir: Path, start_iteration: int = 0) -> None:
        check_loggers(names)
        self._csv: io.TextIOWrapper | None = None
        self._writer: Any = None
        self._tb: Any = None
        if "csv" in names:
            self._open_csv(Path(out_dir) / METRICS_CSV, start_iteration)
        if "tensorboard" in names:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.close()
                raise ConfigError(
                    "the tensorboard logger needs the optional dependency tensorboard: "
                    "pip install 'acpsl[tensorboard]'"
                ) from None
            self._tb = SummaryWriter(
                log_dir=str(Path(out_dir) / TENSORBOARD_DIR), purge_step=start_iteration + 1
            )

    @property
    def active(self) -> bool:
        """Whether any logger is open (the caller can skip building rows otherwise)."""
        return self._writer is not None or self._tb is not None

    def _open_csv(self, path: Path, start_iteration: int) -> None:
        kept: list[dict[str, str]] = []
        if path.exists() and start_iteration > 0:
            with path.open(newline="", encoding="utf-8") as fh:
                kept = [r for r in csv.DictReader(fh) if int(r["iteration"]) <= start_iteration]
        self._csv = path.open("w", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._csv, fieldnames=STEP_FIELDS)
        self._writer.writeheader()
        for row in kept:
            self._writer.writerow({k: row.get(k, "") for k in STEP_FIELDS})
        self._csv.flush()

    def step(self, row: Mapping[str, Any]) -> None:
        """One training iteration: the keys of :data:`STEP_FIELDS` (missing or None: empty)."""
        if self._writer is not None:
            self._writer.writerow({k: _cell(row.get(k)) for k in STEP_FIELDS})
        if self._tb is not None:
            step = int(row["iteration"])
            for key, tag in _STEP_TAGS.items():
                value = row.get(key)
                if value is not None and math.isfinite(float(value)):
                    self._tb.add_scalar(tag, float(value), step)

    def round(self, record: Mapping[str, Any]) -> None:
        """A finished round's record: flushes the CSV, sends round values to TensorBoard."""
        if self._csv is not None:
            self._csv.flush()
        if self._tb is not None:
            step = int(record["iteration"])
            for key, tag in _ROUND_TAGS.items():
                value = record.get(key)
                if value is not None and math.isfinite(float(value)):
                    self._tb.add_scalar(tag, float(value), step)
            self._tb.flush()

    def close(self) -> None:
        """Close the files (idempotent)."""
        if self._csv is not None:
            self._csv.close()
            self._csv, self._writer = None, None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    return value
