"""LCIS (eqs. 1–9) against naive loops written straight from the paper, plus its edge cases."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from acpsl import lcis, scorers
from acpsl.acp import keep_indices
from acpsl.errors import ConfigError, TrainingError

RTOL = 1e-9
ATOL = 1e-12


# ------------------------------------------------------------------- naive reference (paper)
def naive_raw(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eqs. 1, 2 and 4 with explicit loops over channels, labels, samples and label pairs."""
    a = features.to(torch.float64)
    batch, channels = a.shape[:2]
    present = sorted({int(v) for v in labels.tolist()})
    k = len(present)
    intra = torch.zeros(channels, dtype=torch.float64)
    inter = torch.zeros(channels, dtype=torch.float64)
    for i in range(channels):
        means = {}
        for n in present:
            members = [b for b in range(batch) if int(labels[b]) == n]
            total = torch.zeros_like(a[0, i])
            for b in members:
                total = total + a[b, i]
            means[n] = total / len(members)  # eq. 1
        s = 0.0
        for n in present:
            members = [b for b in range(batch) if int(labels[b]) == n]
            inner = sum(float((a[b, i] * means[n]).sum()) for b in members)  # Frobenius
            s += inner / len(members)
        intra[i] = s / k  # eq. 2
        if k >= 2:
            pairs = 0.0
            for x in range(k):
                for y in range(x + 1, k):
                    pairs += float((means[present[x]] * means[present[y]]).sum())
            inter[i] = pairs / math.comb(k, 2)  # eq. 4
    return intra, inter


def naive_instantaneous(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eqs. 3, 5 and 6 literally (denominator Σ_i s_i), for non-negative features."""
    intra, inter = naive_raw(features, labels)
    out = torch.zeros_like(intra)
    for i in range(intra.numel()):
        bar_intra = intra[i] / intra.sum() if intra.sum() != 0 else 0.0  # eq. 3
        bar_inter = inter[i] / inter.sum() if inter.sum() != 0 else 0.0  # eq. 5
        out[i] = bar_intra - bar_inter  # eq. 6
    return out


CASES = [
    # batch, channels, h, w, classes, missing labels
    (8, 3, 2, 2, 3, ()),
    (16, 5, 3, 4, 10, (1, 4, 7)),
    (12, 4, 1, 1, 5, (0,)),
    (9, 6, 5, 5, 2, ()),
    (20, 2, 4, 3, 100, ()),
]


def make_batch(
    batch: int, channels: int, h: int, w: int, classes: int, missing: tuple[int, ...], seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    allowed = torch.tensor([c for c in range(classes) if c not in missing])
    labels = allowed[torch.randint(0, allowed.numel(), (batch,), generator=gen)]
    features = torch.randn(batch, channels, h, w, generator=gen)
    # channel-wise label offsets so the scores differ between channels
    offsets = torch.randn(classes, channels, 1, 1, generator=gen)
    return features + offsets[labels], labels


@pytest.mark.parametrize(("batch", "channels", "h", "w", "classes", "missing"), CASES)
def test_raw_scores_match_naive_loops(batch, channels, h, w, classes, missing):
    features, labels = make_batch(batch, channels, h, w, classes, missing, seed=batch)
    intra, inter = lcis.raw_scores(features, labels)
    ref_intra, ref_inter = naive_raw(features, labels)
    torch.testing.assert_close(intra, ref_intra, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(inter, ref_inter, rtol=RTOL, atol=1e-10)
    assert intra.shape == (channels,) and intra.dtype == torch.float64


@pytest.mark.parametrize(("batch", "channels", "h", "w", "classes", "missing"), CASES)
def test_instantaneous_scores_match_naive_loops(batch, channels, h, w, classes, missing):
    features, labels = make_batch(batch, channels, h, w, classes, missing, seed=batch + 1)
    features = torch.relu(features)  # non-negative like the paper's cut (ReLU + max-pool)
    got = lcis.instantaneous_scores(features, labels)
    torch.testing.assert_close(got, naive_instantaneous(features, labels), rtol=1e-8, atol=1e-12)


def test_spec_identities():
    features, labels = make_batch(30, 4, 3, 3, 6, (2,), seed=7)
    a = features.to(torch.float64)
    present = torch.unique(labels)
    means = torch.stack([a[labels == n].mean(dim=0) for n in present])  # [K, N, H, W]
    k = present.numel()
    sq = means.square().sum(dim=(2, 3))  # ||M[n, i]||², [K, N]
    intra, inter = lcis.raw_scores(features, labels)
    torch.testing.assert_close(intra, sq.mean(dim=0), rtol=RTOL, atol=ATOL)
    pair_sum = (means.sum(dim=0).square().sum(dim=(1, 2)) - sq.sum(dim=0)) / 2
    torch.testing.assert_close(inter, pair_sum / math.comb(k, 2), rtol=RTOL, atol=1e-10)
    diffs = [
        (means[x] - means[y]).square().sum(dim=(1, 2)) for x in range(k) for y in range(x + 1, k)
    ]
    half_mean_pair = 0.5 * torch.stack(diffs).mean(dim=0)
    scores = lcis.lcis_scores(features, labels)
    torch.testing.assert_close(intra - inter, half_mean_pair, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(scores.separation, half_mean_pair, rtol=1e-9, atol=1e-10)
    assert bool((scores.separation >= 0).all())
    assert scores.num_labels == k


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(2, 24),
    channels=st.integers(1, 9),
    side=st.integers(1, 4),
    classes=st.integers(1, 12),
    seed=st.integers(0, 2**31 - 1),
)
def test_normalized_scores_sum_to_zero(batch, channels, side, classes, seed):
    """Σ_i S_inst,i = 0 to rounding whenever both sums are non-zero: the flaw of eq. 10."""
    features, labels = make_batch(batch, channels, side, side, classes, (), seed=seed)
    scores = lcis.lcis_scores(torch.relu(features), labels)
    inst = scores.instantaneous
    assert bool(torch.isfinite(inst).all())
    if scores.num_labels >= 2 and float(scores.inter.sum()) > 0:
        assert abs(float(inst.sum())) < 1e-12
        assert abs(float(inst.mean())) < 1e-12  # D_inst of eq. 10


def test_labels_absent_from_batch_do_not_exist():
    features, labels = make_batch(24, 5, 2, 2, 3, (), seed=3)
    relabelled = torch.tensor([0, 5, 9])[labels]  # classes 1-4 and 6-8 absent
    a = lcis.lcis_scores(features, labels)
    b = lcis.lcis_scores(features, relabelled)
    assert a.num_labels == b.num_labels == 3
    for x, y in ((a.intra, b.intra), (a.inter, b.inter), (a.instantaneous, b.instantaneous)):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_sample_order_does_not_matter():
    features, labels = make_batch(17, 4, 3, 2, 4, (), seed=11)
    perm = torch.randperm(17, generator=torch.Generator().manual_seed(0))
    a = lcis.instantaneous_scores(features, labels)
    b = lcis.instantaneous_scores(features[perm], labels[perm])
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


def test_single_label_batch():
    features, _ = make_batch(10, 4, 2, 2, 3, (), seed=5)
    features = torch.relu(features)
    labels = torch.full((10,), 7)
    scores = lcis.lcis_scores(features, labels)
    assert scores.num_labels == 1
    assert torch.equal(scores.inter, torch.zeros(4, dtype=torch.float64))
    assert torch.equal(scores.separation, torch.zeros(4, dtype=torch.float64))
    mean = features.to(torch.float64).mean(dim=0)
    torch.testing.assert_close(scores.intra, mean.square().sum(dim=(1, 2)), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(scores.instantaneous, scores.intra / scores.intra.sum())
    torch.testing.assert_close(scores.instantaneous, naive_instantaneous(features, labels))


def test_all_zero_features_give_zero_scores_and_ties_break_by_index():
    features = torch.zeros(6, 5, 2, 2)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    scores = lcis.lcis_scores(features, labels)
    for tensor in (scores.intra, scores.inter, scores.separation, scores.instantaneous):
        assert torch.equal(tensor, torch.zeros(5, dtype=torch.float64))
    assert keep_indices(scores.instantaneous, keep=2).tolist() == [0, 1]


def test_zero_channel_among_others_scores_zero():
    features, labels = make_batch(12, 4, 2, 2, 3, (), seed=9)
    features = torch.relu(features)
    features[:, 2] = 0
    scores = lcis.lcis_scores(features, labels)
    assert float(scores.intra[2]) == 0.0 and float(scores.inter[2]) == 0.0
    assert float(scores.instantaneous[2]) == 0.0


def test_ties_break_by_channel_index():
    scores = torch.tensor([0.5, 0.1, 0.5, 0.5, 0.2], dtype=torch.float64)
    assert keep_indices(scores, keep=2).tolist() == [0, 2]
    assert keep_indices(scores, keep=3).tolist() == [0, 2, 3]
    assert keep_indices(scores, keep=4).tolist() == [0, 2, 3, 4]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_features_raise(bad):
    features = torch.ones(4, 3, 2, 2)
    features[1, 2, 0, 1] = bad
    with pytest.raises(TrainingError, match="non-finite"):
        lcis.lcis_scores(features, torch.tensor([0, 1, 0, 1]))


def test_bad_inputs_raise_config_errors():
    x = torch.ones(4, 3, 2, 2)
    with pytest.raises(ConfigError, match="one label per sample"):
        lcis.raw_scores(x, torch.tensor([0, 1, 0]))
    with pytest.raises(ConfigError, match="integer class indices"):
        lcis.raw_scores(x, torch.tensor([0.0, 1.0, 0.0, 1.0]))
    with pytest.raises(ConfigError, match=r"\[B, N"):
        lcis.raw_scores(torch.ones(4), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ConfigError, match="floating-point"):
        lcis.raw_scores(torch.ones(4, 3, dtype=torch.int64), torch.tensor([0, 1, 0, 1]))


def test_two_dim_features_are_one_pixel_maps():
    features, labels = make_batch(10, 3, 1, 1, 3, (), seed=2)
    a = lcis.lcis_scores(features, labels)
    b = lcis.lcis_scores(features.reshape(10, 3), labels)
    torch.testing.assert_close(a.instantaneous, b.instantaneous, rtol=0, atol=0)


def test_normalize_preserves_sign_and_handles_zero():
    torch.testing.assert_close(
        lcis.normalize(torch.tensor([1.0, 3.0], dtype=torch.float64)),
        torch.tensor([0.25, 0.75], dtype=torch.float64),
    )
    mixed = lcis.normalize(torch.tensor([2.0, -2.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(mixed, torch.tensor([0.4, -0.4, 0.2], dtype=torch.float64))
    assert torch.equal(lcis.normalize(torch.zeros(3)), torch.zeros(3))


def test_history_and_combination_eqs_7_to_9():
    history = lcis.ScoreHistory()
    assert history.mean is None
    s1 = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    s2 = torch.tensor([3.0, 0.0, -1.0], dtype=torch.float64)
    torch.testing.assert_close(history.update(s1), s1)
    hist = history.update(s2)
    torch.testing.assert_close(hist, torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64))
    assert lcis.combination_weight(t=25, total=100) == 0.75
    assert lcis.combination_weight(t=0, total=10) == 1.0
    assert lcis.combination_weight(t=12, total=10) == 0.0
    comb = lcis.combine(instantaneous=s2, historical=hist, alpha=0.75)
    torch.testing.assert_close(comb, 0.75 * s2 + 0.25 * hist)
    restored = lcis.ScoreHistory()
    restored.load_state_dict(history.state_dict())
    s3 = torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64)
    assert torch.equal(restored.update(s3), history.update(s3))
    with pytest.raises(TrainingError, match="number of channels changed"):
        history.update(torch.zeros(4))
    with pytest.raises(ConfigError):
        lcis.combination_weight(t=1, total=0)


def test_l0_scorer_counts_non_zero_fraction():
    gen = torch.Generator().manual_seed(1)
    x = torch.relu(torch.randn(5, 4, 3, 3, generator=gen))
    got = scorers.create("l0").score(x)
    for i in range(4):
        expected = sum(int(v != 0) for v in x[:, i].reshape(-1).tolist()) / (5 * 9)
        assert math.isclose(float(got[i]), expected, rel_tol=1e-12)


def test_random_scorer_is_seeded_and_resumable():
    x = torch.zeros(2, 6, 1, 1)
    a, b = scorers.create("random", seed=3), scorers.create("random", seed=3)
    assert torch.equal(a.score(x), b.score(x))
    state = a.state_dict()
    first = a.score(x)
    b.load_state_dict(state)
    assert torch.equal(b.score(x), first)
    assert not torch.equal(
        scorers.create("random", seed=4).score(x), scorers.create("random", seed=3).score(x)
    )


def test_lcis_scorer_and_registry():
    assert scorers.names() == ["lcis", "l0", "random"]
    features, labels = make_batch(12, 4, 2, 2, 3, (), seed=4)
    got = scorers.create("lcis").score(features, labels=labels)
    assert torch.equal(got, lcis.instantaneous_scores(features, labels))
    with pytest.raises(ConfigError, match="labels"):
        scorers.create("lcis").score(features)
    with pytest.raises(ConfigError, match="unknown channel scorer"):
        scorers.create("l2")
