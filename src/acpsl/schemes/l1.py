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

import numpy as np
import torch

from acpsl.cut.indices import decode_counts, decode_selection, encode_counts, encode_selection
from acpsl.cut.payload import KIND_FORWARD, PayloadReader, encode_header
from acpsl.errors import ConfigError
from acpsl.schemes.base import Scheme
from acpsl.schemes.dense_grad import decode_dense_grad, encode_dense_grad
from acpsl.schemes.perinstance import flatten_batch, read_batch_header
from acpsl.schemes.registry import register
from acpsl.schemes.selection import scatter_values
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

    def client_loss(self, x: torch.Tensor) -> torch.Tensor:
        """``lambda * sum_i |o_i|`` per sample, averaged over the batch like the task loss.

        Averaging keeps ``lambda`` independent of the batch size; the client adds this term to
        the loss it backpropagates through ``x`` (``x`` must be the graph-connected activations).
        """
        return self.lam * x.abs().sum() / max(1, x.shape[0])

    def compress(
        self, x: torch.Tensor, *, labels: torch.Tensor | None = None, training: bool = True
    ) -> bytes:
        flat = flatten_batch(x, scheme=self.name).numpy()
        batch, d = flat.shape
        mask = flat != 0
        positions = np.flatnonzero(mask)
        # Per-sample counts from where each sample's positions end (cheaper than counting the
        # mask row by row).
        ends = np.searchsorted(positions, np.arange(1, batch + 1, dtype=np.int64) * d)
        counts = np.diff(ends, prepend=0)
        payload = b"".join(
            (
                encode_header(scheme_id=self.wire_id, kind=KIND_FORWARD, shape=x.shape),
                encode_counts(counts, d=d),
                encode_selection(positions, batch=batch, d=d, mask=mask),
                flat.reshape(-1)[positions].astype("<f4", copy=False).data,
            )
        )
        self._sent_shape = tuple(x.shape)
        kept = float(counts.mean())
        self._stats = {
            "ratio": 1.0 - kept / d,
            "kept": kept,
            "bytes": float(len(payload)),
            "table2_bytes": table2_sparse_bytes(kept=int(counts.sum()), d=d),
            "bound_bytes": bound_sparse_bytes(counts=counts.tolist(), d=d),
        }
        return payload

    def decompress(self, data: bytes) -> torch.Tensor:
        reader = PayloadReader(data, what="l1 forward payload")
        shape, batch, d = read_batch_header(reader, scheme_id=self.wire_id, kind=KIND_FORWARD)
        counts = decode_counts(reader, batch=batch, d=d)
        positions = decode_selection(reader, counts=counts, batch=batch, d=d)
        values = reader.array(int(counts.sum()), "<f4")  # aligned: fast scatter
        reader.finish()
        return scatter_values(positions, values, shape=shape)

    def compress_grad(self, g: torch.Tensor) -> bytes:
        return encode_dense_grad(g, scheme_id=self.wire_id)

    def decompress_grad(self, data: bytes) -> torch.Tensor:
        return decode_dense_grad(
            data, scheme_id=self.wire_id, name=self.name, sent_shape=self._sent_shape
        )
