"""Standard split learning: the smashed data and its gradient cross the cut as raw float32."""

from __future__ import annotations

import math

import torch

from acpsl.cut.payload import (
    KIND_FORWARD,
    KIND_GRAD,
    PayloadReader,
    ShapeLimit,
    decode_header,
    encode_header,
    float32_array,
)
from acpsl.schemes.base import Scheme
from acpsl.schemes.registry import register


def encode_dense(x: torch.Tensor, *, scheme_id: int, kind: int) -> bytes:
    """Header + every value of ``x`` as little-endian float32."""
    # join copies the array's buffer straight into the payload: one copy of the values.
    return b"".join(
        (encode_header(scheme_id=scheme_id, kind=kind, shape=x.shape), float32_array(x).data)
    )


def decode_dense(
    data: bytes, *, scheme_id: int, kind: int, what: str, limit: ShapeLimit | None = None
) -> torch.Tensor:
    """Inverse of :func:`encode_dense`, validating the length exactly (and the shape against
    ``limit``, if given, before reading the values)."""
    reader = PayloadReader(data, what=what)
    shape = decode_header(reader, scheme_id=scheme_id, kind=kind, limit=limit)
    values = reader.float32(math.prod(shape))
    reader.finish()
    return values.reshape(shape)


@register("standard")
class StandardScheme(Scheme):
    """No compression: ``d`` float32 values per sample in each direction (plus the header)."""

    name = "standard"
    wire_id = 1

    def compress(
        self, x: torch.Tensor, *, labels: torch.Tensor | None = None, training: bool = True
    ) -> bytes:
        data = encode_dense(x, scheme_id=self.wire_id, kind=KIND_FORWARD)
        per_sample = x[0].numel() if x.dim() else 1
        self._stats = {"ratio": 0.0, "kept": float(per_sample), "table2_bytes": 4.0 * x.numel()}
        return data

    def decompress(self, data: bytes) -> torch.Tensor:
        return decode_dense(
            data,
            scheme_id=self.wire_id,
            kind=KIND_FORWARD,
            what="standard forward payload",
            limit=self.limit,
        )

    def compress_grad(self, g: torch.Tensor) -> bytes:
        return encode_dense(g, scheme_id=self.wire_id, kind=KIND_GRAD)

    def decompress_grad(self, data: bytes) -> torch.Tensor:
        return decode_dense(
            data, scheme_id=self.wire_id, kind=KIND_GRAD, what="standard gradient payload"
        )
