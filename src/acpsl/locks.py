"""An exclusive, process-lifetime lock on a file, holding the owner's pid.

Used by ``acpsl serve`` (one server per run directory) and ``acpsl compare`` (one driver per
grid directory). The lock is an ``flock`` on an open descriptor, so the kernel drops it when
the holder dies, even by SIGKILL: a stale lock file is harmless. Without :mod:`fcntl` (not
POSIX) nothing is locked.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]


class PidLock:
    """Take an exclusive, non-blocking ``flock`` on ``path`` (created if needed) and write
    this process's pid into it; held until :meth:`release` or the end of a ``with`` block.

    Args:
        path: the lock file.
        busy: builds the error raised when another process holds the lock, from the pid text
            that process wrote ("" if unknown).

    Raises:
        Exception: ``busy(holder)``, when the lock is held elsewhere.
    """

    def __init__(self, path: Path, *, busy: Callable[[str], Exception]) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        if fcntl is None:  # pragma: no cover
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            os.close(fd)
            raise busy(holder if holder.isdigit() else "") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (idempotent): closing the descriptor releases the ``flock``."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> PidLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
