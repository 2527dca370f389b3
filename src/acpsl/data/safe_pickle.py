"""A restricted unpickler for the CIFAR python batches.

Unpickling can run arbitrary code, and these files come from disk, so only the globals that
a plain dict of numpy arrays and lists needs are allowed; anything else is refused.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

from acpsl.errors import DataError

#: (module, name) pairs a CIFAR batch may reference: numpy array reconstruction and the
#: latin-1 codec helper Python 3 uses for bytes in protocol-2 pickles.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }
)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a dataset file")


def load_pickle(path: Path, *, data: bytes | None = None) -> Any:
    """Unpickle a dataset file allowing only plain containers and numpy arrays.

    Args:
        path: the file (named in errors).
        data: its bytes, if already read.

    Returns:
        The unpickled object (bytes keys stay bytes: ``encoding="bytes"`` as the CIFAR
        pickles were written by Python 2).

    Raises:
        DataError: the file is not a pickle, is truncated, or references a disallowed global.
    """
    raw = path.read_bytes() if data is None else data
    try:
        return _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # any failure here means a corrupt or hostile file
        raise DataError(
            f"{path}: not a valid dataset pickle ({type(exc).__name__}: {exc}); delete it and "
            "download it again (--download)"
        ) from None
