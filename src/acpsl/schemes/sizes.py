"""Payload sizes of the baseline schemes: the real format, the papers' Table 2, the bound.

Three numbers per payload, reported side by side by every baseline's ``stats()``:

* the exact byte length of the wire format (``*_size`` functions here; tests check them against
  ``len()`` of real encodes, and :mod:`acpsl.schemes.matching` uses them to match compression);
* the papers' formula (Table 2 of the RandTopk paper, as bytes of the values and indices only:
  ``table2_*``);
* the information bound: ``log2 C(d, k)`` bits for which ``k`` of ``d`` positions are kept,
  plus 4 bytes per kept float32 value (``bound_*``).

Table 2 prints the compressed size of ``b``-bit quantization as ``2^b / N``; that is a typo
for ``b / N`` (``2^b / 32`` exceeds 1 for ``b >= 6``), so :func:`table2_quant_bytes` uses
``b / N``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import lru_cache

import numpy as np

from acpsl.cut.bitpack import packed_size
from acpsl.cut.indices import counts_size, index_width, selection_size
from acpsl.cut.payload import header_size

#: Bytes of one float32 value.
FLOAT_BYTES = 4


# ------------------------------------------------------------------------------ bounds
@lru_cache(maxsize=1 << 14)
def log2_binomial(d: int, k: int) -> float:
    """``log2 C(d, k)`` via ``math.lgamma`` (exact enough for any cut size, never overflows)."""
    if not 0 <= k <= d:
        raise ValueError(f"need 0 <= k <= d, got k={k}, d={d}")
    return (math.lgamma(d + 1) - math.lgamma(k + 1) - math.lgamma(d - k + 1)) / math.log(2)


def bound_sparse_bytes(*, counts: Iterable[int] | np.ndarray, d: int) -> float:
    """Information bound of a sparse payload: per sample ``log2 C(d, k_i) / 8`` + ``4 k_i``."""
    kept = np.asarray(counts, dtype=np.int64).reshape(-1)
    if kept.size and (int(kept.min()) < 0 or int(kept.max()) > d):
        raise ValueError(f"need 0 <= k <= d for every count, got d={d}")
    return float(_log2_binomial_row(d)[kept].sum() / 8 + FLOAT_BYTES * int(kept.sum()))


@lru_cache(maxsize=16)
def _log2_binomial_row(d: int) -> np.ndarray:
    """``log2 C(d, k)`` for ``k = 0..d`` (one lgamma per k, once per cut size)."""
    return np.array([log2_binomial(d, k) for k in range(d + 1)], dtype=np.float64)


def bound_sparse_bytes_fixed(*, batch: int, d: int, k: int) -> float:
    """:func:`bound_sparse_bytes` when every one of ``batch`` samples keeps ``k`` values."""
    return batch * (log2_binomial(d, k) / 8 + FLOAT_BYTES * k)


# --------------------------------------------------------------------------- Table 2
def table2_sparse_bytes(*, kept: int, d: int) -> float:
    """Table 2 for top-k / RandTopk / L1 forward: ``k (N + ceil(log2 d)) / 8`` bytes, N = 32."""
    return kept * (FLOAT_BYTES + math.ceil(math.log2(d)) / 8) if d > 1 else kept * FLOAT_BYTES


def table2_sizered_bytes(*, kept: int) -> float:
    """Table 2 for cut-layer size reduction: ``k`` float32 values."""
    return float(FLOAT_BYTES * kept)


def table2_quant_bytes(*, numel: int, bits: int) -> float:
    """Table 2 for ``b``-bit quantization (``b / N`` of the float32 size; see module note)."""
    return numel * bits / 8


# ------------------------------------------------------------------- exact wire sizes
def dense_size(*, shape: tuple[int, ...]) -> int:
    """Header + every value as float32 (the standard scheme; quant/L1 gradients)."""
    return header_size(len(shape)) + FLOAT_BYTES * math.prod(shape)


def topk_forward_size(*, ndim: int, batch: int, d: int, k: int) -> int:
    """top-k / RandTopk uplink: header + ``u32 k`` + index block + ``B k`` float32."""
    return (
        header_size(ndim)
        + 4
        + selection_size(total=batch * k, batch=batch, d=d)
        + FLOAT_BYTES * batch * k
    )


def topk_grad_size(*, ndim: int, batch: int, k: int) -> int:
    """top-k / RandTopk downlink: header + ``B k`` float32 (indices are not resent)."""
    return header_size(ndim) + FLOAT_BYTES * batch * k


def sizered_size(*, ndim: int, batch: int, k: int) -> int:
    """Size reduction, either direction: header + ``u32 k`` + ``u32 d`` + ``B k`` float32."""
    return header_size(ndim) + 8 + FLOAT_BYTES * batch * k


def quant_forward_size(*, ndim: int, batch: int, d: int, bits: int) -> int:
    """Quantization uplink: header + ``u8 b`` + per-sample float32 min/max + packed codes."""
    return (
        header_size(ndim) + 1 + 2 * FLOAT_BYTES * batch + packed_size(count=batch * d, width=bits)
    )


def l1_forward_size(*, ndim: int, d: int, counts: Iterable[int]) -> int:
    """L1 uplink: header + per-sample counts + index block + the non-zero float32 values."""
    counts = [int(c) for c in counts]
    batch, total = len(counts), sum(counts)
    return (
        header_size(ndim)
        + counts_size(batch=batch, d=d)
        + selection_size(total=total, batch=batch, d=d)
        + FLOAT_BYTES * total
    )


def index_bits(d: int) -> int:
    """Bits per packed index (re-exported for reports): ``ceil(log2 d)``, at least 1."""
    return index_width(d)
