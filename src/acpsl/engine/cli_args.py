"""Command-line options of a training run and their mapping onto :class:`TrainConfig`.

Shared by ``acpsl train`` and any other subcommand that runs training (``compare``,
``client``): :func:`add_train_arguments` adds the options, :func:`config_from_args` turns the
parsed options into a configuration. Every option's default is ``argparse.SUPPRESS``, so only
options the user actually gave override the values of ``--config FILE.toml`` (and those
override :class:`TrainConfig`'s defaults, which ``--help`` shows).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import sys
from collections.abc import Mapping
from typing import Any

from acpsl.config import (
    AUGMENTS,
    LR_SCHEDULES,
    MODES,
    OPTIMIZERS,
    PARTITIONS,
    PRECISIONS,
    STEMS,
    TrainConfig,
    read_toml,
)
from acpsl.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: The cut each built-in model uses when ``--cut`` is not given (ResNet-18: after the stem's
#: max-pool, the ACP-SL paper's split; ResNet-20: before its classifier, the RandTopk one;
#: SmallCNN: after its first block). Written here so ``--help`` needs no torch; a test checks
#: it against the models.
MODEL_DEFAULT_CUTS = {"resnet18": 4, "resnet20": 7, "smallcnn": 1}

_DEFAULTS = {
    f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
    for f in dataclasses.fields(TrainConfig)
}

#: Friendly scheme flags -> (scheme parameter, type, help). ``--help`` appends which schemes
#: take the parameter and their default, read from the schemes' signatures.
SCHEME_FLAGS: dict[str, tuple[str, type, str]] = {
    "--p-min": ("p_min", float, "smallest pruning ratio P_min, eq. 13 of ACP-SL"),
    "--p-base": ("p_base", float, "base pruning ratio P_base, eq. 13 of ACP-SL"),
    "--p-max": ("p_max", float, "largest pruning ratio P_max, eq. 13 of ACP-SL"),
    "--scorer": ("scorer", str, "channel scorer: lcis | l0 | random"),
    "--score-mode": ("score_mode", str, "channel score: inst | hist | comb (eqs. 6-8)"),
    "--ratio": ("ratio", str, "pruning-ratio policy: adaptive | fixed | random"),
    "--group-score": (
        "group_score",
        str,
        "what eqs. 10-13 average: separation | paper (README: Notes on the paper)",
    ),
    "--k": ("k", int, "values kept per sample"),
    "--keep-ratio": ("keep_ratio", float, "fraction of values kept per sample (instead of --k)"),
    "--alpha": ("alpha", float, "probability of a non-top-k pick, eq. 7 of RandTopk"),
    "--bits": ("bits", int, "bits per value"),
    "--l1-lambda": ("lam", float, "weight of the L1 penalty on the smashed data"),
}


def _scheme_default_text(key: str) -> str:
    """``"acp; default: 0.6"`` for a scheme parameter, from the registered schemes."""
    from acpsl.schemes.registry import SCHEMES

    takers: list[str] = []
    defaults: set[str] = set()
    for name in SCHEMES.names():
        try:
            param = inspect.signature(SCHEMES.get(name)).parameters.get(key)
        except (TypeError, ValueError):  # pragma: no cover - factories without a signature
            continue
        if param is None:
            continue
        takers.append(name)
        if param.default is not inspect.Parameter.empty:
            defaults.add("none" if param.default is None else str(param.default))
    default = ", ".join(sorted(defaults)) or "none"
    return f" [{', '.join(takers) or 'no built-in scheme'}] (default: {default})"


class SchemeDefaultsFormatter(argparse.HelpFormatter):
    """Appends to a scheme flag's help which schemes take it and their default.

    That text comes from the registered schemes' signatures, which means importing the
    schemes (and PyTorch): done here, when a help text is formatted, rather than when the
    parser is built, so ``acpsl --help`` and the other commands start without PyTorch.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = super()._get_help_string(action)
        key = getattr(action, "scheme_key", None)
        if text is None or key is None:
            return text
        return text + _scheme_default_text(key).replace("%", "%%")


def _default(name: str) -> str:
    value = _DEFAULTS[name]
    if name == "data_dir":
        return "$ACPSL_DATA, else ./data"
    if value is None:
        return "all"
    if isinstance(value, tuple):
        return "none" if not value else ",".join(str(v) for v in value)
    return str(value)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every option of a training run to ``parser`` (defaults: ``argparse.SUPPRESS``)."""
    s = argparse.SUPPRESS

    def d(name: str) -> str:
        return f" (default: {_default(name)})"

    run = parser.add_argument_group("run")
    run.add_argument(
        "--config",
        metavar="FILE.toml",
        default=s,
        help="read settings from a TOML file (keys as in a run's config.toml); options given "
        "on the command line override it (default: none)",
    )
    run.add_argument(
        "--scheme", default=s, help="cut scheme, see `acpsl.schemes.names()`" + d("scheme")
    )
    run.add_argument(
        "--dataset",
        default=s,
        help="mnist | fashion-mnist | cifar-10 | cifar-100 | digits, or MODULE:FUNCTION "
        "returning (train, test) torch Datasets (docs/data.md)" + d("dataset"),
    )
    run.add_argument(
        "--data-dir",
        dest="data_dir",
        default=s,
        help="folder holding one folder per dataset" + d("data_dir"),
    )
    run.add_argument(
        "--download",
        action=argparse.BooleanOptionalAction,
        default=s,
        help="fetch missing dataset files from upstream" + d("download"),
    )
    run.add_argument(
        "--subset",
        type=int,
        metavar="N",
        default=s,
        help="use only the first N training samples" + d("subset"),
    )
    run.add_argument(
        "--test-subset",
        dest="test_subset",
        type=int,
        metavar="N",
        default=s,
        help="evaluate on only the first N test samples" + d("test_subset"),
    )
    run.add_argument(
        "--model",
        default=s,
        help="resnet18 | resnet20 | smallcnn, or MODULE:FUNCTION returning a SplitModel or "
        "(client, server) modules (docs/models.md)" + d("model"),
    )
    run.add_argument(
        "--cut",
        type=int,
        default=s,
        help="top-level model children on the client (default: the model's own: "
        + ", ".join(f"{m} {c}" for m, c in MODEL_DEFAULT_CUTS.items())
        + ")",
    )
    run.add_argument("--stem", choices=STEMS, default=s, help="ResNet-18 input stem" + d("stem"))
    run.add_argument("--clients", type=int, default=s, help="number of clients" + d("clients"))
    run.add_argument(
        "--mode",
        choices=MODES,
        default=s,
        help="sequential: one client model relayed client to client; splitfed: "
        "client models averaged by data size each round" + d("mode"),
    )
    run.add_argument(
        "--partition",
        choices=PARTITIONS,
        default=s,
        help="how the data is split among clients" + d("partition"),
    )
    run.add_argument(
        "--beta",
        type=float,
        default=s,
        help="Dirichlet concentration (smaller = more skewed)" + d("beta"),
    )
    run.add_argument(
        "--rounds",
        type=int,
        default=s,
        help="rounds; one round = every client passes once over its data. T of ACP-SL's "
        "eq. 9 is rounds x iterations per round, so raising --rounds on --resume changes "
        "alpha_t for the rounds still to train" + d("rounds"),
    )
    run.add_argument(
        "--batch-size",
        dest="batch_size",
        type=int,
        default=s,
        help="mini-batch size" + d("batch_size"),
    )
    run.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default=s,
        help="optimizer of both model parts" + d("optimizer"),
    )
    run.add_argument("--lr", type=float, default=s, help="learning rate" + d("lr"))
    run.add_argument("--momentum", type=float, default=s, help="SGD momentum" + d("momentum"))
    run.add_argument(
        "--weight-decay",
        dest="weight_decay",
        type=float,
        default=s,
        help="L2 weight decay" + d("weight_decay"),
    )
    run.add_argument(
        "--lr-schedule",
        dest="lr_schedule",
        choices=LR_SCHEDULES,
        default=s,
        help="constant, or cosine: from --lr down to --lr-min at the run's last iteration "
        "(over T = rounds x iterations per round)" + d("lr_schedule"),
    )
    run.add_argument(
        "--lr-min",
        dest="lr_min",
        type=float,
        default=s,
        help="the cosine schedule's floor" + d("lr_min"),
    )
    run.add_argument(
        "--augment",
        choices=AUGMENTS,
        default=s,
        help="crop-flip: random crop after 4-pixel zero padding + horizontal flip of every "
        "training batch, on the client, seeded by --seed" + d("augment"),
    )
    run.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=s,
        help="bf16: client and server forward passes under torch.autocast (CPU or CUDA); "
        "the cut's payloads stay float32, so their bytes do not change" + d("precision"),
    )
    run.add_argument(
        "--channels-last",
        dest="channels_last",
        action=argparse.BooleanOptionalAction,
        default=s,
        help="models and inputs in channels-last memory format" + d("channels_last"),
    )
    run.add_argument(
        "--seed",
        type=int,
        default=s,
        help="seed of every random choice; same seed = same records" + d("seed"),
    )
    run.add_argument(
        "--device", default=s, help="auto (CUDA when available) | cpu | cuda | cuda:N" + d("device")
    )
    run.add_argument(
        "--target-acc",
        dest="target_acc",
        action="append",
        metavar="ACC",
        default=s,
        help="test accuracy to report rounds and bytes to reach; repeatable or a "
        "comma list; values above 1 are percentages (95 = 0.95), values up to 1 "
        "are fractions" + d("target_acc"),
    )
    run.add_argument(
        "--eval-uncompressed",
        dest="eval_uncompressed",
        action=argparse.BooleanOptionalAction,
        default=s,
        help="also evaluate without compressing the cut" + d("eval_uncompressed"),
    )
    run.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=s,
        help="show progress bars on a terminal (--no-progress hides them)" + d("progress"),
    )
    run.add_argument(
        "--logger",
        dest="loggers",
        action="append",
        metavar="NAME[,NAME]",
        default=s,
        help="per-step metrics beside records.jsonl: csv (OUT/metrics.csv) and/or "
        "tensorboard (OUT/tensorboard/, pip install 'acpsl[tensorboard]'); repeatable or a "
        "comma list" + d("loggers"),
    )

    scheme = parser.add_argument_group(
        "scheme parameters",
        "stored in the run's scheme_params; a scheme that does not take one rejects it",
    )
    scheme.add_argument(
        "--param",
        action="append",
        metavar="KEY=VALUE",
        default=s,
        help="any scheme parameter, VALUE parsed as a TOML scalar "
        "(e.g. --param p_base=0.75); repeatable (default: none)",
    )
    for flag, (key, kind, text) in SCHEME_FLAGS.items():
        action = scheme.add_argument(
            flag,
            dest=f"scheme__{key}",
            metavar=key.upper(),
            type=kind,
            default=s,
            help=text,
        )
        action.scheme_key = key  # type: ignore[attr-defined]
    if parser.formatter_class is argparse.HelpFormatter:
        parser.formatter_class = SchemeDefaultsFormatter


def parse_target(text: str) -> tuple[float, ...]:
    """Targets from ``"95"``, ``"0.95"`` or ``"90,95"``: values above 1 are percentages.

    Raises:
        ConfigError: a value that is not a number or not in (0, 100].
    """
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = float(part.rstrip("%"))
        except ValueError:
            raise ConfigError(f"invalid --target-acc {part!r}: not a number") from None
        if part.endswith("%") or value > 1:
            value /= 100
        if not 0 < value <= 1:
            raise ConfigError(f"invalid --target-acc {part!r}: use a value in (0, 1] or (0, 100]%")
        out.append(value)
    return tuple(out)


def parse_param(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE parsed as a TOML scalar (bare words are strings).

    Raises:
        ConfigError: if there is no ``=`` or no key.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"invalid --param {text!r}: use KEY=VALUE (e.g. p_base=0.75)")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def config_from_args(
    args: argparse.Namespace, *, base: Mapping[str, Any] | None = None
) -> TrainConfig:
    """The :class:`TrainConfig` of parsed options: defaults < ``--config`` file < options.

    Args:
        args: options parsed by a parser set up with :func:`add_train_arguments`.
        base: settings below the file's (a subcommand's own defaults, e.g. the demo's).

    Raises:
        ConfigError: a malformed file, an unknown key, or an invalid value.
    """
    values: dict[str, Any] = dict(base or {})
    opts = vars(args)
    if "config" in opts:
        values.update(read_toml(opts["config"]))
    params = dict(values.get("scheme_params") or {})
    for name in _DEFAULTS:
        if name in opts and name != "scheme_params":
            values[name] = opts[name]
    if "loggers" in opts:
        values["loggers"] = tuple(
            n.strip() for text in opts["loggers"] for n in str(text).split(",") if n.strip()
        )
    if "target_acc" in opts:
        values["target_acc"] = tuple(t for text in opts["target_acc"] for t in parse_target(text))
    elif "target_acc" in values:
        raw = values["target_acc"]
        items = raw if isinstance(raw, (list, tuple)) else [raw]
        values["target_acc"] = tuple(t for item in items for t in parse_target(str(item)))
    for text in opts.get("param", []):
        key, value = parse_param(text)
        params[key] = value
    for key, value in opts.items():
        if key.startswith("scheme__"):
            params[key[len("scheme__") :]] = value
    values["scheme_params"] = params
    return TrainConfig.from_dict(values)
