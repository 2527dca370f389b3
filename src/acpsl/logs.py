"""Logging of the command line: ``-v`` / ``-q`` / ``--log-level`` and one handler.

The library never prints: it logs through :mod:`logging` under the ``acpsl`` logger
(``acpsl.engine``, ``acpsl.transport``, ...), and only a program that wants the lines
configures where they go. The ``acpsl`` command line does, with :func:`configure`: one
handler on the ``acpsl`` logger (installed once, however often it is called, so no line is
ever written twice), writing to stderr. INFO lines are the bare message (progress a user
reads); warnings and errors say so (``acpsl: warning: ...``); DEBUG lines name their logger.
While a progress bar is on the screen, lines are written through ``tqdm.write`` so they do
not tear it. Progress bars are shown only when stderr is a terminal (:func:`show_progress`):
a redirected log gets one line per round, not a bar's carriage returns.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, TextIO

#: The logger every acpsl module logs under (``acpsl.<module>``).
LOGGER = "acpsl"
#: ``--log-level`` choices.
LEVELS = ("debug", "info", "warning", "error")

_HANDLER_FLAG = "_acpsl_cli_handler"


def add_log_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``-v/--verbose``, ``-q/--quiet`` and ``--log-level`` to ``parser``."""
    group = parser.add_argument_group("logging")
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more detail: debug messages too (default: off)",
    )
    group.add_argument(
        "-q",
        "--quiet",
        action="count",
        default=0,
        help="less: only warnings and errors, no progress bars; -qq: only errors (default: off)",
    )
    group.add_argument(
        "--log-level",
        dest="log_level",
        choices=LEVELS,
        default=None,
        help="level of the acpsl log, overriding -v/-q (default: info)",
    )


def level_from_args(args: argparse.Namespace) -> int:
    """The logging level that ``-v`` / ``-q`` / ``--log-level`` ask for (INFO without them)."""
    name = getattr(args, "log_level", None)
    if name:
        return int(getattr(logging, name.upper()))
    verbose, quiet = int(getattr(args, "verbose", 0) or 0), int(getattr(args, "quiet", 0) or 0)
    steps = quiet - verbose
    if steps <= -1:
        return logging.DEBUG
    return (logging.INFO, logging.WARNING, logging.ERROR)[min(steps, 2)]


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info and record.levelno >= logging.ERROR:
            message += "\n" + self.formatException(record.exc_info)
        if record.levelno >= logging.WARNING:
            return f"acpsl: {record.levelname.lower()}: {message}"
        if record.levelno < logging.INFO:
            return f"[{record.name}] {message}"
        return message


class ProgressAwareHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes through ``tqdm.write`` while a progress bar is shown."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            bars = _active_bars()
            if bars:
                from tqdm import tqdm

                tqdm.write(text, file=self.stream)
            else:
                self.stream.write(text + "\n")
            self.flush()
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def _active_bars() -> bool:
    tqdm_module = sys.modules.get("tqdm")
    if tqdm_module is None:
        return False
    instances = getattr(tqdm_module.tqdm, "_instances", None)
    return bool(instances)


def configure(level: int = logging.INFO, *, stream: TextIO | None = None) -> logging.Logger:
    """Send the ``acpsl`` log to ``stream`` (default: the current ``sys.stderr``) at ``level``.

    Idempotent: a handler installed by an earlier call is replaced, never added twice, and
    the ``acpsl`` logger does not propagate to the root logger (whose handlers would repeat
    every line).
    """
    logger = logging.getLogger(LOGGER)
    for handler in list(logger.handlers):
        if getattr(handler, _HANDLER_FLAG, False):
            logger.removeHandler(handler)
    handler = ProgressAwareHandler(stream if stream is not None else sys.stderr)
    setattr(handler, _HANDLER_FLAG, True)
    handler.setFormatter(_Formatter())
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger


def configure_from_args(args: argparse.Namespace) -> logging.Logger:
    """:func:`configure` at the level of the parsed ``-v`` / ``-q`` / ``--log-level``."""
    return configure(level_from_args(args))


def show_progress(requested: bool, *, stream: Any = None) -> bool:
    """Whether to draw a progress bar: asked for, the ``acpsl`` log shows INFO, and the bar's
    stream (stderr) is a terminal (a redirected log gets no carriage returns)."""
    if not requested:
        return False
    logger = logging.getLogger(LOGGER)
    if logger.level > logging.INFO:  # -q (an unconfigured logger, NOTSET, does not hide bars)
        return False
    out = stream if stream is not None else sys.stderr
    isatty = getattr(out, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (ValueError, OSError):  # a closed stream
        return False
