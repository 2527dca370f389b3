"""acpsl: communication-efficient split learning.

ACP-SL (label-aware channel importance scoring + adaptive channel pruning) and the schemes it
is compared with, all measured by the bytes that really cross the cut.
"""

from acpsl.errors import (
    AcpslError,
    CheckpointError,
    ConfigError,
    DataError,
    PayloadError,
    TrainingError,
)

__version__ = "0.1.0"

__all__ = [
    "AcpslError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "PayloadError",
    "TrainingError",
    "__version__",
]
