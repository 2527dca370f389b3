"""Compiled loops behind the cut's codecs (Numba).

Why: a codec written as NumPy calls makes one pass over the batch per call (absolute values,
a sort, a comparison, a mask scan, a gather, a bit shift per byte slot...), and each pass
allocates a temporary the size of the batch. Top-k, quantization and the L1 non-zeros then cost
10-30 copies of the smashed data per iteration. The kernels here fuse those passes into one or
two loops per sample with no temporaries of the batch's size, and give exactly the same bytes
(the tests compare them with naive reference loops and with the papers' equations).

Every kernel is compiled once per machine on first use (``cache=True`` keeps the machine code
beside this package, or in Numba's user cache when the package directory is read-only) and
runs without the GIL (``nogil=True``), so the network server's threads do not serialize on it.
The few that stream the whole batch (quantization, the L1 non-zeros) split their rows over
PyTorch's thread count (:func:`parallel_kernel`, :func:`launch`). With Numba's OpenMP layer a
process that ran one must not ``fork`` a child that runs one too (start children with
``spawn`` or ``exec``, as ``acpsl compare`` does).
The Python wrappers in :mod:`acpsl.cut` and :mod:`acpsl.schemes` validate arguments and
raise the library's errors; a kernel returns a status code instead of raising.

Numba's on-disk cache is keyed on the timestamp of the file that defines a kernel: after an
edit of :mod:`acpsl.kernels.simd`, kernels of other files that inline its blocks keep their old
machine code until their own file changes (delete ``__pycache__/*.nbi`` and ``*.nbc`` here).

Modules:
    :mod:`acpsl.kernels.bits`: fixed-width bit streams and bit masks (pack, unpack, scan).
    :mod:`acpsl.kernels.topk`: per-sample top-k by magnitude (radix select), non-zeros.
    :mod:`acpsl.kernels.randtopk`: the random part of RandTopk's eq. 7 given its draws.
    :mod:`acpsl.kernels.quant`: eq. 2 quantization fused with bit packing, and its inverse.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import numba
import torch

F = TypeVar("F", bound=Callable[..., Any])
_LAUNCH = threading.Lock()


def kernel(fn: F) -> F:
    """Compile ``fn`` with Numba in nopython mode, cached on disk, without the GIL.

    Strict IEEE arithmetic (no ``fastmath``): the kernels must produce the same float32 results
    as the equations evaluated one operation at a time.
    """
    compiled: F = numba.njit(cache=True, nogil=True)(fn)
    return compiled


def block(fn: F) -> F:
    """:func:`kernel` for the small helpers a kernel calls per lane or per 16 lanes, inlined
    into every caller at Numba's IR level.

    Why: a kernel loaded from the on-disk cache links its callees as machine code, so LLVM
    cannot inline them; a helper left as a call costs a call per 16 values with every array
    passed as a struct of fields (the AVX2 expand ran 4x slower that way).
    """
    compiled: F = numba.njit(nogil=True, inline="always")(fn)
    return compiled


def parallel_kernel(fn: F) -> F:
    """:func:`kernel` with ``prange`` loops spread over threads (for passes that stream the
    whole batch from memory, where one core's bandwidth is the limit). Call it through
    :func:`launch`."""
    compiled: F = numba.njit(cache=True, nogil=True, parallel=True)(fn)
    return compiled


#: Batches smaller than this many values run a parallel kernel on one thread: waking the
#: other threads costs more than they would save.
PARALLEL_MIN_VALUES = 1 << 16


def launch(fn: Callable[..., Any], *args: Any, values: int) -> Any:
    """Run a :func:`parallel_kernel` over a batch of ``values`` values on as many threads as
    PyTorch uses (``torch.set_num_threads``, e.g. ``acpsl compare``'s per-worker share), or
    on one for a small batch; one launch at a time. The caller's thread counts, PyTorch's
    and Numba's, are the same afterwards.

    Why the care: Numba's OpenMP layer starts its pool (on the first parallel launch of the
    process) with ``omp_set_num_threads(NUMBA_NUM_THREADS)``; PyTorch's CPU wheel loads its
    own ``libgomp`` globally, so that call lands in PyTorch's OpenMP runtime and
    ``torch.get_num_threads()`` silently became ``NUMBA_NUM_THREADS`` for the rest of the
    process (issue 10, defect 7). So the pool is started here, under the caller's setting,
    which is then put back; Numba's own (thread-local) count is set for the launch and put
    back after it; PyTorch's is checked after every launch. That costs two integer reads per
    launch, and a set only when something changed. Numba's ``workqueue`` layer would not touch
    OpenMP, but it is a process-wide Numba setting (the caller's, too) and was measured slower
    (docs/baselines.md, "Speed").

    One at a time: some of Numba's threading layers do not take concurrent launches from
    several threads (the network server decodes on gRPC threads).
    """
    wanted = torch.get_num_threads()
    with _LAUNCH:
        get_numba, set_numba = _numba_thread_calls()
        if torch.get_num_threads() != wanted:  # the pool start just reset it
            torch.set_num_threads(wanted)
        threads = 1
        if values >= PARALLEL_MIN_VALUES:
            threads = max(1, min(wanted, numba.config.NUMBA_NUM_THREADS))
        before = get_numba()
        if before != threads:
            set_numba(threads)
        try:
            return fn(*args)
        finally:
            if before != threads:
                set_numba(before)
            if torch.get_num_threads() != wanted:
                torch.set_num_threads(wanted)


_THREAD_CALLS: tuple[Callable[[], int], Callable[[int], None]] | None = None


def _numba_thread_calls() -> tuple[Callable[[], int], Callable[[int], None]]:
    """Getter and setter of Numba's thread count for the calling thread, after starting its
    pool (once). Numba's public ``get_num_threads`` / ``set_num_threads`` take a process lock
    on every call (several microseconds each); once the pool runs, its layer's own functions
    (``numba.np.ufunc.parallel._get_num_threads`` / ``_set_num_threads``) do the same without
    it. Where a Numba version lacks them, the public ones."""
    global _THREAD_CALLS
    if _THREAD_CALLS is None:
        numba.get_num_threads()  # starts the pool
        from numba.np.ufunc import parallel

        getter = getattr(parallel, "_get_num_threads", None)
        setter = getattr(parallel, "_set_num_threads", None)
        if callable(getter) and callable(setter):
            _THREAD_CALLS = (getter, setter)
        else:  # pragma: no cover - other Numba versions
            _THREAD_CALLS = (numba.get_num_threads, numba.set_num_threads)
    return _THREAD_CALLS
