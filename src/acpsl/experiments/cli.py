"""``acpsl presets``, ``acpsl compare`` and ``acpsl report``: a plug-in of :mod:`acpsl.cli`.

``add_parser(subparsers)`` adds the three subcommands; each parser's ``func`` returns the
exit code. ``python -m acpsl.experiments`` runs the same three commands on their own.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from acpsl.config import TrainConfig, read_toml
from acpsl.errors import ConfigError


def add_parser(subparsers: Any) -> None:
    """Add ``presets``, ``compare``, ``report`` and ``diagnose`` to an ``argparse``
    subparsers object."""
    add_presets_parser(subparsers)
    add_compare_parser(subparsers)
    add_report_parser(subparsers)
    add_diagnose_parser(subparsers)


# ---------------------------------------------------------------------------- presets
def add_presets_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``acpsl presets [NAME]``: list the shipped presets, or describe one."""
    p = subparsers.add_parser(
        "presets",
        help="list the papers' experiments shipped as presets, or describe one",
        description="Without NAME: one line per preset. With NAME: its description, panels, "
        "runs, scales and how many runs each scale makes.",
    )
    p.add_argument("name", nargs="?", help="a preset name or a preset TOML file")
    p.set_defaults(func=run_presets)
    return p


def run_presets(args: argparse.Namespace) -> int:
    """Print the presets (or one preset)."""
    from acpsl.experiments import presets

    if not args.name:
        rows = [presets.load(n) for n in presets.names()]
        width = max(len(p.name) for p in rows)
        for p in rows:
            count = len(p.plan(scale="full"))
            print(f"{p.name.ljust(width)}  {p.title} ({count} runs at full scale)")
        print("\nacpsl presets NAME describes one; acpsl compare --preset NAME --out DIR runs it.")
        return 0
    p = presets.load(args.name)
    print(f"{p.name}: {p.title}\n{p.paper}, {p.figure}\n")
    if p.description:
        print(p.description + "\n")
    print("panels: " + ", ".join(f"{x.name} ({x.title})" for x in p.panels))
    print("runs:   " + ", ".join(f"{r.label} [{r.scheme}]" for r in p.runs))
    print("seeds:  " + ", ".join(map(str, p.seeds)))
    if p.target_acc:
        print("targets: " + ", ".join(f"{100 * t:g}%" for t in p.target_acc))
    for scale in p.scale_names():
        plans = p.plan(scale=scale)
        cfg = plans[0].config
        print(
            f"scale {scale}: {len(plans)} runs, {cfg.rounds} rounds, "
            f"subset {cfg.subset or 'all'}, seeds {sorted({x.seed for x in plans})}"
        )
    return 0


# ---------------------------------------------------------------------------- compare
def add_compare_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``acpsl compare``: run a preset or a list of schemes as one resumable grid."""
    from acpsl.engine.cli_args import add_train_arguments

    p = subparsers.add_parser(
        "compare",
        help="run several schemes (or a preset) on the same data and seeds; resumable",
        description="Run a grid of split-learning runs: a preset (a paper's figure or table) "
        "or several schemes on the same partition and seeds, one run each, into "
        "OUT/<panel>/<label>/seed<k>/. Running the same command again skips finished runs "
        "and resumes interrupted ones. Training options below override the preset's values "
        "for every run.",
    )
    grid = p.add_argument_group("grid")
    what = grid.add_mutually_exclusive_group(required=True)
    what.add_argument("--preset", help="a preset name (see `acpsl presets`) or a preset TOML file")
    what.add_argument(
        "--schemes",
        nargs="+",
        metavar="NAME[:KEY=VALUE,...]",
        help="schemes to compare, e.g. standard acp randtopk:alpha=0.2 (label = the text "
        "before ':' plus its parameters); the other options set the shared configuration",
    )
    grid.add_argument("--out", required=True, metavar="DIR", help="the grid's directory")
    grid.add_argument(
        "--scale",
        default=None,
        help="preset scale: full (the paper's; default with CUDA), small (a faithful CPU "
        "version; default without CUDA), tiny (one iteration on 16 MNIST samples), or one the "
        "preset defines",
    )
    grid.add_argument(
        "--seeds", type=int, nargs="+", metavar="SEED", help="seeds to run (default: the scale's)"
    )
    grid.add_argument(
        "--fraction", type=float, metavar="F", help="use this fraction of the training set"
    )
    grid.add_argument(
        "--panels", nargs="+", metavar="PANEL", help="only these panels of the preset"
    )
    grid.add_argument("--only", nargs="+", metavar="LABEL", help="only these runs of the preset")
    grid.add_argument(
        "--match",
        choices=("auto", "none"),
        default="auto",
        help="with --schemes: auto matches topk/randtopk/sizered/quant without a size "
        "parameter to the realised mean uplink bytes per sample of the acp run of the same seed "
        "(which runs first) when acp is in the list (default: auto)",
    )
    grid.add_argument(
        "--sweep",
        nargs="+",
        action="extend",
        metavar="KEY=V1,V2",
        default=None,
        help="training options as extra grid axes, e.g. --sweep lr=0.01,0.03 optimizer=sgd,adam: "
        "every run once per combination, labelled LABEL-lr=0.01-optimizer=sgd (values parsed "
        "as TOML scalars; they win over the preset and the other options)",
    )
    grid.add_argument(
        "--reuse",
        nargs="+",
        default=[],
        metavar="DIR",
        help="other grids' directories: a run whose training configuration equals a finished "
        "run there (all options but the data directory, targets, progress and loggers) is "
        "copied from it instead of trained again; its run.json names the source",
    )
    grid.add_argument("--workers", type=int, default=1, help="local processes at once (default: 1)")
    grid.add_argument(
        "--threads",
        type=int,
        default=None,
        help="PyTorch threads per worker (default: cores / workers)",
    )
    grid.add_argument(
        "--ray",
        metavar="ADDRESS",
        default=None,
        help="run each run as a task of this Ray cluster (e.g. auto or HOST:6379); needs "
        "pip install 'acpsl[ray]' and a directory every node sees",
    )
    grid.add_argument(
        "--ray-gpus",
        type=float,
        default=0.0,
        metavar="G",
        help="GPUs each Ray task reserves, e.g. 1 or 0.25 (default: 0; Ray hides GPUs from "
        "tasks that reserve none)",
    )
    grid.add_argument("--dry-run", action="store_true", help="print the runs and exit")
    grid.add_argument("--no-report", action="store_true", help="do not write OUT/report at the end")
    add_train_arguments(p)
    # Scheme parameters are per run here (--schemes NAME:KEY=VALUE), and seeds are --seeds:
    # keep the shared training options' flags for those out of the help (they are rejected).
    for action in p._actions:
        if action.dest in ("scheme", "param", "seed") or action.dest.startswith("scheme__"):
            action.help = argparse.SUPPRESS
    p._action_groups = [g for g in p._action_groups if g.title != "scheme parameters"]
    p.set_defaults(func=run_compare)
    return p


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """TrainConfig values the user gave (``--config`` file, then options)."""
    from acpsl.engine.cli_args import _DEFAULTS, parse_target

    opts = vars(args)
    if "scheme" in opts or "param" in opts or any(k.startswith("scheme__") for k in opts):
        raise ConfigError(
            "compare takes scheme parameters per scheme: --schemes NAME:KEY=VALUE,... "
            "(--scheme, --param and the scheme flags are for acpsl train)"
        )
    values: dict[str, Any] = {}
    if "config" in opts:
        values.update(read_toml(opts["config"]))
        values.pop("scheme", None)
        values.pop("scheme_params", None)
        values.pop("seed", None)
    for name in _DEFAULTS:
        if name in opts and name not in ("scheme", "scheme_params", "target_acc"):
            values[name] = opts[name]
    if "target_acc" in opts:
        values["target_acc"] = [t for text in opts["target_acc"] for t in parse_target(text)]
    if "loggers" in opts:
        values["loggers"] = [
            n.strip() for text in opts["loggers"] for n in str(text).split(",") if n.strip()
        ]
    if "seed" in values:
        raise ConfigError("compare runs several seeds: use --seeds instead of --seed")
    return values


def parse_scheme_spec(text: str) -> tuple[str, str, dict[str, Any]]:
    """``NAME[:KEY=VALUE,...]`` -> (label, scheme name, params).

    The label is the scheme name, followed by ``-KEYVALUE`` for each parameter (e.g.
    ``randtopk-alpha0.2``), so that it names a folder.

    Raises:
        ConfigError: an empty name or a malformed parameter.
    """
    from acpsl.engine.cli_args import parse_param

    name, _, rest = text.partition(":")
    name = name.strip()
    if not name:
        raise ConfigError(f"invalid scheme {text!r}: use NAME or NAME:KEY=VALUE,...")
    params = dict(parse_param(item) for item in rest.split(",") if item.strip())
    label = name + "".join(f"-{k}{v}" for k, v in params.items())
    return label.replace("/", "_"), name, params


#: Schemes whose size parameter ``--match auto`` picks (and the parameters that fix it).
MATCHABLE = {
    "topk": ("k", "keep_ratio"),
    "randtopk": ("k", "keep_ratio"),
    "sizered": ("k", "keep_ratio"),
    "quant": ("bits",),
}


def plans_for_schemes(
    specs: Sequence[str],
    *,
    base: Mapping[str, Any],
    seeds: Sequence[int],
    match: str = "auto",
    fraction: float | None = None,
) -> list[Any]:
    """The runs of ``compare --schemes``: one panel, one run per scheme and seed.

    Args:
        specs: ``NAME[:KEY=VALUE,...]`` per scheme.
        base: the shared configuration (TrainConfig fields).
        seeds: seeds to run.
        match: ``auto``: schemes of :data:`MATCHABLE` without a size parameter are matched
            to the realised mean uplink bytes per sample of the (first) ``acp`` run of the
            same seed, when ``acp`` is among the schemes; ``none``: never.
        fraction: fraction of the training set (sets ``subset``).
    """
    from acpsl.experiments.presets import RunPlan, acp_kept_fraction, subset_for_fraction
    from acpsl.plugins import short_name

    parsed = [parse_scheme_spec(s) for s in specs]
    acp_label, acp = next(((lb, p) for lb, n, p in parsed if n == "acp"), (None, None))
    cfg = dict(base)
    if fraction is not None:
        cfg["subset"] = subset_for_fraction(str(cfg.get("dataset", "mnist")), fraction)
    # A plug-in dataset (MODULE:FUNCTION) names its panel folder by its FUNCTION.
    panel = short_name(str(cfg.get("dataset", TrainConfig().dataset)))
    plans = []
    for label, name, params in parsed:
        match_acp = None
        if match == "auto" and acp is not None and name in MATCHABLE:
            if not any(k in params for k in MATCHABLE[name]):
                acp_kept_fraction(acp)  # validates p_base
                match_acp = dict(acp)
        for seed in seeds:
            config = TrainConfig.from_dict(
                {**cfg, "scheme": name, "scheme_params": params, "seed": seed}
            )
            plans.append(
                RunPlan(
                    panel=panel,
                    label=label,
                    seed=seed,
                    config=config,
                    match_acp=match_acp,
                    panel_title=panel,
                    match_run=None if match_acp is None else f"{panel}/{acp_label}/seed{seed}",
                )
            )
    return plans


def run_compare(args: argparse.Namespace) -> int:
    """Build the grid from the options and run it; exit 1 when a run failed."""
    from acpsl.experiments import presets
    from acpsl.experiments.compare import compare, raise_on_failures
    from acpsl.experiments.sweep import describe, expand, parse_sweep

    overrides = _overrides(args)
    axes = parse_sweep(args.sweep or [])
    progress = bool(overrides.get("progress", True))
    meta: dict[str, Any]
    if args.preset:
        preset = presets.load(args.preset)
        scale = args.scale or presets.default_scale()
        if args.scale is None:
            logging.getLogger("acpsl.experiments").info(
                "scale: %s (the default %s CUDA)", scale, "with" if scale == "full" else "without"
            )
        plans = preset.plan(
            scale=scale,
            overrides=overrides,
            seeds=args.seeds,
            fraction=args.fraction,
            panels=args.panels,
            labels=args.only,
        )
        meta = {
            "preset": preset.to_summary(),
            "scale": scale,
            "target_acc": list(overrides.get("target_acc") or preset.target_acc),
        }
    else:
        if args.scale or args.panels or args.only:
            raise ConfigError("--scale, --panels and --only apply to --preset, not --schemes")
        plans = plans_for_schemes(
            args.schemes,
            base=overrides,
            seeds=args.seeds or [0],
            match=args.match,
            fraction=args.fraction,
        )
        meta = {"preset": None, "scale": None, "target_acc": list(overrides.get("target_acc", []))}
    plans = expand(plans, axes)
    if axes:
        meta["sweep"] = describe(axes)
    if args.dry_run:
        _print_dry_run(plans)
        return 0
    result = compare(
        plans,
        out_dir=args.out,
        workers=args.workers,
        ray_address=args.ray,
        meta=meta,
        progress=progress,
        threads=args.threads,
        ray_gpus=args.ray_gpus,
        reuse=args.reuse,
    )
    done = sum(1 for r in result.results.values() if r["status"] == "done")
    skipped = sum(1 for r in result.results.values() if r["status"] == "skipped")
    reused = sum(1 for r in result.results.values() if r["status"] == "reused")
    print(
        f"compare: {done} runs trained, {skipped} already finished, "
        + (f"{reused} reused from --reuse, " if args.reuse else "")
        + f"{len(result.failed)} failed"
    )
    if not args.no_report and len(result.failed) < len(result.results):
        from acpsl.experiments.report import write_report

        files = write_report(args.out)
        # the result on the terminal, not only a path to it
        print("\n" + files.table_md.read_text(encoding="utf-8"))
        print(f"report: {files.report_md} (figures and tables in {files.out_dir})")
    raise_on_failures(result)
    return 0


def _print_dry_run(plans: Sequence[Any]) -> None:
    """One line per run, with the size parameter a matched run will get (``k``, ``bits``),
    resolved as the run will resolve it (a real encode on the run's cut shape)."""
    from acpsl.errors import AcpslError
    from acpsl.experiments.matching import resolve_match

    resolved: dict[str, Any] = {}
    for plan in plans:
        c = plan.config
        params = dict(c.scheme_params)
        extra = ""
        if plan.match_fraction is not None or plan.match_acp is not None:
            if plan.match_fraction is not None:
                target = f"{100 * plan.match_fraction:.2f}% of standard"
            elif plan.match_run is not None:
                # the realised bytes exist once the reference has run: show the nominal size
                target = (
                    f"the realised uplink bytes of {plan.match_run} at run time; "
                    "now, at ACP-SL's p_base"
                )
            else:
                target = "ACP-SL at p_base"
            key = json.dumps(
                [c.to_dict() | {"seed": 0}, plan.match_fraction, plan.match_acp],
                sort_keys=True,
                default=str,
            )
            try:
                if key not in resolved:
                    resolved[key] = resolve_match(
                        c, fraction=plan.match_fraction, acp_params=plan.match_acp
                    ).scheme_params
                matched = {k: v for k, v in resolved[key].items() if k not in params}
                params.update(resolved[key])
                extra = (
                    f" (matched to {target}: "
                    + ", ".join(f"{k}={v}" for k, v in matched.items())
                    + ")"
                )
            except AcpslError as exc:
                extra = f" (size matched to {target} at run time; not resolved now: {exc})"
        print(
            f"{plan.key}: {c.scheme} {json.dumps(params)}{extra}; {c.dataset}, "
            f"{c.model}, {c.clients} clients, {c.partition}, {c.rounds} rounds, "
            f"subset {c.subset or 'all'}"
        )
    print(f"{len(plans)} runs")


# ----------------------------------------------------------------------------- report
def add_report_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``acpsl report DIR``: tables and figures of a grid."""
    p = subparsers.add_parser(
        "report",
        help="tables (Markdown, CSV) and figures (PNG, PDF, SVG) of the runs in a directory",
        description="Read every run under DIR (an `acpsl compare --out`, or any folder of "
        "`acpsl train` runs) and write table.md, table.csv (mean and std over seeds), runs.csv "
        "(one line per run), report.md and the figures to DIR/report (or --out).",
    )
    p.add_argument("dir", metavar="DIR", help="the grid's directory")
    p.add_argument(
        "--out", default=None, metavar="DIR", help="where to write (default: DIR/report)"
    )
    p.add_argument(
        "--target-acc",
        dest="target_acc",
        action="append",
        metavar="ACC",
        help="target accuracy (95, 95%%, 0.95 or a comma list; default: the grid's)",
    )
    p.add_argument(
        "--plots",
        nargs="+",
        metavar="KIND",
        help="acc_round acc_bytes loss_round ratio_round ratio_iter kept_hist topk_hist "
        "gen_gap gen_gap_offset "
        "(default: the preset's, else all with data)",
    )
    p.add_argument(
        "--title", default=None, help="heading of report.md (default: the preset's title)"
    )
    p.add_argument(
        "--format",
        dest="formats",
        default="png",
        metavar="FMT[,FMT...]",
        help="figure formats, a comma list of png, pdf, svg (default: png)",
    )
    p.add_argument(
        "--dpi",
        type=int,
        default=None,
        help="resolution of the PNG figures (default: 200)",
    )
    p.set_defaults(func=run_report)
    return p


def run_report(args: argparse.Namespace) -> int:
    """Write the report and print where it is."""
    from acpsl.engine.cli_args import parse_target
    from acpsl.experiments.report import write_report
    from acpsl.plots import FILES

    targets = None
    if args.target_acc:
        targets = [t for text in args.target_acc for t in parse_target(text)]
    if args.plots:
        unknown = set(args.plots) - set(FILES)
        if unknown:
            raise ConfigError(
                f"unknown plot kinds {sorted(unknown)}; choose from {', '.join(FILES)}"
            )
    formats = [f.strip().lower().lstrip(".") for f in args.formats.split(",") if f.strip()]
    files = write_report(
        args.dir,
        out_dir=args.out,
        targets=targets,
        plots=args.plots,
        title=args.title,
        formats=formats,
        dpi=args.dpi,
    )
    print(files.table_md.read_text(encoding="utf-8"))
    for path in files.all():
        print(f"wrote {path}")
    return 0


# --------------------------------------------------------------------------- diagnose
def add_diagnose_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``acpsl diagnose DIR ...``: the instruments of :mod:`acpsl.analysis.diagnose`."""
    p = subparsers.add_parser(
        "diagnose",
        help="why a compressed run is less accurate: compressed vs uncompressed test "
        "accuracy, P_t trace, kept channels, ranking stability",
        description="For each finished run (a run directory, or every run below a grid "
        "directory): test accuracy of the final models with the cut compressed as at "
        "inference and uncompressed; ACP-SL's per-iteration P_t (mean, std, mean change, "
        "share at the clip bounds); kept-channel concentration; and how stable per-batch "
        "instantaneous rankings are (Jaccard overlap of kept sets vs random). Prints a "
        "Markdown table.",
    )
    p.add_argument("dirs", nargs="+", metavar="DIR", help="run or grid directories")
    p.add_argument("--scheme", default=None, help="only runs of this scheme (e.g. acp)")
    p.add_argument(
        "--batches", type=int, default=20, help="training batches for the ranking (default 20)"
    )
    p.add_argument("--data-dir", default=None, help="where the dataset lives, if moved")
    p.add_argument(
        "--no-eval",
        dest="evaluate",
        action="store_false",
        help="records and kept counts only (no checkpoint, no data, seconds)",
    )
    p.add_argument("--json", default=None, metavar="FILE", help="also write every number here")
    p.set_defaults(func=run_diagnose)
    return p


def _run_dirs(dirs: Sequence[str]) -> list[Path]:
    found: list[Path] = []
    for d in dirs:
        base = Path(d)
        if (base / "config.toml").exists():
            found.append(base)
            continue
        if not base.is_dir():
            raise ConfigError(f"{base} is not a directory; pass run or grid directories")
        below = sorted(p.parent for p in base.rglob("summary.json"))
        if not below:
            raise ConfigError(f"{base} holds no finished run (no summary.json below it)")
        found += below
    return found


def diagnosis_table(rows: Sequence[dict[str, Any]]) -> str:
    """The Markdown table ``acpsl diagnose`` prints (percentages; "—" where not applicable)."""

    def pct(v: Any, digits: int = 1) -> str:
        return "—" if v is None or v != v else f"{100 * float(v):.{digits}f}"

    def num(v: Any, digits: int = 2) -> str:
        return "—" if v is None or v != v else f"{float(v):.{digits}f}"

    header = [
        "run",
        "test acc (%)",
        "compressed eval (%)",
        "uncompressed eval (%)",
        "P_t mean ± std (%)",
        "mean change of P_t per iteration (pts)",
        "P_t at bounds (%)",
        "never kept",
        "top-quarter share (%)",
        "effective channels",
        "kept-set overlap: consecutive / vs inference / random",
        "separation kept: per batch / inference (%)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for d in rows:
        trace = d.get("ratio_trace") or {}
        kept = d.get("kept") or {}
        stab = d.get("stability") or {}
        overlap = (
            f"{num(stab.get('consecutive'))} / {num(stab.get('vs_inference'))} / "
            f"{num(stab.get('random'))}"
            if stab
            else "—"
        )
        cells = [
            str(d["run"]),
            pct(d.get("test_acc_recorded"), 2),
            pct(d.get("test_acc_compressed"), 2),
            pct(d.get("test_acc_uncompressed"), 2),
            f"{pct(trace.get('mean'))} ± {pct(trace.get('std'))}" if trace else "—",
            pct(trace.get("mean_abs_step")) if trace else "—",
            pct(trace.get("at_bounds")) if trace else "—",
            "—" if not kept else f"{int(kept['never'])} of {int(kept['channels'])}",
            pct(kept.get("top_quarter_share")) if kept else "—",
            num(kept.get("effective"), 1) if kept else "—",
            overlap,
            (
                f"{pct(stab.get('separation_kept'))} / {pct(stab.get('separation_kept_inference'))}"
                if stab
                else "—"
            ),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_diagnose(args: argparse.Namespace) -> int:
    """Diagnose every run named and print the table."""
    from acpsl.analysis.diagnose import diagnose_run

    if args.batches < 1:
        raise ConfigError(f"--batches {args.batches}: must be at least 1")
    rows = []
    for path in _run_dirs(args.dirs):
        if args.scheme is not None:
            if TrainConfig.from_toml(path / "config.toml").scheme != args.scheme:
                continue
        rows.append(
            diagnose_run(path, data_dir=args.data_dir, batches=args.batches, evaluate=args.evaluate)
        )
    if not rows:
        raise ConfigError(f"no run of scheme {args.scheme!r} in {', '.join(args.dirs)}")
    print(diagnosis_table(rows), end="")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1), encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m acpsl.experiments {presets,compare,report,diagnose} ...``."""
    from acpsl.errors import AcpslError
    from acpsl.logs import add_log_arguments, configure_from_args

    parser = argparse.ArgumentParser(prog="python -m acpsl.experiments")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    for command in sub.choices.values():
        add_log_arguments(command)
    args = parser.parse_args(argv)
    configure_from_args(args)
    try:
        return int(args.func(args) or 0)
    except AcpslError as exc:
        print(f"acpsl: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("\nacpsl: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


__all__ = ["add_parser", "main", "parse_scheme_spec", "plans_for_schemes"]
