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

from acpsl.cut.indices import read_selection, selection_mode, selection_parts, selection_size
from acpsl.cut.payload import KIND_FORWARD, KIND_GRAD, PayloadReader, ShapeLimit, encode_header
from acpsl.errors import PayloadError, TrainingError
from acpsl.kernels import bits as bit_kernels
from acpsl.kernels import topk as topk_kernels
from acpsl.kernels.simd import LANES
from acpsl.schemes.base import Scheme
from acpsl.schemes.perinstance import (
    all_finite,
    check_keep,
    flatten_batch,
    raise_non_finite,
    read_batch_header,
    resolve_k,
)
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
    def select(self, flat: np.ndarray, *, k: int, training: bool) -> np.ndarray:
        """The ascending flat positions (int64, ``B k``) of the ``k`` values sent per sample
        of the float32 ``[B, d]`` array ``flat``.

        Raises:
            TrainingError: ``flat`` holds NaN or infinity.
        """

    def compress(
        self, x: torch.Tensor, *, labels: torch.Tensor | None = None, training: bool = True
    ) -> bytes:
        flat = flatten_batch(x, scheme=self.name, check_finite=False).numpy()
        batch, d = flat.shape
        k = resolve_k(k=self.k, keep_ratio=self.keep_ratio, d=d, scheme=self.name)
        positions = self.select(flat, k=k, training=training)
        payload = b"".join(
            (
                encode_header(scheme_id=self.wire_id, kind=KIND_FORWARD, shape=x.shape),
                int(k).to_bytes(4, "little"),
                *selection_parts(positions, batch=batch, d=d),
                np.take(flat.reshape(-1), positions).astype("<f4", copy=False).data,
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
        shape, batch, d = read_batch_header(
            reader, scheme_id=self.wire_id, kind=KIND_FORWARD, limit=self.limit
        )
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
        selection = read_selection(reader, counts=np.full(batch, k), batch=batch, d=d)
        values = reader.view(batch * k, "<f4")
        reader.finish()
        dense, positions = selection.scatter(values, keep_positions=True)
        assert positions is not None
        self._seen = (shape, positions)
        return torch.from_numpy(dense.reshape(shape))

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
        limit = None if self._sent is None else ShapeLimit.exact(self._sent[0])
        shape, _, _ = read_batch_header(reader, scheme_id=self.wire_id, kind=KIND_GRAD, limit=limit)
        if self._sent is None or self._sent[0] != shape:
            sent = None if self._sent is None else self._sent[0]
            raise PayloadError(
                f"{reader.what}: shape {shape} does not match the last uplink (shape {sent})"
            )
        positions = self._sent[1]
        values = reader.view(positions.size, "<f4")
        reader.finish()
        return scatter_values(positions, values, shape=shape)


def scatter_values(
    positions: np.ndarray, values: np.ndarray, *, shape: tuple[int, ...]
) -> torch.Tensor:
    """A zero float32 tensor of ``shape`` with ``values`` at the flat ``positions``."""
    out = np.zeros(math.prod(shape), dtype=np.float32)
    bit_kernels.scatter_positions(positions, values, out)
    return torch.from_numpy(out.reshape(shape))


def topk_positions(flat: np.ndarray, *, k: int, scheme: str = "topk") -> np.ndarray:
    """The ascending flat positions (int64) of each row's ``k`` largest magnitudes of the
    float32 ``[B, d]`` array ``flat``; ties at the ``k``-th magnitude go to the lowest
    indices, so the selection does not depend on how an algorithm orders equal values.

    A compiled radix select (:func:`acpsl.kernels.topk.topk_rows`), no sort of the row.

    Raises:
        TrainingError: ``flat`` holds NaN or infinity.
    """
    batch, _ = flat.shape
    return topk_buffer(flat, k=k, scheme=scheme)[: batch * min(k, flat.shape[1])]


def topk_buffer(flat: np.ndarray, *, k: int, scheme: str) -> np.ndarray:
    """:func:`topk_positions` in a buffer with 16 spare slots at the end (what the kernels
    that rewrite a selection in place need)."""
    batch, d = flat.shape
    flat = np.ascontiguousarray(flat, dtype=np.float32)
    if not all_finite(torch.from_numpy(flat)):
        raise_non_finite(scheme)
    if k >= d:
        return np.arange(batch * d + LANES, dtype=np.int64)
    positions = np.empty(batch * k + LANES, dtype=np.int64)
    topk_kernels.topk_rows(flat, k, positions)
    return positions


def topk_mask(flat: torch.Tensor, *, k: int) -> torch.Tensor:
    """The ``[B, d]`` bool mask of each row's ``k`` largest values by magnitude (finite
    values), ties to the lowest indices (:func:`topk_positions`)."""
    array = flat.detach().to("cpu", torch.float32).contiguous().numpy()
    return torch.from_numpy(positions_mask(topk_positions(array, k=k), shape=array.shape))


def positions_mask(positions: np.ndarray, *, shape: tuple[int, ...]) -> np.ndarray:
    """The bool array of ``shape`` that is ``True`` at the flat ``positions``."""
    mask = np.zeros(math.prod(shape), dtype=bool)
    mask[positions] = True
    return mask.reshape(shape)
