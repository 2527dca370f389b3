"""Helpers shared by the per-instance baselines (RandTopk paper, section 3).

Per-instance schemes see each sample's smashed data as one flattened vector of ``d`` values:
a batch ``[B, ...]`` becomes ``[B, d]`` and is rebuilt to ``[B, ...]`` after decoding.
"""

from __future__ import annotations

import math

import torch

from acpsl.cut.payload import PayloadReader, ShapeLimit, decode_header
from acpsl.errors import ConfigError, PayloadError, TrainingError


def flatten_batch(x: torch.Tensor, *, scheme: str, check_finite: bool = True) -> torch.Tensor:
    """``x`` as a contiguous float32 CPU tensor ``[B, d]``, checked to be finite.

    Args:
        x: the batch.
        scheme: the scheme's name, for messages.
        check_finite: ``False`` for a caller that checks finiteness itself from a pass it makes
            anyway (quantization's min/max, top-k's sort); it must then call
            :func:`raise_non_finite` on NaN or infinity.

    Raises:
        ConfigError: ``x`` is not a batch of at least one non-empty sample.
        TrainingError: ``x`` holds NaN or infinity (a diverged client model).
    """
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"{scheme}: expected a tensor, got {type(x).__name__}")
    if x.dim() < 2 or x.numel() < 1:
        raise ConfigError(
            f"{scheme}: expected a batch [B, ...] of at least one non-empty sample, "
            f"got shape {tuple(x.shape)}"
        )
    flat = x.detach().to("cpu", torch.float32).reshape(x.shape[0], -1).contiguous()
    if check_finite and not all_finite(flat):
        raise_non_finite(scheme)
    return flat


def all_finite(t: torch.Tensor) -> bool:
    """Whether every value of ``t`` is finite.

    One cheap reduction first: a finite sum means every value is finite; only an overflowing
    or non-finite sum (finite values such as all 3e38 can overflow) needs the elementwise test.
    """
    return math.isfinite(float(t.sum())) or bool(torch.isfinite(t).all())


def raise_non_finite(scheme: str) -> None:
    """Raise the :class:`TrainingError` of smashed data holding NaN or infinity."""
    raise TrainingError(
        f"{scheme}: the smashed data holds NaN or infinite values; lower the learning "
        "rate or check the client model"
    )


def check_keep(*, k: int | None, keep_ratio: float | None, scheme: str) -> None:
    """Validate a ``k`` / ``keep_ratio`` pair (exactly one may be given).

    Raises:
        ConfigError: both given, ``k < 1``, or ``keep_ratio`` outside ``(0, 1]``.
    """
    if k is not None and keep_ratio is not None:
        raise ConfigError(f"{scheme}: give either k or keep_ratio, not both")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise ConfigError(f"{scheme}: k must be a positive integer, got {k!r}")
    if keep_ratio is not None and not (
        isinstance(keep_ratio, (int, float)) and math.isfinite(keep_ratio) and 0 < keep_ratio <= 1
    ):
        raise ConfigError(f"{scheme}: keep_ratio must be in (0, 1], got {keep_ratio!r}")


def resolve_k(*, k: int | None, keep_ratio: float | None, d: int, scheme: str) -> int:
    """Values kept per sample: ``k``, or ``round(keep_ratio * d)`` (at least 1).

    Raises:
        ConfigError: ``k`` exceeds the ``d`` values of a sample.
    """
    if k is None:
        ratio = 0.1 if keep_ratio is None else keep_ratio
        return max(1, min(d, round(ratio * d)))
    if k > d:
        raise ConfigError(
            f"{scheme}: k={k} exceeds the {d} values per sample of this cut; choose k <= {d} "
            "or a keep_ratio"
        )
    return k


def read_batch_header(
    reader: PayloadReader, *, scheme_id: int, kind: int, limit: ShapeLimit | None = None
) -> tuple[tuple[int, ...], int, int]:
    """Read a header and split its shape into ``(shape, B, d)`` for a per-instance payload.

    Raises:
        PayloadError: the shape is not a batch of at least one non-empty sample, or is outside
            ``limit`` (see :func:`acpsl.cut.payload.decode_header`).
    """
    shape = decode_header(reader, scheme_id=scheme_id, kind=kind, limit=limit)
    if len(shape) < 2 or shape[0] < 1 or math.prod(shape[1:]) < 1:
        raise PayloadError(f"{reader.what}: shape {shape} is not a batch of non-empty samples")
    return shape, shape[0], math.prod(shape[1:])
