"""Compression schemes on the cut: ``create(name, **params)`` and ``names()``.

Importing this package registers every built-in scheme.
"""

from acpsl.schemes import standard as _standard  # noqa: F401  (registers "standard")
from acpsl.schemes.base import Scheme
from acpsl.schemes.registry import SCHEMES, create, names, register

# Built-in schemes register themselves on import; each module is added here as it lands.
for _module in ("acp", "randtopk", "topk", "sizered", "quant", "l1"):
    try:
        __import__(f"acpsl.schemes.{_module}")
    except ModuleNotFoundError as _exc:  # pragma: no cover - only while a scheme is not written
        if _exc.name != f"acpsl.schemes.{_module}":
            raise

__all__ = ["SCHEMES", "Scheme", "create", "names", "register"]
