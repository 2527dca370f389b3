"""The in-process split-learning engine: clients, server, rounds, records, checkpoints.

``train(config, out_dir=...)`` runs a whole experiment; :class:`ClientRuntime` and
:class:`ServerRuntime` are the two ends of the cut that the network transport reuses.

The names are imported on first use (PEP 562), so that the command line's parser, which
imports :mod:`acpsl.engine.cli_args`, starts without importing PyTorch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from acpsl.engine.client import ClientRuntime, Uplink
    from acpsl.engine.loop import train
    from acpsl.engine.records import RunSummary, TargetResult
    from acpsl.engine.server import ServerRuntime

#: Public name -> the module that defines it.
_LAZY = {
    "ClientRuntime": "acpsl.engine.client",
    "Uplink": "acpsl.engine.client",
    "train": "acpsl.engine.loop",
    "RunSummary": "acpsl.engine.records",
    "TargetResult": "acpsl.engine.records",
    "ServerRuntime": "acpsl.engine.server",
}

__all__ = ["ClientRuntime", "RunSummary", "ServerRuntime", "TargetResult", "Uplink", "train"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'acpsl.engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
