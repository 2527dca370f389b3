"""Top-k sparsification (eq. 3 of the RandTopk paper): each sample keeps its ``k`` values of
largest magnitude; the gradient comes back at the same ``k`` positions only."""

from __future__ import annotations

import numpy as np

from acpsl.schemes.registry import register
from acpsl.schemes.selection import SelectionScheme, topk_positions


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

    def select(self, flat: np.ndarray, *, k: int, training: bool) -> np.ndarray:
        return topk_positions(flat, k=k, scheme=self.name)
