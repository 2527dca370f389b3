"""``acpsl compare --sweep KEY=V1,V2 ...``: training options as extra axes of a grid.

Every run of the grid is repeated for every combination of the swept values (the Cartesian
product of the axes, in the order given), and each combination gets its own label, e.g.
``standard-lr=0.03-optimizer=adam``, so it has its own folder
(``<panel>/<label>/seed<k>``), its own curve and its own row in the report, and a rerun of the
same command finds, skips or resumes exactly the same runs. This is how a learning rate is
tuned on standard SL before a comparison (SPEC section 8).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from acpsl.config import TrainConfig
from acpsl.errors import ConfigError
from acpsl.experiments.presets import RunPlan

#: Keys a sweep may not set: they are axes of the grid already (schemes, seeds).
RESERVED = frozenset({"scheme", "scheme_params", "seed"})


@dataclass(frozen=True)
class Axis:
    """One swept option.

    Attributes:
        key: a :class:`TrainConfig` field.
        values: its values, parsed as TOML scalars.
        texts: the values as typed (they name the labels).
    """

    key: str
    values: tuple[Any, ...]
    texts: tuple[str, ...]


def parse_sweep(specs: Sequence[str]) -> list[Axis]:
    """``["lr=0.01,0.03", "optimizer=sgd,adam"]`` -> one :class:`Axis` per option.

    Raises:
        ConfigError: a malformed spec, an unknown or reserved key, a key given twice, an
            empty or repeated value.
    """
    from acpsl.engine.cli_args import parse_param

    names = {f.name for f in fields(TrainConfig)}
    axes: list[Axis] = []
    for spec in specs:
        key, sep, rest = spec.partition("=")
        key = key.strip().replace("-", "_")
        texts = tuple(t.strip() for t in rest.split(","))
        if not sep or not key or not rest.strip() or any(not t for t in texts):
            raise ConfigError(f"invalid --sweep {spec!r}: use KEY=V1,V2,... (e.g. lr=0.01,0.03)")
        if key in RESERVED:
            raise ConfigError(
                f"invalid --sweep {spec!r}: {key} is already an axis of the grid "
                "(use --schemes NAME:KEY=VALUE for scheme parameters, --seeds for seeds)"
            )
        if key not in names:
            raise ConfigError(
                f"invalid --sweep {spec!r}: unknown option {key!r}; sweepable options are "
                f"{', '.join(sorted(names - RESERVED))}"
            )
        if any(a.key == key for a in axes):
            raise ConfigError(f"invalid --sweep: {key} is swept twice; give its values once")
        if len(set(texts)) != len(texts):
            raise ConfigError(f"invalid --sweep {spec!r}: a value is repeated")
        values = tuple(parse_param(f"{key}={t}")[1] for t in texts)
        axes.append(Axis(key=key, values=values, texts=texts))
    return axes


def combination_label(label: str, axes: Sequence[Axis], texts: Sequence[str]) -> str:
    """``label`` with ``-key=value`` per axis (``/`` replaced, so it names one folder)."""
    suffix = "".join(f"-{a.key}={t}" for a, t in zip(axes, texts))
    return (label + suffix).replace("/", "_")


def expand(plans: Sequence[RunPlan], axes: Sequence[Axis]) -> list[RunPlan]:
    """Every plan once per combination of ``axes`` (unchanged when there are none).

    Raises:
        ConfigError: a combination the configuration rejects (the message names it).
    """
    if not axes:
        return list(plans)
    out: list[RunPlan] = []
    combos = list(itertools.product(*(list(zip(a.values, a.texts)) for a in axes)))
    for plan in plans:
        for combo in combos:
            changes = {a.key: value for a, (value, _) in zip(axes, combo)}
            label = combination_label(plan.label, axes, [text for _, text in combo])
            try:
                config = TrainConfig.from_dict({**plan.config.to_dict(), **changes})
            except ConfigError as exc:
                raise ConfigError(f"sweep combination {label}: {exc}") from None
            panel, title = plan.panel, plan.panel_title
            if "dataset" in changes and panel == plan.config.dataset:
                # a grid of schemes is one panel named after its dataset: keep it that way
                panel = title = config.dataset
            match_run = plan.match_run
            if match_run is not None:
                # matched to the reference run of the same combination (and panel, seed)
                _, ref_label, seed = match_run.split("/")
                ref = combination_label(ref_label, axes, [text for _, text in combo])
                match_run = f"{panel}/{ref}/{seed}"
            out.append(
                dataclasses.replace(
                    plan,
                    label=label,
                    config=config,
                    panel=panel,
                    panel_title=title,
                    match_run=match_run,
                )
            )
    return out


def describe(axes: Sequence[Axis]) -> dict[str, list[Any]]:
    """The axes as ``{key: [values]}`` (for ``compare.json``)."""
    return {a.key: list(a.values) for a in axes}
