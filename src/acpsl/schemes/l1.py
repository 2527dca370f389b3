"""L1 regularization of the smashed data (RandTopk paper, section 3.1).

The client adds ``lambda * sum_i |o_i|`` per sample to its loss (:meth:`L1Scheme.client_loss`),
which drives activations to exactly zero; the uplink then carries only the non-zero values and
their indices, like top-k but with a different number per sample. The gradient is not
sparsified: it comes back in full float32.

Uplink body: per-sample counts packed at ``ceil(log2 (d + 1))`` bits, the index block of
:mod:`acpsl.cut.indices` (packed indices or bit mask, whichever is smaller), then the non-zero
values as float32, sample by sample in ascending index order.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from acpsl.cut.indices import (
    MODE_PACKED,
    decode_counts,
    encode_counts,
    read_selection,
    selection_mode,
    selection_parts,
)
from acpsl.cut.payload import KIND_FORWARD, PayloadReader, encode_header
from acpsl.errors import ConfigError
from acpsl.kernels import bits as bit_kernels
from acpsl.kernels import launch
from acpsl.kernels import topk as topk_kernels
from acpsl.kernels.scratch import Scratch
from acpsl.kernels.simd import LANES
from acpsl.schemes.base import Scheme
from acpsl.schemes.dense_grad import decode_dense_grad, encode_dense_grad
from acpsl.schemes.perinstance import flatten_batch, raise_non_finite, read_batch_header
from acpsl.schemes.registry import register
from acpsl.schemes.sizes import bound_sparse_bytes, table2_sparse_bytes


@register("l1")
class L1Scheme(Scheme):
    """Send the non-zero values of the smashed data; the client adds an L1 penalty.

    Args:
        lam: the coefficient ``lambda`` of the penalty (larger: sparser, but may hurt accuracy).
    """

    name = "l1"
    wire_id = 7

    def __init__(self, *, lam: float = 1e-4) -> None:
        super().__init__()
        if not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam >= 0):
            raise ConfigError(f"l1: lam must be a finite number >= 0, got {lam!r}")
        self.lam = float(lam)
        self._sent_shape: tuple[int, ...] | None = None
        self._scratch = Scratch()

    def client_loss(self, x: torch.Tensor) -> torch.Tensor:
        """``lambda * sum_i |o_i|`` per sample, averaged over the batch like the task loss.

        Averaging keeps ``lambda`` independent of the batch size; the client adds this term to
        the loss it backpropagates through ``x`` (``x`` must be the graph-connected activations).
        """
        return self.lam * x.abs().sum() / max(1, x.shape[0])

    def compress(
        self, x: torch.Tensor, *, labels: torch.Tensor | None = None, training: bool = True
    ) -> bytes:
        flat = flatten_batch(x, scheme=self.name, check_finite=False).numpy()
        batch, d = flat.shape
        starts = row_groups(batch=batch, d=d, groups=torch.get_num_threads())
        counts = np.empty(batch, dtype=np.int64)
        values = self._scratch.empty("values", batch * d + LANES * len(starts), np.float32)
        totals = np.empty(len(starts) - 1, dtype=np.int64)
        mask = self._scratch.zeros("mask", bit_kernels.mask_words_size(batch * d), np.uint64)
        groups = np.array(starts, dtype=np.int64)
        if not launch(
            topk_kernels.nonzero_rows, flat, groups, counts, values, totals, mask, values=flat.size
        ):
            raise_non_finite(self.name)
        total = int(totals.sum())
        if selection_mode(total=total, batch=batch, d=d) == MODE_PACKED:
            positions = np.empty(total + LANES, dtype=np.int64)
            bit_kernels.positions_of_words(mask, batch * d, positions)
            block = selection_parts(positions[:total], batch=batch, d=d)
        else:
            mask_bytes = bit_kernels.words64_to_stream(mask, (batch * d + 7) // 8)
            block = selection_parts(None, batch=batch, d=d, mask=mask_bytes, total=total)
        payload = b"".join(
            (
                encode_header(scheme_id=self.wire_id, kind=KIND_FORWARD, shape=x.shape),
                encode_counts(counts, d=d),
                *block,
                *(
                    values[g * LANES + starts[g] * d :][: totals[g]].astype("<f4", copy=False).data
                    for g in range(len(starts) - 1)
                ),
            )
        )
        self._sent_shape = tuple(x.shape)
        kept = total / batch
        self._stats = {
            "ratio": 1.0 - kept / d,
            "kept": kept,
            "bytes": float(len(payload)),
            "table2_bytes": table2_sparse_bytes(kept=total, d=d),
            "bound_bytes": bound_sparse_bytes(counts=counts, d=d),
        }
        return payload

    def decompress(self, data: bytes) -> torch.Tensor:
        reader = PayloadReader(data, what="l1 forward payload")
        shape, batch, d = read_batch_header(
            reader, scheme_id=self.wire_id, kind=KIND_FORWARD, limit=self.limit
        )
        counts = decode_counts(reader, batch=batch, d=d)
        selection = read_selection(reader, counts=counts, batch=batch, d=d)
        values = reader.view(selection.total, "<f4")
        reader.finish()
        dense, _ = selection.scatter(values, keep_positions=False)
        return torch.from_numpy(dense.reshape(shape))

    def compress_grad(self, g: torch.Tensor) -> bytes:
        return encode_dense_grad(g, scheme_id=self.wire_id)

    def decompress_grad(self, data: bytes) -> torch.Tensor:
        return decode_dense_grad(
            data, scheme_id=self.wire_id, name=self.name, sent_shape=self._sent_shape
        )


@lru_cache(maxsize=64)
def row_groups(*, batch: int, d: int, groups: int) -> tuple[int, ...]:
    """Split ``batch`` rows of ``d`` values into at most ``groups`` contiguous groups whose
    first bits in a ``[B, d]`` bit mask fall on 64-bit word boundaries (so that threads own
    whole words): the ``G + 1`` first rows, ending with ``batch``."""
    step = 64 // math.gcd(d, 64)  # rows per whole number of words
    units = -(-batch // step)
    count = max(1, min(groups, units))
    cuts = [min(batch, step * ((units * g) // count)) for g in range(count + 1)]
    return tuple(sorted(set(cuts)))
