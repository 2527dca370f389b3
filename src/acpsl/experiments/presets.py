"""Experiment presets: the papers' figures and tables as TOML files shipped in the package.

A preset describes a grid of runs: **panels** (one per dataset/partition of a figure) times
**runs** (one per scheme or ablation variant) times **seeds**, all sharing a ``[base]``
configuration. Every run of a panel with the same seed gets the same partition and the same
initial weights, so the schemes differ only in what crosses the cut.

File layout (``presets/<name>.toml``)::

    title = "..."            # one line, used as the report's heading
    paper = "ACP-SL"         # which paper the experiment comes from
    figure = "Fig. 4"        # which figure or table
    description = "..."      # what is compared and what differs from the paper
    seeds = [0]              # paper-scale seeds
    target_acc = [0.65]      # accuracies whose rounds / bytes to reach are reported
    plots = ["acc_round", "acc_bytes", "loss_round", "ratio_round", "kept_hist"]

    [base]                   # TrainConfig fields shared by every run
    model = "resnet18"

    [[panels]]               # at least one
    name = "cifar10-iid"
    title = "CIFAR-10, IID"
    config = { dataset = "cifar-10", partition = "iid" }
    fraction = 0.0286        # optional: the compression level of runs with match = {to = "panel"}
    exclude = ["quant"]      # optional: runs left out of this panel (infeasible there)
    params = { l1 = { lam = 1e-4 } }  # optional: per-run scheme parameters in this panel

    [[runs]]                 # at least one
    label = "randtopk"       # unique within the preset; names the folder
    name = "RandTopk-SL"     # optional: the curve's name in tables and figures (default:
                             # from the scheme and its ablation, acpsl.experiments.names)
    scheme = "randtopk"
    params = { alpha = 0.1 } # scheme parameters
    match = { to = "acp" }   # or { fraction = 0.0286 } or { to = "panel" }: see below
    config = { ... }         # optional TrainConfig overrides for this run

    [[claims]]               # optional: the paper's claims, judged by ``acpsl report``
    text = "ACP-SL is more accurate than Quantization-SL"
    kind = "beats"           # or "best"; see acpsl.experiments.verdicts
    label = "acp"
    than = ["quant"]
    metric = "final_acc"     # final_acc | best_acc | rounds_to | cut_bytes_to (+ target)

    [scales.small]           # named reduced scales; "full" (no overrides) always exists
    rounds = 10
    fraction = 0.1           # use this fraction of the training set (sets ``subset``)
    seeds = [0, 1]
    test_subset = 2000

**Matched compression.** A run with ``match`` gets its size parameter (``k``, ``bits``)
chosen by :func:`acpsl.experiments.matching.resolve_match` so that its uplink payload per
sample is as close as possible to ``fraction`` of the uncompressed one (``4 d`` bytes plus
the header); ``to = LABEL`` (an ``acp`` run of the same preset) means the **realised** mean
uplink bytes per training sample of that run in the same panel with the same seed, read
from its records once it has finished (SPEC section 8: ``P_t`` of eq. 13 moves between
``P_min`` and ``P_max``, so ``1 - P_base`` is only its nominal level; ``acpsl compare``
runs the reference first and starts the matched run when it is done);
``{ to = LABEL, at = "p_base" }`` matches the nominal level instead (ACP-SL's payload per
sample at ``P_base``, measured on a real encode, no waiting); ``to = "panel"`` takes the
panel's ``fraction`` (the RandTopk paper's compression levels are panels). Presets put
``match`` on every baseline unless the paper fixes its parameter.

**Scales.** ``full`` is the paper's scale (the default when CUDA is present); ``small`` is a
faithful reduced version that a CPU finishes (fewer rounds, a fraction of the data, fewer
seeds; the default on a CPU); ``tiny`` runs a single iteration on a few samples, to check a
preset end to end. ``tiny`` sets ``dataset = "mnist"`` (the **dataset override**): the
papers' CIFAR and Fashion-MNIST images may be absent offline, and the check is about the
plumbing, not the numbers. Any scale can be overridden further (``overrides`` of
:meth:`Preset.plan`, ``--set``/``--dataset``/``--rounds`` of ``acpsl compare``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from acpsl.config import TrainConfig, read_toml
from acpsl.errors import ConfigError
from acpsl.experiments.verdicts import Claim, claim_dict, parse_claims

#: Scales every preset understands; presets may define more.
BUILTIN_SCALES = ("full", "small", "tiny")
#: Plot kinds a preset may ask for (see :mod:`acpsl.plots`).
PLOT_KINDS = (
    "acc_round",
    "acc_bytes",
    "loss_round",
    "ratio_round",
    "ratio_iter",
    "kept_hist",
    "topk_hist",
    "gen_gap",
    "gen_gap_offset",
    "pareto",
)
#: Training-set sizes of the supported datasets (for ``fraction``); fixed by the datasets.
TRAIN_SIZES = {"mnist": 60000, "fashion-mnist": 60000, "cifar-10": 50000, "cifar-100": 50000}
_CONFIG_FIELDS = frozenset(f.name for f in fields(TrainConfig))
_TOP_KEYS = frozenset(
    {
        "title",
        "paper",
        "figure",
        "description",
        "seeds",
        "target_acc",
        "plots",
        "base",
        "panels",
        "runs",
        "scales",
        "claims",
    }
)


@dataclass(frozen=True)
class Panel:
    """One panel of a figure (a dataset / partition setting)."""

    name: str
    title: str
    config: Mapping[str, Any] = field(default_factory=dict)
    fraction: float | None = None
    exclude: tuple[str, ...] = ()
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class RunTemplate:
    """One curve of every panel: a scheme with its parameters."""

    label: str
    scheme: str
    params: Mapping[str, Any] = field(default_factory=dict)
    match: Mapping[str, Any] | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    name: str | None = None


@dataclass(frozen=True)
class RunPlan:
    """One fully specified run of a grid.

    Attributes:
        panel: panel name (first folder level of the run directory).
        label: curve label (second level).
        seed: the run's seed (third level, ``seed<k>``).
        config: the run's configuration (``scheme_params`` may still lack the matched size).
        match_fraction: if set, the scheme's size parameter is chosen at run time so that
            its payload per sample is this fraction of the uncompressed one.
        match_acp: if set, the size parameter is chosen to match ACP-SL's payload per sample
            at ``p_base`` of these ACP-SL parameters (measured on a real encode), unless
            ``match_run`` is set too.
        panel_title: human-readable panel title.
        match_run: if set, the key (``panel/label/seed<k>``) of the ACP-SL run whose realised
            uplink bytes per sample are the target; this run waits until that one finished.
        name: the curve's display name (``None``: derived from the scheme).
    """

    panel: str
    label: str
    seed: int
    config: TrainConfig
    match_fraction: float | None = None
    match_acp: Mapping[str, Any] | None = None
    panel_title: str = ""
    match_run: str | None = None
    name: str | None = None

    @property
    def key(self) -> str:
        """``panel/label/seed<k>``: the run's directory below the grid's root."""
        return f"{self.panel}/{self.label}/seed{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (what worker processes and Ray tasks receive)."""
        return {
            "panel": self.panel,
            "label": self.label,
            "seed": self.seed,
            "config": self.config.to_dict(),
            "match_fraction": self.match_fraction,
            "match_acp": None if self.match_acp is None else dict(self.match_acp),
            "panel_title": self.panel_title,
            "match_run": self.match_run,
            "name": self.name,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunPlan:
        """Inverse of :meth:`to_dict`."""
        return cls(
            panel=str(data["panel"]),
            label=str(data["label"]),
            seed=int(data["seed"]),
            config=TrainConfig.from_dict(data["config"]),
            match_fraction=data.get("match_fraction"),
            match_acp=data.get("match_acp"),
            panel_title=str(data.get("panel_title", "")),
            match_run=data.get("match_run"),
            name=None if data.get("name") is None else str(data["name"]),
        )


@dataclass(frozen=True)
class Preset:
    """A paper experiment: panels x runs x seeds (see the module docstring for the format)."""

    name: str
    title: str
    paper: str
    figure: str
    description: str
    base: Mapping[str, Any]
    panels: tuple[Panel, ...]
    runs: tuple[RunTemplate, ...]
    seeds: tuple[int, ...]
    target_acc: tuple[float, ...] = ()
    plots: tuple[str, ...] = ("acc_round", "acc_bytes", "loss_round")
    scales: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    claims: tuple[Claim, ...] = ()

    def scale_names(self) -> list[str]:
        """``full`` plus the scales the preset defines."""
        return ["full", *[s for s in self.scales if s != "full"]]

    def plan(
        self,
        *,
        scale: str = "full",
        overrides: Mapping[str, Any] | None = None,
        seeds: Sequence[int] | None = None,
        fraction: float | None = None,
        panels: Sequence[str] | None = None,
        labels: Sequence[str] | None = None,
    ) -> list[RunPlan]:
        """Expand the preset into its runs.

        Precedence, lowest first: ``[base]``, the panel's ``config``, the run's ``config``,
        the scale, then ``overrides`` (e.g. ``{"data_dir": ..., "device": "cuda"}``).

        Args:
            scale: ``full`` or a scale the preset defines.
            overrides: TrainConfig fields that win over everything in the preset.
            seeds: seeds to run (default: the scale's, else the preset's).
            fraction: fraction of the training set (default: the scale's; ``None``: all, or
                the ``subset`` the configuration sets).
            panels: only these panels (default all).
            labels: only these run labels (default all).

        Raises:
            ConfigError: unknown scale, panel, label or configuration key, or a value the
                configuration rejects.
        """
        if scale not in self.scale_names():
            raise ConfigError(
                f"preset {self.name!r} has no scale {scale!r}; choose one of: "
                f"{', '.join(self.scale_names())}"
            )
        scale_cfg = dict(self.scales.get(scale, {}))
        scale_seeds = scale_cfg.pop("seeds", None)
        scale_fraction = scale_cfg.pop("fraction", None)
        run_seeds = tuple(seeds if seeds is not None else (scale_seeds or self.seeds))
        frac = fraction if fraction is not None else scale_fraction
        chosen_panels = _select(self.panels, panels, what="panel", preset=self.name)
        chosen_runs = _select(self.runs, labels, what="run label", preset=self.name)
        plans: list[RunPlan] = []
        overrides = dict(overrides or {})
        for panel in chosen_panels:
            for run in chosen_runs:
                if run.label in panel.exclude:
                    continue
                merged: dict[str, Any] = {**self.base, **panel.config, **run.config}
                merged.update(scale_cfg)
                merged.update(overrides)
                merged["scheme"] = run.scheme
                merged["scheme_params"] = {
                    **run.params,
                    **panel.params.get(run.label, {}),
                    **overrides.get("scheme_params", {}),
                }
                if self.target_acc and "target_acc" not in merged:
                    merged["target_acc"] = list(self.target_acc)
                if frac is not None and "subset" not in overrides:
                    merged["subset"] = subset_for_fraction(str(merged.get("dataset")), frac)
                match_fraction, match_acp, match_ref = self._match(run, panel)
                declared = {**self.base, **panel.config, **run.config}.get("dataset")
                title = panel.title
                if declared is not None and merged.get("dataset") != declared:
                    # the dataset override (tiny scale, --dataset): say so in every figure
                    title = f"{panel.title} [run on {merged.get('dataset')}]"
                for seed in run_seeds:
                    config = TrainConfig.from_dict({**merged, "seed": int(seed)})
                    plans.append(
                        RunPlan(
                            panel=panel.name,
                            label=run.label,
                            seed=int(seed),
                            config=config,
                            match_fraction=match_fraction,
                            match_acp=match_acp,
                            panel_title=title,
                            match_run=(
                                None
                                if match_ref is None
                                else f"{panel.name}/{match_ref}/seed{int(seed)}"
                            ),
                            name=run.name,
                        )
                    )
        return plans

    def _match(
        self, run: RunTemplate, panel: Panel
    ) -> tuple[float | None, dict[str, Any] | None, str | None]:
        """``(fraction, acp params, reference label)`` of ``run``'s matched size, each
        ``None`` where it does not apply (the label is set for a realised-bytes match)."""
        if run.match is None:
            return None, None, None
        if "fraction" in run.match:
            return float(run.match["fraction"]), None, None
        target = str(run.match["to"])
        if target == "panel":
            if panel.fraction is None:
                raise ConfigError(
                    f"preset {self.name!r}: run {run.label!r} matches the panel's compression "
                    f"level, but panel {panel.name!r} sets no fraction"
                )
            return panel.fraction, None, None
        ref = next((r for r in self.runs if r.label == target), None)
        if ref is None:
            raise ConfigError(f"preset {self.name!r}: run {run.label!r} matches unknown {target!r}")
        if ref.scheme != "acp":
            raise ConfigError(
                f"preset {self.name!r}: run {run.label!r} matches {target!r}, which is not an "
                "acp run; use match = {fraction = F} for other references"
            )
        if ref.label in panel.exclude:
            raise ConfigError(
                f"preset {self.name!r}: run {run.label!r} matches {target!r}, which panel "
                f"{panel.name!r} excludes"
            )
        acp_kept_fraction(ref.params)  # validates p_base
        nominal = run.match.get("at") == "p_base"
        return None, dict(ref.params), None if nominal else ref.label

    def to_summary(self) -> dict[str, Any]:
        """What ``acpsl presets`` shows and ``compare.json`` keeps about the preset."""
        return {
            "name": self.name,
            "title": self.title,
            "paper": self.paper,
            "figure": self.figure,
            "description": self.description,
            "panels": [{"name": p.name, "title": p.title} for p in self.panels],
            "runs": [r.label for r in self.runs],
            "seeds": list(self.seeds),
            "target_acc": list(self.target_acc),
            "plots": list(self.plots),
            "scales": self.scale_names(),
            "claims": [claim_dict(c) for c in self.claims],
        }


def acp_kept_fraction(params: Mapping[str, Any]) -> float:
    """Fraction of the smashed data ACP-SL keeps on average: ``1 - p_base`` (eq. 13's centre).

    The channel mask (``N`` bits per batch) is negligible beside the values, so the fraction
    of channels kept is the fraction of bytes kept.
    """
    p_base = float(params.get("p_base", 0.7))
    if not 0 <= p_base < 1:
        raise ConfigError(f"p_base={p_base} must be in [0, 1) to match a baseline to ACP-SL")
    return 1.0 - p_base


def subset_for_fraction(dataset: str, fraction: float) -> int:
    """Number of training samples that make ``fraction`` of ``dataset``'s training set."""
    if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise ConfigError(f"fraction={fraction!r} must be in (0, 1]")
    if dataset not in TRAIN_SIZES:
        raise ConfigError(
            f"cannot take a fraction of dataset {dataset!r}: its size is unknown; "
            f"use subset= instead (known: {', '.join(TRAIN_SIZES)})"
        )
    return max(1, math.ceil(fraction * TRAIN_SIZES[dataset]))


def _select(items: Sequence[Any], wanted: Sequence[str] | None, *, what: str, preset: str) -> list:
    attr = "name" if what == "panel" else "label"
    if wanted is None:
        return list(items)
    known = [getattr(i, attr) for i in items]
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise ConfigError(
            f"preset {preset!r} has no {what} {', '.join(map(repr, unknown))}; "
            f"choose from: {', '.join(known)}"
        )
    return [i for i in items if getattr(i, attr) in wanted]


# ------------------------------------------------------------------------------- loading
def _preset_dir() -> Any:
    return resources.files("acpsl.experiments").joinpath("presets")


def names() -> list[str]:
    """Names of the presets shipped in the package, sorted."""
    return sorted(
        entry.name[: -len(".toml")]
        for entry in _preset_dir().iterdir()
        if entry.name.endswith(".toml")
    )


def load(name_or_path: str | os.PathLike[str]) -> Preset:
    """Load a shipped preset by name, or any preset file by path.

    Raises:
        ConfigError: unknown name (the message lists the shipped ones) or an invalid file.
    """
    text = str(name_or_path)
    path = Path(text)
    if text.endswith(".toml") or path.is_file():
        return parse(read_toml(path), name=path.stem)
    if text not in names():
        raise ConfigError(f"unknown preset {text!r}; choose one of: {', '.join(names())}")
    resource = _preset_dir().joinpath(f"{text}.toml")
    with resources.as_file(resource) as file:
        return parse(read_toml(file), name=text)


def parse(data: Mapping[str, Any], *, name: str) -> Preset:
    """Validate a parsed preset file and build the :class:`Preset`.

    Raises:
        ConfigError: naming the preset and the first key or value that is wrong.
    """

    def bad(why: str) -> ConfigError:
        return ConfigError(f"preset {name!r}: {why}")

    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise bad(
            f"unknown keys {', '.join(sorted(unknown))}; valid: {', '.join(sorted(_TOP_KEYS))}"
        )
    for key in ("title", "paper", "figure"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise bad(f"needs a non-empty string {key!r}")
    base = dict(data.get("base", {}))
    _check_config_keys(base, where="[base]", bad=bad)

    panels = []
    for raw in data.get("panels", []):
        extra = set(raw) - {"name", "title", "config", "fraction", "exclude", "params"}
        if extra or "name" not in raw:
            raise bad(
                "a [[panels]] entry needs name (title, config, fraction, exclude, params "
                f"optional); got {sorted(raw)}"
            )
        cfg = dict(raw.get("config", {}))
        _check_config_keys(cfg, where=f"panel {raw['name']!r}", bad=bad)
        fraction = raw.get("fraction")
        if fraction is not None and not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
            raise bad(f"panel {raw['name']!r}: fraction={fraction!r} must be in (0, 1]")
        panels.append(
            Panel(
                name=str(raw["name"]),
                title=str(raw.get("title", raw["name"])),
                config=cfg,
                fraction=None if fraction is None else float(fraction),
                exclude=tuple(str(x) for x in raw.get("exclude", ())),
                params={str(k): dict(v) for k, v in dict(raw.get("params", {})).items()},
            )
        )
    if not panels:
        raise bad("needs at least one [[panels]] entry")

    runs = []
    for raw in data.get("runs", []):
        extra = set(raw) - {"label", "scheme", "params", "match", "config", "name"}
        if extra or "label" not in raw or "scheme" not in raw:
            raise bad(f"a [[runs]] entry needs label and scheme; got {sorted(raw)}")
        match = raw.get("match")
        if match is not None and not (
            set(match) == {"to"}
            or (set(match) == {"to", "at"} and match["at"] == "p_base")
            or (set(match) == {"fraction"} and 0 < match["fraction"] <= 1)
        ):
            raise bad(
                f"run {raw['label']!r}: match must be {{to = LABEL}}, {{to = LABEL, at = "
                '"p_base"}, {to = "panel"} or {fraction = F} with F in (0, 1]'
            )
        cfg = dict(raw.get("config", {}))
        _check_config_keys(cfg, where=f"run {raw['label']!r}", bad=bad)
        runs.append(
            RunTemplate(
                label=str(raw["label"]),
                scheme=str(raw["scheme"]),
                params=dict(raw.get("params", {})),
                match=dict(match) if match is not None else None,
                config=cfg,
                name=None if raw.get("name") is None else str(raw["name"]),
            )
        )
    if not runs:
        raise bad("needs at least one [[runs]] entry")
    for kind, items in (
        ("panel", [p.name for p in panels]),
        ("run label", [r.label for r in runs]),
    ):
        dupes = sorted({i for i in items if items.count(i) > 1})
        if dupes:
            raise bad(f"duplicate {kind}s: {', '.join(dupes)}")
        for item in items:
            if not item or "/" in item or item.startswith("."):
                raise bad(f"{kind} {item!r} must be a non-empty folder name without '/'")

    plots = tuple(data.get("plots", ("acc_round", "acc_bytes", "loss_round")))
    unknown_plots = set(plots) - set(PLOT_KINDS)
    if unknown_plots:
        raise bad(f"unknown plots {sorted(unknown_plots)}; choose from {', '.join(PLOT_KINDS)}")
    scales: dict[str, dict[str, Any]] = {}
    for scale_name, raw_scale in dict(data.get("scales", {})).items():
        cfg = dict(raw_scale)
        _check_config_keys(
            {k: v for k, v in cfg.items() if k not in ("seeds", "fraction")},
            where=f"scale {scale_name!r}",
            bad=bad,
        )
        scales[str(scale_name)] = cfg
    seeds = tuple(int(s) for s in data.get("seeds", [0]))
    if not seeds:
        raise bad("seeds must list at least one seed")
    preset = Preset(
        name=name,
        title=str(data["title"]),
        paper=str(data["paper"]),
        figure=str(data["figure"]),
        description=str(data.get("description", "")).strip(),
        base=base,
        panels=tuple(panels),
        runs=tuple(runs),
        seeds=seeds,
        target_acc=tuple(float(a) for a in data.get("target_acc", [])),
        plots=plots,
        scales=scales,
        claims=parse_claims(data.get("claims"), preset=name, labels=[r.label for r in runs]),
    )
    labels = {r.label for r in preset.runs}
    for panel in preset.panels:
        stray = (set(panel.exclude) | set(panel.params)) - labels
        if stray:
            raise bad(f"panel {panel.name!r} names unknown runs {', '.join(sorted(stray))}")
        for run in preset.runs:
            if run.label not in panel.exclude:
                preset._match(run, panel)  # fail now on a dangling match target
    return preset


def _check_config_keys(cfg: Mapping[str, Any], *, where: str, bad: Any) -> None:
    unknown = set(cfg) - _CONFIG_FIELDS
    if unknown:
        raise bad(
            f"{where} has unknown configuration keys {', '.join(sorted(unknown))}; "
            f"valid: {', '.join(sorted(_CONFIG_FIELDS))}"
        )


def default_scale() -> str:
    """``full`` (the paper's scale) when CUDA is present, else ``small``."""
    import torch

    return "full" if torch.cuda.is_available() else "small"
