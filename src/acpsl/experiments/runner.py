"""One run of a grid: resolve its matched size, then train, resume, or skip it.

This is the unit of work of ``acpsl compare``, the same whether it runs in the calling
process, in a local worker process (:mod:`acpsl.experiments.worker`) or as a Ray task: it
takes a JSON-friendly plan and the grid's root, and leaves the same files behind.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from acpsl.config import read_toml
from acpsl.engine.records import read_records
from acpsl.engine.records import write_atomic as _write_atomic
from acpsl.errors import ConfigError
from acpsl.experiments.presets import RunPlan
from acpsl.experiments.runs import (
    CONFIG_FILE,
    RECORDS_FILE,
    RUN_FILE,
    SUMMARY_FILE,
    uplink_bytes_per_sample,
)

Log = Callable[[str], None]


def run_dir(root: str | Path, plan: RunPlan) -> Path:
    """Where ``plan``'s run lives below the grid's ``root``."""
    return Path(root) / plan.key


def is_finished(path: Path, *, rounds: int) -> bool:
    """A run is finished when its summary is written and every round has a record."""
    if not (path / SUMMARY_FILE).exists():
        return False
    return len(read_records(path / RECORDS_FILE)) >= rounds


def reference_bytes_per_sample(root: str | Path, plan: RunPlan) -> float:
    """The realised uplink bytes per sample of ``plan``'s reference run (``match_run``).

    Raises:
        ConfigError: the reference run has not finished in ``root`` (it must run first:
            ``acpsl compare`` orders the grid so; a partial grid must include it).
    """
    assert plan.match_run is not None
    ref = Path(root) / plan.match_run
    rounds = _configured_rounds(ref)
    if rounds is None or not is_finished(ref, rounds=rounds):
        raise ConfigError(
            f"run {plan.key} is matched to the realised uplink bytes of {plan.match_run}, "
            f"which has not finished in {root}; run it first (include its label in the grid)"
        )
    return uplink_bytes_per_sample(ref)


def _configured_rounds(path: Path) -> int | None:
    """Rounds the run in ``path`` was configured for (its ``config.toml``), if it has one."""
    file = path / CONFIG_FILE
    if not file.exists():
        return None
    return int(read_toml(file).get("rounds", 0)) or None


def run_plan(
    plan_data: Mapping[str, Any], *, root: str | Path, log: Log | None = None
) -> dict[str, Any]:
    """Train one run of a grid, resuming it if it was interrupted, skipping it if finished.

    Args:
        plan_data: :meth:`RunPlan.to_dict` of the run.
        root: the grid's directory; the run goes to ``root/<panel>/<label>/seed<k>``.
        log: where the engine's progress lines go (``None``: silent).

    ``plan_data["reuse"]`` (optional): grid directories whose finished runs may stand in
    for this one when their training configuration is the same
    (:mod:`acpsl.experiments.reuse`); only a run that has no record yet is replaced.

    Returns:
        ``{"key", "status": "skipped" | "done" | "reused", "final_acc", "rounds"}``
        (``"source"`` too when reused).

    Raises:
        AcpslError: whatever the engine raises (bad configuration, missing data, a
            checkpoint that does not match the plan, a diverging loss).
    """
    from acpsl.engine import train
    from acpsl.experiments.matching import resolve_match

    plan = RunPlan.from_dict(plan_data)
    out = run_dir(root, plan)
    if is_finished(out, rounds=plan.config.rounds):
        records = read_records(out / RECORDS_FILE)
        return {
            "key": plan.key,
            "status": "skipped",
            "final_acc": records[-1]["test_acc"],
            "rounds": len(records),
        }
    config = plan.config
    target: float | None = None
    if plan.match_run is not None:
        target = reference_bytes_per_sample(root, plan)
        config = resolve_match(config, target_bytes_per_sample=target)
    elif plan.match_fraction is not None or plan.match_acp is not None:
        config = resolve_match(config, fraction=plan.match_fraction, acp_params=plan.match_acp)
    meta = {
        "panel": plan.panel,
        "panel_title": plan.panel_title,
        "label": plan.label,
        "name": plan.name,
        "seed": plan.seed,
        "scheme": config.scheme,
        "scheme_params": dict(config.scheme_params),
        "match_fraction": plan.match_fraction,
        "match_acp": None if plan.match_acp is None else dict(plan.match_acp),
        "match_run": plan.match_run,
        "match_bytes_per_sample": target,
    }
    reuse = [Path(p) for p in plan_data.get("reuse") or ()]
    if reuse and not read_records(out / RECORDS_FILE):
        from acpsl.experiments.reuse import adopt_run, find_reusable

        source = find_reusable(config, reuse)
        if source is not None and source.resolve() != out.resolve():
            records = adopt_run(source, out, config=config, meta=meta)
            return {
                "key": plan.key,
                "status": "reused",
                "final_acc": records[-1]["test_acc"],
                "rounds": len(records),
                "source": str(source),
            }
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / RUN_FILE, json.dumps(meta, indent=1).encode("utf-8"))
    # With no checkpoint yet, resume=True starts from round 1; a run killed inside round 1
    # resumes from the round-0 checkpoint written at its start (acpsl.engine.checkpoint).
    summary = train(config, out_dir=out, resume=True, log=log)
    return {
        "key": plan.key,
        "status": "done",
        "final_acc": summary.final_acc,
        "rounds": len(summary.records),
    }
