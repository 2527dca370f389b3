"""Uniform ``b``-bit quantization of the smashed data (eq. 2 of the RandTopk paper).

Each sample gets its own range ``[min, max]`` (sent as two float32) split into ``2^b`` equal
bins; a value is sent as the index of its bin,
``c = floor((o - min) / ((max - min) / 2^b))`` clipped to ``2^b - 1``, and rebuilt at the bin
centre ``min + (c + 1/2) (max - min) / 2^b``, so the error is at most half a bin. Only the
forward pass is quantized (the paper's choice): the gradient w.r.t. the rebuilt values goes back
in full float32 and the client applies it unchanged (straight-through).

Uplink body: ``u8 b``, ``B`` pairs of float32 ``(min, max)``, then the ``B d`` codes bit-packed
at ``b`` bits (:mod:`acpsl.cut.bitpack`). A sample whose values are all equal has
``max = min``: its codes are 0 and it is rebuilt exactly as ``min``.
"""

from __future__ import annotations

import numpy as np
import torch

from acpsl.cut.bitpack import packed_buffer, packed_size, unpack_uint
from acpsl.cut.payload import KIND_FORWARD, PayloadReader, encode_header
from acpsl.errors import ConfigError, PayloadError
from acpsl.kernels import launch
from acpsl.kernels import quant as quant_kernels
from acpsl.kernels.scratch import Scratch
from acpsl.schemes.base import Scheme
from acpsl.schemes.dense_grad import decode_dense_grad, encode_dense_grad
from acpsl.schemes.perinstance import flatten_batch, raise_non_finite, read_batch_header
from acpsl.schemes.registry import register
from acpsl.schemes.sizes import table2_quant_bytes

MIN_BITS = 1
MAX_BITS = 16


def quantize(
    flat: torch.Tensor, *, bits: int, scratch: Scratch | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eq. 2 (Comp) of the RandTopk paper per row of ``flat`` ``[B, d]`` (float32, CPU).

    ``scratch``: where to keep the codes between calls (then valid until the next call).

    Returns:
        ``(codes, lo, hi)``: integer codes ``[B, d]`` in ``[0, 2^b)`` (uint8 for ``b <= 8``,
        uint16 otherwise) and the per-row float32 minimum and maximum ``[B]``.

    Raises:
        TrainingError: a value is NaN or infinite.
    """
    arr = np.ascontiguousarray(flat.numpy(), dtype=np.float32)
    batch = arr.shape[0]
    lo = np.empty(batch, dtype=np.float32)
    hi = np.empty(batch, dtype=np.float32)
    dtype = np.uint8 if bits <= 8 else np.uint16
    if scratch is None:
        codes = np.empty(arr.shape, dtype=dtype)
    else:
        codes = scratch.empty("codes", arr.size, dtype).reshape(arr.shape)
    lo_bits, hi_bits = lo.view(np.int32), hi.view(np.int32)
    if not launch(
        quant_kernels.encode_rows, arr, bits, lo, hi, lo_bits, hi_bits, codes, values=arr.size
    ):
        raise_non_finite("quant")
    return codes, lo, hi


def dequantize(codes: np.ndarray, *, lo: np.ndarray, hi: np.ndarray, bits: int) -> torch.Tensor:
    """Eq. 2 (Decomp) of the RandTopk paper: bin centres ``min + (c + 1/2) (max - min) / 2^b``.

    Args:
        codes: ``[B, d]`` integer codes (may be a read-only view of the payload).
        lo: per-row float32 minimum ``[B]``.
        hi: per-row float32 maximum ``[B]``.
        bits: ``b``.
    """
    out = np.empty(codes.shape, dtype=np.float32)
    launch(quant_kernels.decode_rows, codes, lo, hi, bits, out, values=out.size)
    return torch.from_numpy(out)


@register("quant")
class QuantizationScheme(Scheme):
    """Per-instance uniform ``b``-bit quantization (forward only).

    Args:
        bits: bits per value ``b``, 1 to 16.
    """

    name = "quant"
    wire_id = 6

    def __init__(self, *, bits: int = 8) -> None:
        super().__init__()
        if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
            raise ConfigError(
                f"quant: bits must be an integer in {MIN_BITS}..{MAX_BITS}, got {bits!r}"
            )
        self.bits = bits
        self._sent_shape: tuple[int, ...] | None = None
        self._scratch = Scratch()

    def compress(
        self, x: torch.Tensor, *, labels: torch.Tensor | None = None, training: bool = True
    ) -> bytes:
        flat = flatten_batch(x, scheme=self.name, check_finite=False)
        batch, d = flat.shape
        codes, lo, hi = quantize(flat, bits=self.bits, scratch=self._scratch)
        payload = b"".join(
            (
                encode_header(scheme_id=self.wire_id, kind=KIND_FORWARD, shape=x.shape),
                bytes([self.bits]),
                np.stack((lo, hi), axis=1).astype("<f4").tobytes(),
                packed_buffer(codes, width=self.bits).data,
            )
        )
        self._sent_shape = tuple(x.shape)
        table2 = table2_quant_bytes(numel=batch * d, bits=self.bits)
        self._stats = {
            "ratio": 0.0,
            "kept": float(d),
            "bits": float(self.bits),
            "bytes": float(len(payload)),
            "table2_bytes": table2,
            "bound_bytes": table2,
        }
        return payload

    def decompress(self, data: bytes) -> torch.Tensor:
        reader = PayloadReader(data, what="quant forward payload")
        shape, batch, d = read_batch_header(
            reader, scheme_id=self.wire_id, kind=KIND_FORWARD, limit=self.limit
        )
        bits = reader.u8()
        if not MIN_BITS <= bits <= MAX_BITS:
            raise PayloadError(
                f"{reader.what}: {bits} bits per code is outside {MIN_BITS}..{MAX_BITS}"
            )
        ranges = reader.array(2 * batch, "<f4").astype(np.float32).reshape(batch, 2)
        lo, hi = np.ascontiguousarray(ranges[:, 0]), np.ascontiguousarray(ranges[:, 1])
        if not np.isfinite(ranges).all() or bool((hi < lo).any()):
            raise PayloadError(f"{reader.what}: a per-sample range is not finite or has max < min")
        raw = reader.take(packed_size(count=batch * d, width=bits))
        reader.finish()
        dtype = np.uint8 if bits <= 8 else np.uint16
        codes = unpack_uint(raw, count=batch * d, width=bits, dtype=dtype).reshape(batch, d)
        return dequantize(codes, lo=lo, hi=hi, bits=bits).reshape(shape)

    def compress_grad(self, g: torch.Tensor) -> bytes:
        return encode_dense_grad(g, scheme_id=self.wire_id)

    def decompress_grad(self, data: bytes) -> torch.Tensor:
        return decode_dense_grad(
            data, scheme_id=self.wire_id, name=self.name, sent_shape=self._sent_shape
        )
