"""Reusing finished runs of other grids: ``acpsl compare --reuse DIR``.

Presets share runs: ``acp-fig5``'s LCIS run and ``acp-fig6``'s adaptive run are
``acp-fig4``'s ACP-SL run on the same panel, and ``acp-levels``' standard SL and P_base 0.7
runs are ``acp-fig4``'s Fashion-MNIST Dirichlet runs. A run is a function of its
configuration (the engine seeds everything from ``seed``, and a resumed run equals an
uninterrupted one), so a finished run whose configuration equals a planned run's *is* that
run: ``--reuse`` copies it instead of training it again, which on a 2-core machine saves
about five minutes per ResNet-18 run of the medium scale.

Equal means every field of :class:`acpsl.config.TrainConfig` after matching is resolved
(scheme, its parameters with their defaults filled in and a matched ``k`` resolved, data,
model, optimizer, schedule, seed, device, ...), except those that do not change what is
trained: :data:`IGNORED` (where the data files live, the report's target accuracies,
progress bars and step loggers). The copy gets this grid's ``config.toml`` and
``run.json`` (its panel and label) with ``reused_from`` naming the source, and a
``summary.json`` recomputed for this grid's targets; the records, partition, kept-channel
counts and checkpoint are the source's.
"""

from __future__ import annotations

import inspect
import json
import logging
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from acpsl.config import TrainConfig
from acpsl.engine.records import read_records, summarize, write_atomic
from acpsl.errors import CheckpointError, ConfigError
from acpsl.experiments.runs import CONFIG_FILE, RECORDS_FILE, RUN_FILE, SUMMARY_FILE

logger = logging.getLogger("acpsl.experiments")

#: Configuration fields that do not change what a run trains.
IGNORED = frozenset({"data_dir", "download", "target_acc", "progress", "loggers"})
#: Files copied from the source run (those it has).
COPIED = (
    RECORDS_FILE,
    "partition.json",
    "kept_channels.json",
    "metrics.csv",
    "checkpoint.pt",
)


def effective_scheme_params(scheme: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` with the scheme's defaults filled in, so that ``{"scorer": "lcis"}`` and
    ``{"p_min": 0.6, "p_base": 0.7, "p_max": 0.8}`` name the same ACP-SL. ``seed`` is left
    as given (the engine derives it from the run's seed otherwise); a scheme the registry
    does not know keeps its parameters as they are."""
    from acpsl.schemes.registry import SCHEMES

    try:
        signature = inspect.signature(SCHEMES.get(scheme))
    except (ConfigError, TypeError, ValueError):
        return dict(params)
    out: dict[str, Any] = {
        name: p.default
        for name, p in signature.parameters.items()
        if name != "seed"
        and p.default is not inspect.Parameter.empty
        and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    }
    out.update(params)
    return out


def training_identity(config: TrainConfig | Mapping[str, Any]) -> str:
    """The part of a configuration that determines the trained run, as canonical JSON
    (scheme parameters with their defaults filled in)."""
    data = config.to_dict() if isinstance(config, TrainConfig) else dict(config)
    kept = {k: v for k, v in data.items() if k not in IGNORED}
    kept["scheme_params"] = effective_scheme_params(
        str(kept.get("scheme")), dict(kept.get("scheme_params") or {})
    )
    return json.dumps(kept, sort_keys=True, default=str)


def find_reusable(config: TrainConfig, roots: Iterable[str | Path]) -> Path | None:
    """A finished run under ``roots`` whose configuration trains exactly ``config``, or
    ``None``. Finished: ``summary.json`` written and a record for every configured round.
    Runs whose files cannot be read are passed over (they are not this grid's to judge).

    Raises:
        ConfigError: a root is not a directory (a mistyped ``--reuse``).
    """
    want = training_identity(config)
    for root in roots:
        base = Path(root)
        if not base.is_dir():
            raise ConfigError(f"--reuse {base}: not a directory; pass the --out of a grid")
        for summary in sorted(base.rglob(SUMMARY_FILE)):
            path = summary.parent
            try:
                other = TrainConfig.from_toml(path / CONFIG_FILE)
                if training_identity(other) != want:
                    continue
                if len(read_records(path / RECORDS_FILE)) < config.rounds:
                    continue
            except (OSError, ValueError, ConfigError, CheckpointError):
                continue
            return path
    return None


def adopt_run(
    source: Path, out: Path, *, config: TrainConfig, meta: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Copy the finished run in ``source`` into ``out`` as this grid's run.

    Writes ``config`` as ``config.toml``, ``meta`` plus ``reused_from`` as ``run.json`` and a
    ``summary.json`` for ``config.target_acc``; copies :data:`COPIED` (the checkpoint by a
    hard link where the file system allows). Returns the records.
    """
    out.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        src = source / name
        if not src.exists():
            continue
        dst = out / name
        dst.unlink(missing_ok=True)
        try:
            dst.hardlink_to(src) if name == "checkpoint.pt" else shutil.copy2(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    write_atomic(out / CONFIG_FILE, config.to_toml().encode("utf-8"))
    info = {**dict(meta), "reused_from": str(source.resolve())}
    write_atomic(out / RUN_FILE, json.dumps(info, indent=1).encode("utf-8"))
    records = read_records(out / RECORDS_FILE)
    summary = summarize(records, out_dir=out, targets=config.target_acc)
    # summary.json last: a run counts as finished only once everything else is in place
    write_atomic(out / SUMMARY_FILE, json.dumps(summary.to_dict(), indent=2).encode("utf-8"))
    with (out / "log.txt").open("a", encoding="utf-8") as fh:
        fh.write(f"reused the finished run {source.resolve()} (same training configuration)\n")
    logger.info("%s: reused the finished run %s", out, source)
    return records
