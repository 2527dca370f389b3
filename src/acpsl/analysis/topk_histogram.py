"""How often each cut neuron is among a sample's top-k at inference (RandTopk paper, Fig. 5).

Top-k training tends to select the same few neurons for every input, so part of the cut layer
is never trained; RandTopk spreads the selections. This histogram shows which: the count of
samples for which each of the ``d`` flattened cut values is among the ``k`` largest in
magnitude, with the client model in evaluation mode. The selection is the top-k scheme's own
(:func:`acpsl.schemes.selection.topk_mask`), ties at the ``k``-th magnitude going to the lowest
indices, so the histogram counts exactly what the scheme would send (``torch.topk`` alone
orders equal values arbitrarily, e.g. the ReLU zeros of a sample with fewer than ``k``
non-zero values).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from tqdm import tqdm

from acpsl.errors import ConfigError
from acpsl.schemes.selection import topk_mask


def topk_histogram(
    model_client: nn.Module,
    data: torch.Tensor | Iterable[torch.Tensor | tuple[torch.Tensor, ...] | list[torch.Tensor]],
    *,
    k: int,
    progress: bool = False,
) -> torch.Tensor:
    """Count, per cut neuron, the samples whose top-k (by magnitude) contains it.

    Args:
        model_client: the client part of a split model; run in eval mode without gradients
            (its training flag is restored afterwards).
        data: a batch of inputs, or an iterable of batches (tensors or ``(x, y, ...)`` tuples
            such as a ``DataLoader`` yields).
        k: neurons counted per sample.
        progress: show a progress bar over the batches.

    Returns:
        int64 tensor ``[d]`` of counts (``d`` = values per sample at the cut); it sums to
        ``k`` times the number of samples.

    Raises:
        ConfigError: ``k`` is not in ``1..d``, the data is empty, or batches disagree on ``d``.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"topk_histogram: k must be a positive integer, got {k!r}")
    batches = [data] if isinstance(data, torch.Tensor) else data
    device = next((p.device for p in model_client.parameters()), torch.device("cpu"))
    counts: torch.Tensor | None = None
    was_training = model_client.training
    model_client.eval()
    try:
        with torch.no_grad():
            for batch in tqdm(batches, desc="top-k histogram", disable=not progress):
                x = batch if isinstance(batch, torch.Tensor) else batch[0]
                flat = model_client(x.to(device)).reshape(x.shape[0], -1)
                d = flat.shape[1]
                if counts is None:
                    if k > d:
                        raise ConfigError(f"topk_histogram: k={k} exceeds the {d} cut values")
                    counts = torch.zeros(d, dtype=torch.int64)
                elif counts.numel() != d:
                    raise ConfigError(
                        f"topk_histogram: a batch has {d} cut values, earlier ones {counts.numel()}"
                    )
                mask = topk_mask(flat.to("cpu", torch.float32).contiguous(), k=k)
                counts += mask.sum(dim=0, dtype=torch.int64)
    finally:
        model_client.train(was_training)
    if counts is None:
        raise ConfigError("topk_histogram: the data holds no batch")
    return counts
