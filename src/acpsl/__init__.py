"""acpsl: communication-efficient split learning.

ACP-SL (label-aware channel importance scoring + adaptive channel pruning) and the schemes it
is compared with, all measured by the bytes that really cross the cut.
"""

from typing import TYPE_CHECKING, Any

from acpsl.errors import (
    AcpslError,
    CheckpointError,
    ConfigError,
    DataError,
    PayloadError,
    TrainingError,
)

__version__ = "0.1.0"

if TYPE_CHECKING:
    from acpsl.cut.layer import CutLayer


#: Subpackages reachable as attributes after a bare ``import acpsl`` (``acpsl.models.register``).
_SUBMODULES = ("data", "models", "schemes", "lcis", "plugins")


def __getattr__(name: str) -> Any:
    # Lazy, so that ``import acpsl`` (and ``acpsl --help``) does not import torch.
    if name == "CutLayer":
        from acpsl.cut.layer import CutLayer

        return CutLayer
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"acpsl.{name}")
    raise AttributeError(f"module 'acpsl' has no attribute {name!r}")


__all__ = [
    "AcpslError",
    "CheckpointError",
    "ConfigError",
    "CutLayer",
    "DataError",
    "PayloadError",
    "TrainingError",
    "__version__",
]
