"""Common wire format of top-k and RandTopk (eq. 3 of the RandTopk paper).

Uplink body: ``u32 k``, the index block of :mod:`acpsl.cut.indices` (packed
``ceil(log2 d)``-bit indices or a bit mask, whichever is smaller), then the ``B k`` kept values
as float32, sample by sample in ascending index order. Downlink body: the ``B k`` gradient
values at the same positions; the indices are not resent, since both sides remember the
selection (client: from ``compress``; server: from ``decompress``; see the state rule in
:mod:`acpsl.schemes.base`).
"""

from __future__ import annotations

import math
from abc import abstractmethod

import numpy as np
import torch

from acpsl.cut.indices import decode_selection, encode_selection, selection_mode, selection_size
from acpsl.cut.payload import KIND_FORWARD, KIND_GRAD, PayloadReader, encode_header
from acpsl.errors import PayloadError, TrainingError
from acpsl.schemes.base import Scheme
from acpsl.schemes.perinstance import check_keep, flatten_batch, read_batch_header, resolve_k
from acpsl.schemes.sizes import bound_sparse_bytes_fixed, table2_sparse_bytes


class SelectionScheme(Scheme):
    """A per-instance scheme that sends ``k`` selected values (and their indices) per sample.

    Subclasses implement :meth:`select`; everything on the wire is shared. Both sides keep the
    selection as ascending flat positions into the ``[B, d]`` batch, which index the values
    directly (cheaper than boolean masks).

    Args:
        k: values kept per sample.
        keep_ratio: fraction of each sample's ``d`` values kept (``round(keep_ratio * d)``,
            at least 1) when ``k`` is not given; 0.1 when neither is given.
    """

    def __init__(self, *, k: int | None = None, keep_ratio: float | None = None) -> None:
        super().__init__()
        check_keep(k=k, keep_ratio=keep_ratio, scheme=self.name)
        self.k = k
        self.keep_ratio = keep_ratio
        # Client side (from compress) and server side (from decompress): shape and positions.
        self._sent: tuple[tuple[int, ...], np.ndarray] | None = None
        self._seen: tuple[tuple[int, ...], np.ndarray] | None = None

    @abstractmethod
    def select(self, flat: torch.Tensor, *, k: int, training: bool) -> torch.Tensor:
        """The ``[B, d]`` bool mask of the ``k`` values sent per sample of ``flat``."""

    def select_positions(
        self, flat: torch.Tensor, *, k: int, training: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """The :meth:`select` mask as a NumPy ``[B, d]`` array and its ascending flat
        positions; a subclass that knows the positions anyway may override it to skip the
        scan of the mask."""
        mask = self.select(flat, k=k, training=training).numpy()
        return mask, np.flatnonzero(mask)

    def compress(
        self, x: torch.Tensor, *, labels: torch.Tensor | None = None, training: bool = True
    ) -> bytes:
        flat = flatten_batch(x, scheme=self.name)
        batch, d = flat.shape
        k = resolve_k(k=self.k, keep_ratio=self.keep_ratio, d=d, scheme=self.name)
        mask, positions = self.select_positions(flat, k=k, training=training)
        payload = b"".join(
            (
                encode_header(scheme_id=self.wire_id, kind=KIND_FORWARD, shape=x.shape),
                int(k).to_bytes(4, "little"),
                encode_selection(positions, batch=batch, d=d, mask=mask),
                flat.numpy().reshape(-1)[positions].astype("<f4", copy=False).data,
            )
        )
        self._sent = (tuple(x.shape), positions)
        self._stats = {
            "ratio": 1.0 - k / d,
            "kept": float(k),
            "bytes": float(len(payload)),
            "table2_bytes": table2_sparse_bytes(kept=batch * k, d=d),
            "bound_bytes": bound_sparse_bytes_fixed(batch=batch, d=d, k=k),
            "index_mode": float(selection_mode(total=batch * k, batch=batch, d=d)),
        }
        return payload

    def decompress(self, data: bytes) -> torch.Tensor:
        reader = PayloadReader(data, what=f"{self.name} forward payload")
        shape, batch, d = read_batch_header(reader, scheme_id=self.wire_id, kind=KIND_FORWARD)
        k = reader.u32()
        if not 1 <= k <= d:
            raise PayloadError(f"{reader.what}: k={k} is not in 1..{d} (values per sample)")
        # The exact body length first, before anything sized from the header is allocated.
        expected = selection_size(total=batch * k, batch=batch, d=d) + 4 * batch * k
        if reader.remaining != expected:
            raise PayloadError(
                f"{reader.what}: body has {reader.remaining} bytes after k, shape {shape} with "
                f"k={k} needs {expected}"
            )
        positions = decode_selection(reader, counts=np.full(batch, k), batch=batch, d=d)
        values = reader.array(batch * k, "<f4")  # aligned copy: scatter from it is fast
        reader.finish()
        self._seen = (shape, positions)
        return scatter_values(positions, values, shape=shape)

    def compress_grad(self, g: torch.Tensor) -> bytes:
        if self._seen is None:
            raise TrainingError(f"{self.name}: compress_grad needs a decompress first")
        shape, positions = self._seen
        if tuple(g.shape) != shape:
            raise TrainingError(
                f"{self.name}: gradient shape {tuple(g.shape)} does not match the last "
                f"uplink {shape}"
            )
        flat = g.detach().to("cpu", torch.float32).contiguous().numpy().reshape(-1)
        header = encode_header(scheme_id=self.wire_id, kind=KIND_GRAD, shape=shape)
        return b"".join((header, flat[positions].astype("<f4", copy=False).data))

    def decompress_grad(self, data: bytes) -> torch.Tensor:
        reader = PayloadReader(data, what=f"{self.name} gradient payload")
        shape, _, _ = read_batch_header(reader, scheme_id=self.wire_id, kind=KIND_GRAD)
        if self._sent is None or self._sent[0] != shape:
            sent = None if self._sent is None else self._sent[0]
            raise PayloadError(
                f"{reader.what}: shape {shape} does not match the last uplink (shape {sent})"
            )
        positions = self._sent[1]
        values = reader.array(positions.size, "<f4")
        reader.finish()
        return scatter_values(positions, values, shape=shape)


def scatter_values(
    positions: np.ndarray, values: np.ndarray, *, shape: tuple[int, ...]
) -> torch.Tensor:
    """A zero float32 tensor of ``shape`` with ``values`` at the flat ``positions``."""
    out = np.zeros(math.prod(shape), dtype=np.float32)
    out[positions] = values
    return torch.from_numpy(out.reshape(shape))


def topk_mask(flat: torch.Tensor, *, k: int) -> torch.Tensor:
    """The ``[B, d]`` mask of each row's ``k`` largest values by magnitude (finite values).

    Ties at the ``k``-th magnitude go to the lowest indices, so the selection does not depend
    on how a selection algorithm orders equal values.
    """
    return torch.from_numpy(topk_mask_np(flat.detach().cpu().numpy(), k=k))


def topk_mask_np(flat: np.ndarray, *, k: int) -> np.ndarray:
    """:func:`topk_mask` on a ``[B, d]`` NumPy array of floats (finite values).

    Each row's ``k``-th largest magnitude is found with one row-wise ``np.sort`` (a vectorized
    sort, several times faster than ``torch.topk`` on the CPU).
    """
    batch, d = flat.shape
    if k >= d:
        return np.ones((batch, d), dtype=bool)
    keys = np.abs(flat)
    kth = np.sort(keys, axis=1)[:, d - k : d - k + 1]
    mask = keys >= kth
    # Every row has at least k values >= its k-th largest; exactly k in all rows unless the
    # total says otherwise (a flat count is much cheaper than a per-row one).
    if np.count_nonzero(mask) == batch * k:
        return mask
    # Some rows tie at the k-th magnitude: keep the strictly larger values, then the tied
    # ones with the lowest indices.
    ties = keys == kth
    mask &= ~ties
    need = k - np.count_nonzero(mask, axis=1)
    mask |= ties & (np.cumsum(ties, axis=1) <= need[:, None])
    return mask
