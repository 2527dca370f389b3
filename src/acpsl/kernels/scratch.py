"""Reusable work buffers for the codecs.

A codec that allocates its work arrays afresh on every call pays for the pages as well: a new
allocation of megabytes comes from the operating system and each 4 KiB page faults on first
write, which for a 2 MiB batch costs about as much as a pass over it. The buffers here are kept
by a scheme instance between calls (grown, never shrunk); only what the caller returns to
its caller (the payload, a rebuilt tensor) is allocated per call.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


class Scratch:
    """Named work buffers, each the largest size asked for so far."""

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    def empty(self, name: str, size: int, dtype: npt.DTypeLike) -> np.ndarray:
        """A 1-D array of ``size`` elements of ``dtype`` with undefined contents (a view of
        the buffer ``name``, valid until the next call for the same name)."""
        dtype = np.dtype(dtype)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.dtype != dtype or buffer.size < size:
            buffer = np.empty(size, dtype=dtype)
            self._buffers[name] = buffer
        return buffer[:size]

    def zeros(self, name: str, size: int, dtype: npt.DTypeLike) -> np.ndarray:
        """:meth:`empty`, filled with zeros."""
        out = self.empty(name, size, dtype)
        out.fill(0)
        return out
