"""``acpsl demo``: a short, real split-learning comparison that needs no download.

Five clients train ResNet-18 (CIFAR stem, cut after the stem: ``[B, 64, 8, 8]`` smashed
data) on scikit-learn's bundled 8x8 handwritten digits under standard SL, ACP-SL (paper
bounds) and RandTopk with ``k`` matched to ACP-SL's measured uplink bytes per sample, then
prints test accuracy and the bytes that crossed the cut for each.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from acpsl.config import TrainConfig
from acpsl.data import load_dataset
from acpsl.engine.loop import train
from acpsl.engine.records import RunSummary, format_bytes
from acpsl.errors import CheckpointError
from acpsl.experiments.runs import training_samples
from acpsl.models import create as create_model
from acpsl.schemes.matching import match_params

#: The demo's fixed settings (the README's main job).
DEMO_SETTINGS: dict[str, Any] = {
    "dataset": "digits",
    "model": "resnet18",
    "stem": "cifar",
    "cut": 4,
    "clients": 5,
    "partition": "iid",
    "batch_size": 64,
    "optimizer": "adam",
    "lr": 1e-3,
}
#: The demo's runs, in the order trained (one folder each under ``out_dir``).
DEMO_RUNS = ("standard", "acp", "randtopk")

logger = logging.getLogger("acpsl.engine")

#: RandTopk's eq. 7 probability used in the demo (the RandTopk paper's usual value).
DEMO_ALPHA = 0.1


@dataclass(frozen=True)
class DemoRow:
    """One scheme's outcome in the demo table."""

    label: str
    scheme_params: dict[str, Any]
    summary: RunSummary
    samples: int

    @property
    def up_per_sample(self) -> float:
        """Mean uplink (smashed-data) bytes per training sample."""
        return self.summary.totals["bytes_up_total"] / self.samples


def run_demo(
    *,
    rounds: int = 3,
    seed: int = 0,
    out_dir: str | Path = "runs/demo",
    device: str = "auto",
    progress: bool = True,
    log: Callable[[str], None] | None = logger.info,
    overrides: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> list[DemoRow]:
    """Train the three demo runs; :func:`demo_table` makes their comparison table.

    Args:
        rounds: rounds of each run.
        seed: seed of every run (same seed, same table).
        out_dir: folder of the runs (``standard/``, ``acp/``, ``randtopk/``).
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        progress: show progress bars.
        log: where progress lines go (default: the ``acpsl.engine`` logger; ``None``: silent).
        overrides: settings replacing :data:`DEMO_SETTINGS` (e.g. a smaller model in tests).
        overwrite: delete those three folders first when they hold files (an earlier demo),
            saying so in the log; without it such a folder is an error, and nothing is
            deleted.

    Returns:
        One :class:`DemoRow` per scheme, in the order trained.

    Raises:
        CheckpointError: a run folder holds files and ``overwrite`` is False.
    """
    say = log if log is not None else (lambda _msg: None)
    root = Path(out_dir)
    taken = [root / name for name in DEMO_RUNS if (root / name).exists()]
    taken = [f for f in taken if not f.is_dir() or any(f.iterdir())]
    if taken and not overwrite:
        raise CheckpointError(
            f"{', '.join(map(str, taken))} already exist (an earlier demo?); the demo would "
            "replace them: pass overwrite=True (acpsl demo --overwrite), or choose another "
            "out_dir (--out)"
        )
    settings = {**DEMO_SETTINGS, **(overrides or {})}
    base = TrainConfig(**settings, rounds=rounds, seed=seed, device=device, progress=progress)
    rows: list[DemoRow] = []

    def run(label: str, scheme: str, params: dict[str, Any]) -> DemoRow:
        config = base.replace(scheme=scheme, scheme_params=params)
        folder = root / label
        if folder in taken:
            logger.warning("deleting %s (an earlier run) to train the demo there", folder)
            if folder.is_dir():
                shutil.rmtree(folder)
            else:
                folder.unlink()
        say(f"\n=== {label} {params or ''}")
        summary = train(config, out_dir=folder, log=say)
        row = DemoRow(
            label=label,
            scheme_params=params,
            summary=summary,
            samples=training_samples(folder) * rounds,
        )
        rows.append(row)
        return row

    run("standard", "standard", {})
    acp = run("acp", "acp", {})
    matched = match_params(
        "randtopk",
        target_bytes_per_sample=acp.up_per_sample,
        sample_shape=smashed_shape(base),
        batch_size=base.batch_size,
        alpha=DEMO_ALPHA,
    )
    run("randtopk", "randtopk", matched)
    return rows


def smashed_shape(config: TrainConfig) -> tuple[int, ...]:
    """Shape of one sample of the smashed data of ``config``'s model and dataset."""
    dataset = load_dataset(config.dataset, root=config.data_dir, train=False)
    split = create_model(
        config.model,
        in_channels=dataset.shape[0],
        num_classes=dataset.num_classes,
        cut=config.cut,
        stem=config.stem,
        seed=config.seed,
    )
    split.client.eval()
    with torch.no_grad():
        out = split.client(torch.zeros(1, *dataset.shape))
    return tuple(int(s) for s in out.shape[1:])


def demo_table(rows: list[DemoRow]) -> str:
    """The comparison table: accuracy and bytes per scheme, uplink relative to standard."""
    ref = rows[0].summary.totals["bytes_up_total"] or 1
    head = (
        f"{'scheme':<10} {'params':<18} {'final acc':>9} {'best acc':>9} "
        f"{'uplink':>22} {'up/sample':>10} {'vs std':>7} {'downlink':>22}"
    )
    lines = [head, "-" * len(head)]
    for row in rows:
        s = row.summary
        params = ",".join(f"{k}={v}" for k, v in row.scheme_params.items()) or "-"
        lines.append(
            f"{row.label:<10} {params[:18]:<18} {100 * s.final_acc:>8.2f}% "
            f"{100 * s.best_acc:>8.2f}% {format_bytes(s.totals['bytes_up_total']):>22} "
            f"{row.up_per_sample:>10.1f} {s.totals['bytes_up_total'] / ref:>6.1%} "
            f"{format_bytes(s.totals['bytes_down_total']):>22}"
        )
    return "\n".join(lines)
