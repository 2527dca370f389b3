"""The RandTopk paper's Fig. 5 analysis: how often each cut neuron is top-k at inference."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from acpsl import schemes
from acpsl.analysis import topk_histogram
from acpsl.errors import ConfigError


def naive_histogram(features: torch.Tensor, k: int) -> torch.Tensor:
    counts = torch.zeros(features[0].numel(), dtype=torch.int64)
    for sample in features.reshape(features.shape[0], -1):
        order = sorted(range(sample.numel()), key=lambda i: -abs(float(sample[i])))
        for i in order[:k]:
            counts[i] += 1
    return counts


def test_counts_match_naive_loop_over_batches_and_tuples() -> None:
    gen = torch.Generator().manual_seed(0)
    client = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU())
    client.train()
    data = [torch.randn(5, 1, 4, 4, generator=gen) for _ in range(3)]
    counts = topk_histogram(client, [(x, torch.zeros(5)) for x in data], k=7)
    assert client.training  # mode restored
    client.eval()
    with torch.no_grad():
        features = torch.cat([client(x) for x in data])
    assert torch.equal(counts, naive_histogram(features, 7))
    assert int(counts.sum()) == 7 * 15
    assert torch.equal(topk_histogram(client, torch.cat(data), k=7), counts)


def test_bad_arguments() -> None:
    client = nn.Flatten()
    x = torch.randn(2, 3, 2)
    with pytest.raises(ConfigError, match="exceeds"):
        topk_histogram(client, x, k=7)
    with pytest.raises(ConfigError, match="positive"):
        topk_histogram(client, x, k=0)
    with pytest.raises(ConfigError, match="no batch"):
        topk_histogram(client, [], k=1)
    with pytest.raises(ConfigError, match="earlier"):
        topk_histogram(client, [x, torch.randn(2, 5)], k=1)


def test_ties_go_to_the_lowest_indices_like_the_topk_scheme() -> None:
    # ReLU of mostly negative inputs: each sample has fewer non-zero values than k, so the
    # k-th magnitude is a tie among zeros, which the top-k scheme breaks to the lowest indices.
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(40, 2, 8, 8, generator=gen) - 2.0
    client = nn.ReLU()
    k = 20
    features = client(x).reshape(40, -1)
    assert int((features != 0).sum(dim=1).max()) < k
    counts = topk_histogram(client, [x[:17], x[17:]], k=k)
    assert torch.equal(counts, naive_histogram(features, k))
    # What the scheme really sends: the positions where an all-ones gradient comes back.
    sender, receiver = schemes.create("topk", k=k), schemes.create("topk", k=k)
    receiver.decompress(sender.compress(client(x), training=False))
    sent = sender.decompress_grad(receiver.compress_grad(torch.ones(x.shape)))
    assert torch.equal(counts, sent.reshape(40, -1).sum(dim=0).to(torch.int64))
    assert int(counts.sum()) == k * 40
