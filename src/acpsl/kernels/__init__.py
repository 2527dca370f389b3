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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
    and Numba's, are the same afterwards (:func:`_keep_thread_counts`).

    One at a time: some of Numba's threading layers do not take concurrent launches from
    several threads (the network server decodes on gRPC threads).
    """
    wanted = torch.get_num_threads()
    with _LAUNCH, _keep_thread_counts(wanted):
        threads = 1
        if values >= PARALLEL_MIN_VALUES:
            threads = max(1, min(wanted, numba.config.NUMBA_NUM_THREADS))
        if numba.get_num_threads() != threads:
            numba.set_num_threads(threads)
        return fn(*args)


@contextmanager
def _keep_thread_counts(torch_threads: int) -> Iterator[None]:
    """Leave PyTorch's and Numba's thread counts of the calling thread as they were.

    Why: Numba's OpenMP layer starts its pool (on the first parallel launch of the process)
    with ``omp_set_num_threads(NUMBA_NUM_THREADS)``; PyTorch's CPU wheel loads its own
    ``libgomp`` globally, so that call lands in PyTorch's OpenMP runtime and
    ``torch.get_num_threads()`` silently becomes ``NUMBA_NUM_THREADS`` for the rest of the
    process (issue 10, defect 7). Restoring costs two reads per launch and one
    ``torch.set_num_threads`` when something did change (once per process in practice);
    the ``workqueue`` layer, which would not touch OpenMP, is a process-wide Numba setting
    (the caller's, too) and was measured slower (docs/baselines.md, "Speed").
    """
    numba_threads = numba.get_num_threads()  # starts Numba's pool on the first call
    if torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)
    try:
        yield
    finally:
        if numba.get_num_threads() != numba_threads:
            numba.set_num_threads(numba_threads)
        if torch.get_num_threads() != torch_threads:
            torch.set_num_threads(torch_threads)
