"""Full float32 downlink shared by the schemes that compress only the uplink (quant, L1)."""

from __future__ import annotations

import torch

from acpsl.cut.payload import KIND_GRAD, ShapeLimit
from acpsl.errors import PayloadError
from acpsl.schemes.standard import decode_dense, encode_dense


def encode_dense_grad(g: torch.Tensor, *, scheme_id: int) -> bytes:
    """The gradient as header + float32 values (straight-through, uncompressed)."""
    return encode_dense(g.detach().to("cpu", torch.float32), scheme_id=scheme_id, kind=KIND_GRAD)


def decode_dense_grad(
    data: bytes, *, scheme_id: int, name: str, sent_shape: tuple[int, ...] | None
) -> torch.Tensor:
    """Inverse of :func:`encode_dense_grad`; checks the shape against the last uplink if any,
    before reading the values."""
    what = f"{name} gradient payload"
    limit = None if sent_shape is None else ShapeLimit.exact(sent_shape)
    out = decode_dense(data, scheme_id=scheme_id, kind=KIND_GRAD, what=what, limit=limit)
    if sent_shape is not None and tuple(out.shape) != sent_shape:
        raise PayloadError(
            f"{what}: shape {tuple(out.shape)} does not match the last uplink {sent_shape}"
        )
    return out
