"""The in-process split-learning engine: clients, server, rounds, records, checkpoints.

``train(config, out_dir=...)`` runs a whole experiment; :class:`ClientRuntime` and
:class:`ServerRuntime` are the two ends of the cut that the network transport reuses.
"""

from acpsl.engine.client import ClientRuntime, Uplink
from acpsl.engine.loop import train
from acpsl.engine.records import RunSummary, TargetResult
from acpsl.engine.server import ServerRuntime

__all__ = ["ClientRuntime", "RunSummary", "ServerRuntime", "TargetResult", "Uplink", "train"]
