"""Cut-layer size reduction (eq. 1 of the RandTopk paper): each sample sends its first ``k``
flattened values; the rest are rebuilt as zeros. The gradient goes back the same way (the
last ``d - k`` entries are masked, so their gradient means nothing to the client)."""

from __future__ import annotations

import numpy as np
import torch

from acpsl.cut.payload import (
    KIND_FORWARD,
    KIND_GRAD,
    PayloadReader,
    ShapeLimit,
    encode_header,
)
from acpsl.errors import PayloadError, TrainingError
from acpsl.schemes.base import Scheme
from acpsl.schemes.perinstance import (
    check_keep,
    flatten_batch,
    read_batch_header,
    resolve_k,
)
from acpsl.schemes.registry import register
from acpsl.schemes.sizes import FLOAT_BYTES, table2_sizered_bytes


def _encode(
    flat: torch.Tensor, *, k: int, shape: tuple[int, ...], wire_id: int, kind: int
) -> bytes:
    d = flat.shape[1]
    return b"".join(
        (
            encode_header(scheme_id=wire_id, kind=kind, shape=shape),
            int(k).to_bytes(4, "little"),
            int(d).to_bytes(4, "little"),
            np.ascontiguousarray(flat.numpy()[:, :k]).astype("<f4", copy=False).data,
        )
    )


def _decode(
    data: bytes, *, wire_id: int, kind: int, what: str, limit: ShapeLimit | None
) -> tuple[torch.Tensor, int]:
    reader = PayloadReader(data, what=what)
    shape, batch, d = read_batch_header(reader, scheme_id=wire_id, kind=kind, limit=limit)
    k = reader.u32()
    # d is repeated in the body so that a corrupted shape cannot pass as a huge valid tensor.
    # k = 0 is never written (an encoder keeps at least one value) and would let a tiny
    # payload ask for a huge all-zero tensor.
    if reader.u32() != d or not 1 <= k <= d:
        raise PayloadError(f"{what}: body does not match the declared shape {shape}")
    if reader.remaining != 4 * batch * k:
        raise PayloadError(
            f"{what}: body has {reader.remaining} bytes of values, shape {shape} with k={k} "
            f"needs {4 * batch * k}"
        )
    values = reader.view(batch * k, "<f4").reshape(batch, k)
    reader.finish()
    out = np.zeros((batch, d), dtype=np.float32)
    out[:, :k] = values  # copied straight from the payload
    return torch.from_numpy(out).reshape(shape), k


@register("sizered")
class SizeReductionScheme(Scheme):
    """Keep the first ``k`` values of each sample, in both directions.

    Args:
        k: values kept per sample.
        keep_ratio: fraction of each sample's ``d`` values kept when ``k`` is not given
            (default 0.1).
    """

    name = "sizered"
    wire_id = 5

    def __init__(self, *, k: int | None = None, keep_ratio: float | None = None) -> None:
        super().__init__()
        check_keep(k=k, keep_ratio=keep_ratio, scheme=self.name)
        self.k = k
        self.keep_ratio = keep_ratio
        self._sent_shape: tuple[int, ...] | None = None
        self._seen_k: int | None = None

    def compress(
        self, x: torch.Tensor, *, labels: torch.Tensor | None = None, training: bool = True
    ) -> bytes:
        flat = flatten_batch(x, scheme=self.name)
        batch, d = flat.shape
        k = resolve_k(k=self.k, keep_ratio=self.keep_ratio, d=d, scheme=self.name)
        payload = _encode(flat, k=k, shape=tuple(x.shape), wire_id=self.wire_id, kind=KIND_FORWARD)
        self._sent_shape = tuple(x.shape)
        self._stats = {
            "ratio": 1.0 - k / d,
            "kept": float(k),
            "bytes": float(len(payload)),
            "table2_bytes": table2_sizered_bytes(kept=batch * k),
            "bound_bytes": float(FLOAT_BYTES * batch * k),
        }
        return payload

    def decompress(self, data: bytes) -> torch.Tensor:
        out, self._seen_k = _decode(
            data,
            wire_id=self.wire_id,
            kind=KIND_FORWARD,
            what="sizered forward payload",
            limit=self.limit,
        )
        return out

    def compress_grad(self, g: torch.Tensor) -> bytes:
        if self._seen_k is None:
            raise TrainingError("sizered: compress_grad needs a decompress first")
        flat = g.detach().to("cpu", torch.float32).reshape(g.shape[0], -1)
        return _encode(
            flat, k=self._seen_k, shape=tuple(g.shape), wire_id=self.wire_id, kind=KIND_GRAD
        )

    def decompress_grad(self, data: bytes) -> torch.Tensor:
        sent = None if self._sent_shape is None else ShapeLimit.exact(self._sent_shape)
        out, _ = _decode(
            data, wire_id=self.wire_id, kind=KIND_GRAD, what="sizered gradient payload", limit=sent
        )
        if self._sent_shape is not None and tuple(out.shape) != self._sent_shape:
            raise PayloadError(
                f"sizered gradient payload: shape {tuple(out.shape)} does not match the last "
                f"uplink {self._sent_shape}"
            )
        return out
