"""Matched compression: pick a baseline's parameter so that its payload per sample is as close
as possible to a target (both papers compare schemes at the same compression level).

The target is a number of bytes per sample — typically another scheme's mean payload, measured
from its real encodes with :func:`measure_bytes_per_sample` (e.g. ACP-SL at ``P_base``: the
kept channels' values, the channel mask and the header, all divided by the batch size). The
candidate sizes come from the exact size functions of :mod:`acpsl.schemes.sizes`, which the
tests check byte for byte against real encodes, and :func:`match_params` verifies its answer
with one real encode of a zero batch before returning it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from acpsl.errors import ConfigError
from acpsl.schemes.base import Scheme
from acpsl.schemes.quant import MAX_BITS, MIN_BITS
from acpsl.schemes.registry import create
from acpsl.schemes.sizes import quant_forward_size, sizered_size, topk_forward_size

#: Schemes whose parameter :func:`match_params` can choose, and which parameter it is.
MATCHABLE = {"topk": "k", "randtopk": "k", "sizered": "k", "quant": "bits"}


def forward_size(scheme: str, *, sample_shape: Sequence[int], batch_size: int, value: int) -> int:
    """Exact uplink bytes of ``scheme`` for a batch of ``batch_size`` samples of ``sample_shape``
    when its matched parameter (``k`` or ``bits``) is ``value``."""
    ndim = 1 + len(sample_shape)
    d = math.prod(sample_shape)
    if scheme in ("topk", "randtopk"):
        return topk_forward_size(ndim=ndim, batch=batch_size, d=d, k=value)
    if scheme == "sizered":
        return sizered_size(ndim=ndim, batch=batch_size, k=value)
    if scheme == "quant":
        return quant_forward_size(ndim=ndim, batch=batch_size, d=d, bits=value)
    raise ConfigError(_unmatchable(scheme))


def match_params(
    scheme: str,
    *,
    target_bytes_per_sample: float,
    sample_shape: Sequence[int],
    batch_size: int,
    **fixed: Any,
) -> dict[str, Any]:
    """Parameters of ``scheme`` whose uplink per sample is closest to a target.

    Args:
        scheme: ``topk``, ``randtopk``, ``sizered`` (chooses ``k``) or ``quant`` (chooses
            ``bits``).
        target_bytes_per_sample: bytes per sample to match (header share included).
        sample_shape: shape of one sample of the smashed data, e.g. ``(64, 8, 8)``.
        batch_size: samples per payload (the header is shared by the batch).
        **fixed: other parameters of the scheme, returned unchanged (e.g. ``alpha``).

    Returns:
        ``fixed`` plus the chosen ``k`` or ``bits``; ties go to the smaller value.

    Raises:
        ConfigError: the scheme has no parameter to match (``standard``, ``acp``, ``l1``),
            the target is not a positive number, or a matched key is also in ``fixed``.
    """
    if scheme not in MATCHABLE:
        raise ConfigError(_unmatchable(scheme))
    key = MATCHABLE[scheme]
    if key in fixed or "keep_ratio" in fixed:
        raise ConfigError(f"match_params chooses {key} of {scheme}; do not pass it (or keep_ratio)")
    if not (math.isfinite(target_bytes_per_sample) and target_bytes_per_sample > 0):
        raise ConfigError(f"target_bytes_per_sample must be > 0, got {target_bytes_per_sample!r}")
    if batch_size < 1 or not sample_shape or math.prod(sample_shape) < 1:
        raise ConfigError(
            f"need batch_size >= 1 and a non-empty sample shape, got {batch_size}, "
            f"{tuple(sample_shape)}"
        )
    d = math.prod(sample_shape)
    low, high = (MIN_BITS, MAX_BITS) if key == "bits" else (1, d)

    def per_sample(value: int) -> float:
        return (
            forward_size(scheme, sample_shape=sample_shape, batch_size=batch_size, value=value)
            / batch_size
        )

    best = _closest(per_sample, low=low, high=high, target=target_bytes_per_sample)
    params = {**fixed, key: best}
    _verify(scheme, params, sample_shape=sample_shape, batch_size=batch_size, value=best)
    return params


def measure_bytes_per_sample(
    scheme: Scheme,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]],
    *,
    training: bool = True,
) -> float:
    """Mean uplink bytes per sample of ``scheme`` over real encodes of ``batches``.

    Args:
        scheme: the reference scheme (e.g. ``acpsl.schemes.create("acp")``); its state advances.
        batches: ``(smashed data, labels)`` pairs; labels may be ``None`` for schemes that
            ignore them.
        training: passed to ``compress``.

    Raises:
        ConfigError: ``batches`` is empty.
    """
    total_bytes = 0
    total_samples = 0
    for x, labels in batches:
        total_bytes += len(scheme.compress(x, labels=labels, training=training))
        total_samples += int(x.shape[0])
    if total_samples == 0:
        raise ConfigError("measure_bytes_per_sample needs at least one non-empty batch")
    return total_bytes / total_samples


def _closest(size: Callable[[int], float], *, low: int, high: int, target: float) -> int:
    """The value in ``[low, high]`` whose (non-decreasing) ``size`` is closest to ``target``."""
    lo, hi = low, high
    while lo < hi:  # first value whose size reaches the target
        mid = (lo + hi) // 2
        if size(mid) < target:
            lo = mid + 1
        else:
            hi = mid
    candidates = [v for v in (lo - 1, lo) if low <= v <= high]
    return min(candidates, key=lambda v: (abs(size(v) - target), v))


def _verify(
    scheme: str, params: dict[str, Any], *, sample_shape: Sequence[int], batch_size: int, value: int
) -> None:
    """Encode one zero batch with ``params`` and check the size function's prediction."""
    probe = torch.zeros(batch_size, *sample_shape)
    real = len(create(scheme, **params).compress(probe, training=False))
    predicted = forward_size(scheme, sample_shape=sample_shape, batch_size=batch_size, value=value)
    if real != predicted:  # pragma: no cover - guarded by the tests of the size functions
        raise AssertionError(f"{scheme}: size function says {predicted} bytes, encode gave {real}")


def _unmatchable(scheme: str) -> str:
    return (
        f"cannot match the compression of scheme {scheme!r}: only "
        f"{', '.join(sorted(MATCHABLE))} have a size parameter (L1's size depends on training)"
    )
