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

from acpsl.cut.bitpack import pack_uint, packed_size, unpack_uint
from acpsl.cut.payload import KIND_FORWARD, PayloadReader, encode_header
from acpsl.errors import ConfigError, PayloadError
from acpsl.schemes.base import Scheme
from acpsl.schemes.dense_grad import decode_dense_grad, encode_dense_grad
from acpsl.schemes.perinstance import flatten_batch, raise_non_finite, read_batch_header
from acpsl.schemes.registry import register
from acpsl.schemes.sizes import table2_quant_bytes

MIN_BITS = 1
MAX_BITS = 16


def quantize(flat: torch.Tensor, *, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eq. 2 (Comp) of the RandTopk paper per row of ``flat`` ``[B, d]`` (finite values).

    Returns:
        ``(codes, lo, hi)``: integer codes ``[B, d]`` in ``[0, 2^b)`` (uint8 for ``b <= 8``,
        uint16 otherwise) and the per-row float32 minimum and maximum ``[B]``.

    Raises:
        TrainingError: a value is NaN or infinite (seen in the per-row minimum or maximum).
    """
    arr = flat.numpy()
    lo, hi = arr.min(axis=1), arr.max(axis=1)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):  # NaN propagates to min and max
        raise_non_finite("quant")
    # NumPy, single-threaded, in place: each multi-threaded torch op can stall for a scheduler
    # time slice on a loaded machine, and this scheme makes several passes over the data.
    # (The values are the same IEEE float32 operations either way.)
    if _overflows(lo, hi):
        # The range overflows float32 (values near +-3.4e38): bin in float64 instead.
        work = arr.astype(np.float64)
    else:
        work = np.empty_like(arr)
    lo_w = lo.astype(work.dtype)[:, None]
    step = (hi.astype(work.dtype)[:, None] - lo_w) / 2**bits
    step = np.where(step > 0, step, np.ones_like(step))
    # (o - min) / step >= 0 (o >= min, and float subtraction is monotone), so the integer
    # cast's truncation is eq. 2's floor; only the maximum (exactly 2^b) needs clipping.
    np.subtract(arr if work.dtype == arr.dtype else work, lo_w, out=work)
    np.divide(work, step, out=work)
    np.minimum(work, 2**bits - 1, out=work)
    return work.astype(np.uint8 if bits <= 8 else np.uint16), lo, hi


def dequantize(codes: np.ndarray, *, lo: np.ndarray, hi: np.ndarray, bits: int) -> torch.Tensor:
    """Eq. 2 (Decomp) of the RandTopk paper: bin centres ``min + (c + 1/2) (max - min) / 2^b``.

    Args:
        codes: ``[B, d]`` integer codes (may be a read-only view of the payload).
        lo: per-row float32 minimum ``[B]``.
        hi: per-row float32 maximum ``[B]``.
        bits: ``b``.
    """
    wide = _overflows(lo, hi)
    rebuilt = codes.astype(np.float64 if wide else np.float32)
    lo_w = lo.astype(rebuilt.dtype)[:, None]
    step = (hi.astype(rebuilt.dtype)[:, None] - lo_w) / 2**bits
    # min + c step + step / 2: two passes over the codes instead of four
    np.multiply(rebuilt, step, out=rebuilt)
    np.add(rebuilt, lo_w + step / 2, out=rebuilt)
    return torch.from_numpy(rebuilt.astype(np.float32, copy=False))


def _overflows(lo: np.ndarray, hi: np.ndarray) -> bool:
    """Whether some ``max - min`` is not representable in float32."""
    span = hi.astype(np.float64) - lo.astype(np.float64)
    return bool((span > np.finfo(np.float32).max).any())


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

    def compress(
        self, x: torch.Tensor, *, labels: torch.Tensor | None = None, training: bool = True
    ) -> bytes:
        flat = flatten_batch(x, scheme=self.name, check_finite=False)
        batch, d = flat.shape
        codes, lo, hi = quantize(flat, bits=self.bits)  # lo, hi are NaN/inf iff some value is
        payload = b"".join(
            (
                encode_header(scheme_id=self.wire_id, kind=KIND_FORWARD, shape=x.shape),
                bytes([self.bits]),
                np.stack((lo, hi), axis=1).astype("<f4").tobytes(),
                pack_uint(codes, width=self.bits),
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
        shape, batch, d = read_batch_header(reader, scheme_id=self.wire_id, kind=KIND_FORWARD)
        bits = reader.u8()
        if not MIN_BITS <= bits <= MAX_BITS:
            raise PayloadError(
                f"{reader.what}: {bits} bits per code is outside {MIN_BITS}..{MAX_BITS}"
            )
        ranges = reader.array(2 * batch, "<f4").astype(np.float32).reshape(batch, 2)
        lo, hi = ranges[:, 0], ranges[:, 1]
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
