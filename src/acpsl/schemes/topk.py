"""Top-k sparsification (eq. 3 of the RandTopk paper): each sample keeps its ``k`` values of
largest magnitude; the gradient comes back at the same ``k`` positions only."""

from __future__ import annotations

import torch

from acpsl.schemes.registry import register
from acpsl.schemes.selection import SelectionScheme, topk_mask


@register("topk")
class TopkScheme(SelectionScheme):
    """Per-instance top-k by magnitude, in training and at inference alike.

    Args:
        k: values kept per sample.
        keep_ratio: fraction of each sample's ``d`` values kept when ``k`` is not given
            (default 0.1).
    """

    name = "topk"
    wire_id = 4

    def select(self, flat: torch.Tensor, *, k: int, training: bool) -> torch.Tensor:
        return topk_mask(flat, k=k)
