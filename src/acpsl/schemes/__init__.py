"""Compression schemes on the cut: ``create(name, **params)`` and ``names()``.

Importing this package registers every built-in scheme.
"""

# Each import registers its scheme (order = the order of ``names()``).
# isort: off
from acpsl.schemes import standard as _standard  # noqa: F401
from acpsl.schemes import acp as _acp  # noqa: F401
from acpsl.schemes import randtopk as _randtopk  # noqa: F401
from acpsl.schemes import topk as _topk  # noqa: F401
from acpsl.schemes import sizered as _sizered  # noqa: F401
from acpsl.schemes import quant as _quant  # noqa: F401
from acpsl.schemes import l1 as _l1  # noqa: F401
from acpsl.schemes import dropgroup as _dropgroup  # noqa: F401

# isort: on
from acpsl.schemes.base import Scheme
from acpsl.schemes.registry import SCHEMES, create, names, register

__all__ = ["SCHEMES", "Scheme", "create", "names", "register"]
