"""The engine's subcommands of the ``acpsl`` command line: ``train`` and ``demo``.

A plug-in of :mod:`acpsl.cli` (see its docstring for the protocol).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from acpsl.config import TrainConfig, read_toml
from acpsl.engine.cli_args import add_train_arguments, config_from_args
from acpsl.errors import CheckpointError


def add_parser(subparsers: Any) -> None:
    """Add ``acpsl train`` and ``acpsl demo`` to the ``acpsl`` parser."""
    train = subparsers.add_parser(
        "train",
        help="train one split-learning run and record its accuracy and bytes",
        description="Train one split-learning run. Writes OUT/config.toml, records.jsonl (one "
        "line per round), checkpoint.pt, partition.json and summary.json.",
    )
    train.add_argument(
        "--out",
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="run directory (default: runs/<scheme>-<dataset>-seed<seed>)",
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last finished round; without --config the "
        "settings are read from OUT/config.toml and only the options given override them "
        "(e.g. a larger --rounds; note that this changes T of ACP-SL's eq. 9 for the rounds "
        "still to train, so the result differs from a run started with that many rounds) "
        "(default: off)",
    )
    add_train_arguments(train)
    train.set_defaults(func=run_train)

    demo = subparsers.add_parser(
        "demo",
        help="a short real comparison of standard SL, ACP-SL and RandTopk; no download",
        description="Train ResNet-18 (CIFAR stem, cut after the stem) on scikit-learn's bundled "
        "8x8 digits with 5 clients under standard SL, ACP-SL and RandTopk matched to ACP-SL's "
        "uplink size, and print accuracy and bytes per scheme.",
    )
    demo.add_argument("--rounds", type=int, default=3, help="rounds per scheme (default: 3)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the runs (default: 0)")
    demo.add_argument(
        "--out",
        default="runs/demo",
        metavar="DIR",
        help="folder of the runs, one subfolder per scheme (default: runs/demo)",
    )
    demo.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the subfolders of an earlier demo in --out (default: refuse to)",
    )
    demo.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    demo.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="show progress bars (default: on)",
    )
    demo.set_defaults(func=run_demo)


def run_train(args: argparse.Namespace) -> int:
    """``acpsl train``: build the configuration, train, print the summary.

    With ``--resume`` and no ``--config``, the base settings are the run's own
    ``OUT/config.toml`` (what it was started with), so ``acpsl train --out DIR --rounds 5
    --resume`` continues that run; options given on the command line still override it.
    """
    from acpsl.engine.loop import train

    config = config_from_args(args)
    out = getattr(args, "out", None) or default_out(config)
    if args.resume:
        config = resume_config(args, out=Path(out))
    train(config, out_dir=out, resume=bool(args.resume))
    print(f"records: {out}/records.jsonl")
    return 0


def resume_config(args: argparse.Namespace, *, out: Path) -> TrainConfig:
    """The configuration of ``--resume`` (``acpsl train`` and ``acpsl serve``): the run's own
    ``OUT/config.toml``, with the options given on the command line on top (``--config FILE``
    replaces the run's file as the base).

    Raises:
        CheckpointError: ``OUT/config.toml`` does not exist: there is no run to continue
            (without this check ``--resume`` would silently start a run of default settings).
    """
    from acpsl.engine.loop import CONFIG

    saved = out / CONFIG
    if not saved.is_file():
        raise CheckpointError(
            f"cannot resume: {saved} does not exist, so {out} holds no run to continue; "
            "start the run without --resume"
        )
    if "config" in vars(args):
        return config_from_args(args)
    # The run's own settings are the base; only the options given override them.
    return config_from_args(args, base=read_toml(saved))


def default_out(config: TrainConfig) -> str:
    """The run directory of ``acpsl train`` without ``--out``."""
    return f"runs/{config.scheme}-{config.dataset}-seed{config.seed}"


def run_demo(args: argparse.Namespace) -> int:
    """``acpsl demo``: the README's main example."""
    from acpsl.engine.demo import demo_table
    from acpsl.engine.demo import run_demo as demo
    from acpsl.logs import show_progress

    rows = demo(
        rounds=args.rounds,
        seed=args.seed,
        out_dir=args.out,
        device=args.device,
        progress=show_progress(args.progress),
        overwrite=args.overwrite,
    )
    print(demo_table(rows))
    return 0
