"""The ``acpsl`` command line: ``acpsl train``, ``acpsl demo`` and plug-in subcommands.

Subcommands live in plug-in modules, so a part of the toolkit adds its own without editing
this file. A plug-in module exposes ``add_parser(subparsers)``, which adds one or more
subcommand parsers, each with ``set_defaults(func=callable(args) -> int | None)``; a parser
left without ``func`` runs the module's ``run(args)``. Plug-ins are imported lazily, and one
that is not installed (an optional extra such as the gRPC transport) is skipped.

Logging: every subcommand takes ``-v`` / ``-q`` / ``--log-level``; the library logs through
:mod:`logging` and :func:`acpsl.logs.configure` sends those lines to stderr, once each.
Results (tables, the files written) are printed to stdout by the subcommands.

The parser is built without importing PyTorch or gRPC (the plug-ins import them when a
command runs), so ``acpsl --help`` and ``acpsl presets`` start fast.

Errors: an :class:`~acpsl.errors.AcpslError` is printed as one line ``acpsl: error: ...`` on
stderr with its ``exit_code`` (2 for usage errors, 1 for runtime failures), argparse's own
usage errors exit 2, a stray :class:`OSError` (a file that cannot be read or written) is
one line with exit 1, and Ctrl-C exits 130 saying how to resume. A user's mistake never
prints a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from acpsl import __version__
from acpsl.errors import AcpslError, os_error_reason
from acpsl.logs import add_log_arguments, configure_from_args

#: Modules that add subcommands, in the order their commands are listed.
PLUGINS: tuple[str, ...] = (
    "acpsl.engine.commands",
    "acpsl.experiments.cli",
    "acpsl.transport.cli",
)


def _load_plugin(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        # Skip a plug-in that is absent or needs an optional extra that is not installed;
        # a plug-in that fails for another reason is a bug and must be seen.
        missing = exc.name or ""
        if name.startswith(missing) or missing.split(".")[0] not in ("acpsl",):
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    """The full ``acpsl`` parser with every available plug-in's subcommands."""
    parser = argparse.ArgumentParser(
        prog="acpsl",
        description="Communication-efficient split learning (ACP-SL and its baselines), "
        "measured in the bytes that really cross the cut.",
    )
    parser.add_argument("--version", action="version", version=f"acpsl {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in PLUGINS:
        module = _load_plugin(name)
        if module is None or not hasattr(module, "add_parser"):
            continue
        before = set(subparsers.choices)
        module.add_parser(subparsers)
        fallback = getattr(module, "run", None)
        for command in sorted(set(subparsers.choices) - before):
            sub = subparsers.choices[command]
            if sub.get_default("func") is None and fallback is not None:
                sub.set_defaults(func=fallback)
            add_log_arguments(sub)  # -v / -q / --log-level on every command
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``acpsl`` command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:  # pragma: no cover - every registered subcommand sets one
        parser.error(f"subcommand {args.command!r} has nothing to run")
    configure_from_args(args)
    try:
        code = func(args)
    except AcpslError as exc:
        message = " ".join(str(exc).split())
        print(f"acpsl: error: {message}", file=sys.stderr)
        return int(exc.exit_code)
    except OSError as exc:
        # A system error no acpsl code turned into an AcpslError (a file that cannot be
        # read or written, a full disk): still one line, exit 1, no traceback.
        print(f"acpsl: error: {_os_message(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "\nacpsl: interrupted; every finished round is saved in the run directory, "
            "run the same command with --resume to continue",
            file=sys.stderr,
        )
        return 130
    return int(code or 0)


def _os_message(exc: OSError) -> str:
    reason = os_error_reason(exc)
    names = [str(n) for n in (exc.filename, exc.filename2) if n]
    text = f"{reason}: {' -> '.join(names)}" if names else reason
    return " ".join(text.split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
