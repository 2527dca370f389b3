"""Verdicts on a paper's claims, from the records of a grid (SPEC section 8).

A preset lists the claims of its figure or table as ``[[claims]]`` entries::

    [[claims]]
    text = "ACP-SL is more accurate than Quantization-SL"
    kind = "beats"            # or "best": beats every other run of the panel
    label = "acp"             # the run the claim is about
    than = ["quant"]          # with "beats": the runs it is compared with
    metric = "final_acc"      # final_acc | best_acc | rounds_to | cut_bytes_to
    target = 0.65             # with rounds_to / cut_bytes_to: the target accuracy
    panels = ["cifar10-dir"]  # optional: only these panels (default: every panel)
    paper = "71.43% vs 68%"   # optional: the paper's numbers, shown beside ours

Each claim gets one verdict per panel, judged on the seeds: with ``d`` the difference of the
two runs' means over seeds (signed so that ``d > 0`` is what the claim says) and ``s`` the
*seed spread* (the larger of the two runs' ranges, max − min over seeds):

* **holds** when ``d > s``: the gap is larger than the seed-to-seed variation;
* **does not hold** when ``d < −s``: the opposite is true by more than the spread;
* **undecided** otherwise (and always with fewer than 2 seeds).

Accuracies are better higher, rounds and bytes to a target lower. A seed that never reaches
the target counts as one round past the run (and its bytes at the end of the run plus one
round's worth), so it ranks after every seed that did; the verdict says how many reached.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from acpsl.errors import ConfigError

#: Metrics a claim can be about, and whether higher is better.
METRICS: dict[str, bool] = {
    "final_acc": True,
    "best_acc": True,
    "rounds_to": False,
    "cut_bytes_to": False,
}
KINDS = ("best", "beats")
HOLDS, FAILS, UNDECIDED = "holds", "does not hold", "undecided"


@dataclass(frozen=True)
class Claim:
    """One claim of a paper's figure or table (see the module docstring)."""

    text: str
    kind: str
    label: str
    metric: str = "final_acc"
    than: tuple[str, ...] = ()
    target: float | None = None
    panels: tuple[str, ...] = ()
    paper: str = ""


@dataclass(frozen=True)
class Verdict:
    """The verdict of one claim on one panel."""

    claim: Claim
    panel: str
    panel_title: str
    verdict: str
    ours: str
    detail: str = ""


@dataclass(frozen=True)
class Series:
    """One run label of a panel (``label``: its display name): per-seed values of a metric."""

    label: str
    values: tuple[float, ...]
    reached: int = 0
    seeds: int = 0

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def spread(self) -> float:
        return max(self.values) - min(self.values)


def claim_dict(claim: Claim) -> dict[str, Any]:
    """The ``[[claims]]`` entry of ``claim`` (what ``compare.json`` keeps)."""
    out: dict[str, Any] = {"text": claim.text, "kind": claim.kind, "label": claim.label}
    out["metric"] = claim.metric
    if claim.than:
        out["than"] = list(claim.than)
    if claim.target is not None:
        out["target"] = claim.target
    if claim.panels:
        out["panels"] = list(claim.panels)
    if claim.paper:
        out["paper"] = claim.paper
    return out


def parse_claims(raw: Any, *, preset: str, labels: Sequence[str]) -> tuple[Claim, ...]:
    """Validate the ``[[claims]]`` entries of a preset.

    Raises:
        ConfigError: naming the preset, the claim and what is wrong.
    """
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"preset {preset!r}: claims must be a list of [[claims]] tables")
    allowed = {"text", "kind", "label", "metric", "than", "target", "panels", "paper"}
    claims = []
    for entry in raw:
        where = f"preset {preset!r}, claim {entry.get('text', '?')!r}"
        extra = set(entry) - allowed
        if extra:
            raise ConfigError(f"{where}: unknown keys {sorted(extra)}; valid: {sorted(allowed)}")
        if not isinstance(entry.get("text"), str) or not entry["text"]:
            raise ConfigError(f"preset {preset!r}: every claim needs a text")
        kind = str(entry.get("kind", "beats"))
        if kind not in KINDS:
            raise ConfigError(f"{where}: kind {kind!r}; choose one of {', '.join(KINDS)}")
        metric = str(entry.get("metric", "final_acc"))
        if metric not in METRICS:
            raise ConfigError(f"{where}: metric {metric!r}; choose one of {', '.join(METRICS)}")
        target = entry.get("target")
        if metric in ("rounds_to", "cut_bytes_to") and not (
            isinstance(target, (int, float)) and 0 < target <= 1
        ):
            raise ConfigError(f"{where}: metric {metric} needs a target accuracy in (0, 1]")
        than = tuple(str(x) for x in entry.get("than", ()))
        if kind == "beats" and not than:
            raise ConfigError(f"{where}: kind beats needs than = [LABEL, ...]")
        unknown = ({str(entry.get("label"))} | set(than)) - set(labels)
        if unknown:
            raise ConfigError(
                f"{where}: names unknown runs {', '.join(sorted(unknown))}; runs: "
                f"{', '.join(labels)}"
            )
        claims.append(
            Claim(
                text=entry["text"],
                kind=kind,
                label=str(entry["label"]),
                metric=metric,
                than=than,
                target=None if target is None else float(target),
                panels=tuple(str(p) for p in entry.get("panels", ())),
                paper=str(entry.get("paper", "")),
            )
        )
    return tuple(claims)


def series(rows: Sequence[Any], *, panel: str, label: str, claim: Claim) -> Series | None:
    """The per-seed values of ``claim``'s metric for one run label of a panel.

    ``rows`` are :class:`acpsl.experiments.report.Row` objects (their runs' records and
    metrics); ``None`` when the panel has no such row.
    """
    row = next((r for r in rows if r.panel == panel and r.label == label), None)
    if row is None or not row.metrics:
        return None
    values: list[float] = []
    reached = 0
    for run, m in zip(row.runs, row.metrics):
        if claim.metric == "final_acc":
            values.append(m.final_acc)
            continue
        if claim.metric == "best_acc":
            values.append(m.best_acc)
            continue
        assert claim.target is not None
        if claim.metric == "rounds_to":
            hit = _first_reach(run.records, claim.target)
            if hit is not None:
                reached += 1
                values.append(float(hit["round"]))
            else:
                values.append(float(len(run.records) + 1))
        else:
            hit = _first_reach(run.records, claim.target)
            if hit is not None:
                reached += 1
                values.append(float(_cut_bytes(hit)))
            else:
                last = run.records[-1]
                values.append(float(_cut_bytes(last) + _cut_bytes(last) / len(run.records)))
    name = getattr(row, "name", "") or label
    return Series(label=name, values=tuple(values), reached=reached, seeds=len(values))


def _first_reach(records: Sequence[Mapping[str, Any]], target: float) -> Mapping[str, Any] | None:
    return next((r for r in records if float(r["test_acc"]) >= target), None)


def _cut_bytes(record: Mapping[str, Any]) -> int:
    return int(record["bytes_up_total"]) + int(record["bytes_down_total"])


def compare_series(a: Series, b: Series, *, higher_better: bool) -> str:
    """``holds`` / ``does not hold`` / ``undecided`` for "a is better than b" (module
    docstring: the gap of the means against the larger seed range)."""
    if min(len(a.values), len(b.values)) < 2:
        return UNDECIDED
    gap = a.mean - b.mean if higher_better else b.mean - a.mean
    spread = max(a.spread, b.spread)
    if gap > spread:
        return HOLDS
    if gap < -spread:
        return FAILS
    return UNDECIDED


def fmt(s: Series, metric: str, target: float | None) -> str:
    """``label mean ± std`` in the metric's unit (and how many seeds reached the target)."""
    sd = statistics.stdev(s.values) if len(s.values) > 1 else 0.0
    if metric in ("final_acc", "best_acc"):
        text = f"{100 * s.mean:.2f} ± {100 * sd:.2f}%"
    elif metric == "rounds_to":
        text = f"{s.mean:.1f} ± {sd:.1f} rounds"
    else:
        text = f"{s.mean / 1e6:.1f} ± {sd / 1e6:.1f} MB"
    if metric in ("rounds_to", "cut_bytes_to"):
        text += f" ({s.reached}/{s.seeds} reached {100 * (target or 0):g}%)"
    return f"{s.label}: {text}"


def judge(claim: Claim, rows: Sequence[Any]) -> list[Verdict]:
    """One :class:`Verdict` per panel that ``claim`` covers and the grid ran."""
    panels: dict[str, str] = {}
    for row in rows:
        panels.setdefault(row.panel, row.panel_title)
    chosen = [p for p in panels if not claim.panels or p in claim.panels]
    higher = METRICS[claim.metric]
    verdicts = []
    for panel in chosen:
        mine = series(rows, panel=panel, label=claim.label, claim=claim)
        if mine is None:
            continue
        others_labels = (
            list(claim.than)
            if claim.kind == "beats"
            else [r.label for r in rows if r.panel == panel and r.label != claim.label]
        )
        others = [
            s
            for s in (series(rows, panel=panel, label=lb, claim=claim) for lb in others_labels)
            if s is not None
        ]
        if not others:
            continue
        outcomes = [compare_series(mine, o, higher_better=higher) for o in others]
        if FAILS in outcomes:
            verdict = FAILS
        elif all(o == HOLDS for o in outcomes):
            verdict = HOLDS
        else:
            verdict = UNDECIDED
        seeds = min(len(s.values) for s in [mine, *others])
        detail = "one seed: no spread to judge by" if seeds < 2 else ""
        ours = "; ".join(
            [fmt(mine, claim.metric, claim.target)]
            + [
                f"{fmt(o, claim.metric, claim.target)} [{outcome}]"
                for o, outcome in zip(others, outcomes)
            ]
        )
        verdicts.append(
            Verdict(
                claim=claim,
                panel=panel,
                panel_title=panels[panel],
                verdict=verdict,
                ours=ours,
                detail=detail,
            )
        )
    return verdicts


@dataclass
class VerdictTable:
    """Every verdict of a grid, in claim order."""

    verdicts: list[Verdict] = field(default_factory=list)

    def markdown(self) -> str:
        """The verdict table as Markdown: one line per claim and panel."""
        if not self.verdicts:
            return ""
        lines = [
            "| claim | panel | verdict | ours (mean ± std over seeds) | paper |",
            "|---|---|---|---|---|",
        ]
        for v in self.verdicts:
            verdict = f"**{v.verdict}**" + (f" ({v.detail})" if v.detail else "")
            lines.append(
                f"| {v.claim.text} | {v.panel_title} | {verdict} | {v.ours} | "
                f"{v.claim.paper or '–'} |"
            )
        return "\n".join(lines)

    def rows(self) -> list[dict[str, str]]:
        """The verdicts as flat dicts (for CSV)."""
        return [
            {
                "claim": v.claim.text,
                "panel": v.panel,
                "verdict": v.verdict,
                "ours": v.ours,
                "paper": v.claim.paper,
            }
            for v in self.verdicts
        ]


def verdict_table(claims: Sequence[Claim], rows: Sequence[Any]) -> VerdictTable:
    """Judge every claim on the grid's rows (:func:`acpsl.experiments.report.build_rows`)."""
    table = VerdictTable()
    for claim in claims:
        table.verdicts.extend(judge(claim, rows))
    return table
