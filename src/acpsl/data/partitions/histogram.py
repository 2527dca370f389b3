"""Per-client label histograms: computed, printed as a table, saved as JSON, and summarized.

The histogram is how a user sees what a non-IID partition did (SPEC section 5: "a per-client
label histogram is printed and saved").
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from acpsl.errors import ConfigError


def _as_numpy(values: Tensor | np.ndarray) -> np.ndarray:
    return values.detach().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)


def label_histogram(
    labels: Tensor | np.ndarray,
    parts: Sequence[Tensor | np.ndarray],
    num_classes: int,
) -> np.ndarray:
    """Count each class in each client's part.

    Args:
        labels: int class labels of the whole dataset ``[N]``.
        parts: one index tensor per client.
        num_classes: number of classes (columns), labels must be below it.

    Returns:
        int64 array ``[clients, num_classes]``; entry ``[c, k]`` is how many samples of class
        ``k`` client ``c`` holds.

    Raises:
        ConfigError: a label outside ``[0, num_classes)``.
    """
    y = _as_numpy(labels).astype(np.int64, copy=False)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ConfigError(
            f"labels in [{int(y.min())}, {int(y.max())}] do not fit num_classes={num_classes}"
        )
    hist = np.zeros((len(parts), num_classes), dtype=np.int64)
    for client, part in enumerate(parts):
        hist[client] = np.bincount(y[_as_numpy(part)], minlength=num_classes)
    return hist


def label_skew(histogram: np.ndarray) -> float:
    """Mean total-variation distance between each client's label distribution and the global one.

    0 for a perfectly IID split; approaches 1 when every client holds classes that are rare
    overall. Empty clients are skipped.
    """
    hist = np.asarray(histogram, dtype=np.float64)
    sizes = hist.sum(axis=1)
    global_dist = hist.sum(axis=0) / max(hist.sum(), 1.0)
    nonempty = sizes > 0
    local = hist[nonempty] / sizes[nonempty, None]
    if not local.size:
        return 0.0
    return float(0.5 * np.abs(local - global_dist).sum(axis=1).mean())


def format_histogram(histogram: np.ndarray, *, class_names: Sequence[str] | None = None) -> str:
    """A plain-text table: one row per client, one column per class, row totals, a totals row.

    Args:
        histogram: ``[clients, classes]`` counts (from :func:`label_histogram`).
        class_names: column headers (default: class indices).
    """
    hist = np.asarray(histogram, dtype=np.int64)
    classes = hist.shape[1]
    headers = list(class_names) if class_names is not None else [str(k) for k in range(classes)]
    if len(headers) != classes:
        raise ConfigError(f"{len(headers)} class names for {classes} histogram columns")
    rows = [["client", *headers, "total"]]
    rows += [[str(c), *map(str, row), str(row.sum())] for c, row in enumerate(hist)]
    rows.append(["all", *map(str, hist.sum(axis=0)), str(hist.sum())])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    lines.insert(len(lines) - 1, lines[1])
    return "\n".join(lines)


def save_histogram(
    path: str | os.PathLike[str],
    histogram: np.ndarray,
    *,
    class_names: Sequence[str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write the histogram as JSON, atomically (a temporary file, then :func:`os.replace`).

    The file holds ``histogram`` (list of rows), ``sizes`` (samples per client),
    ``class_names``, ``skew`` (:func:`label_skew`) and the keys of ``extra`` (for example the
    partition name, beta and seed).

    Returns:
        The path written.
    """
    hist = np.asarray(histogram, dtype=np.int64)
    record: dict[str, Any] = dict(extra or {})
    record.update(
        clients=int(hist.shape[0]),
        num_classes=int(hist.shape[1]),
        class_names=list(class_names) if class_names is not None else None,
        sizes=hist.sum(axis=1).tolist(),
        skew=label_skew(hist),
        histogram=hist.tolist(),
    )
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=1)
            handle.write("\n")
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target
