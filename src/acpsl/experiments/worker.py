"""A local worker process of ``acpsl compare --workers N``: trains one run of a grid.

Usage (started by :mod:`acpsl.experiments.compare`, not by hand)::

    python -m acpsl.experiments.worker RUN_DIR/.plan.json --root GRID --threads T --parent PID

It writes ``.result.json`` beside the plan when the run is done; the engine's progress
lines go to stdout (the run's ``log.txt``). On Linux the worker asks the kernel to kill it
when its parent dies, so a grid stopped with SIGKILL leaves no orphan training behind.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Have the kernel send SIGKILL to this process when its parent exits (Linux only).

    Also exits at once if the parent is already gone (it died before the call).
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - exotic libc
            pass
    if os.getppid() != parent:
        os._exit(1)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the plan file given on the command line; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m acpsl.experiments.worker")
    parser.add_argument("plan", type=Path)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--parent", type=int, default=None)
    args = parser.parse_args(argv)
    if args.parent is not None:
        die_with_parent(args.parent)

    import torch

    from acpsl import plugins
    from acpsl.engine.records import write_atomic
    from acpsl.errors import AcpslError
    from acpsl.experiments.runner import run_plan
    from acpsl.logs import configure

    torch.set_num_threads(max(1, args.threads))
    # the engine's log lines go to stdout, which is the run's log.txt
    logger = configure(stream=sys.stdout)
    plan = json.loads(args.plan.read_text("utf-8"))
    try:
        # The driver's plug-in modules ($ACPSL_PLUGINS, searched on $ACPSL_PLUGIN_PATH).
        plugins.prepare_worker()
        result = run_plan(plan, root=args.root, log=logger.getChild("engine").info)
    except AcpslError as exc:
        print(f"acpsl: error: {' '.join(str(exc).split())}", flush=True)
        return int(exc.exit_code)
    write_atomic(args.plan.with_name(".result.json"), json.dumps(result).encode("utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
