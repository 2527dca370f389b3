"""ACP (eqs. 10–13), its guard against the D_inst = 0 flaw, and the ratio policies."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from acpsl import acp, lcis, ratios
from acpsl.errors import ConfigError

BOUNDS = {"p_min": 0.6, "p_base": 0.7, "p_max": 0.8}


def sep(value: float, n: int = 4) -> torch.Tensor:
    """A separation vector whose channel mean is ``value``."""
    return torch.full((n,), value, dtype=torch.float64)


ZEROS = torch.zeros(4, dtype=torch.float64)


@pytest.mark.parametrize(
    "bounds",
    [
        {"p_min": -0.1, "p_base": 0.7, "p_max": 0.8},
        {"p_min": 0.6, "p_base": 0.7, "p_max": 1.0},
        {"p_min": 0.7, "p_base": 0.6, "p_max": 0.8},
        {"p_min": 0.6, "p_base": 0.9, "p_max": 0.8},
        {"p_min": 0.6, "p_base": float("nan"), "p_max": 0.8},
        {"p_min": 0.6, "p_base": "0.7", "p_max": 0.8},
        {"p_min": True, "p_base": 0.7, "p_max": 0.8},
    ],
)
def test_bounds_are_validated(bounds):
    with pytest.raises(ConfigError):
        acp.validate_bounds(**bounds)
    for name in ratios.names():
        with pytest.raises(ConfigError):
            ratios.create(name, **bounds)


def test_bounds_accept_equal_and_zero():
    assert acp.validate_bounds(p_min=0.0, p_base=0.0, p_max=0.0) == (0.0, 0.0, 0.0)
    assert acp.validate_bounds(p_min=0.5, p_base=0.5, p_max=0.99) == (0.5, 0.5, 0.99)


def test_eq_13_clips_and_eq_12_guards():
    assert acp.pruning_ratio(w=1.0, **BOUNDS) == 0.7
    assert acp.pruning_ratio(w=2.0, **BOUNDS) == 0.8
    assert acp.pruning_ratio(w=0.1, **BOUNDS) == 0.6
    assert acp.pruning_ratio(w=-3.0, **BOUNDS) == 0.6
    assert math.isclose(acp.pruning_ratio(w=0.9, **BOUNDS), 0.63)
    assert acp.scaling_factor(d_hist=2.0, d_inst=4.0) == 0.5
    assert acp.scaling_factor(d_hist=0.0, d_inst=0.0) == 1.0
    assert acp.scaling_factor(d_hist=1.0, d_inst=1e-9, tolerance=1e-6) == 1.0
    assert acp.scaling_factor(d_hist=1e300, d_inst=1e-300) == 1.0  # overflow, not inf


def test_prune_count_rounds_half_up_and_keeps_one():
    assert acp.prune_count(ratio=0.7, channels=64) == 45  # 44.8
    assert acp.prune_count(ratio=0.5, channels=5) == 3  # 2.5 rounds up
    assert acp.prune_count(ratio=0.0, channels=7) == 0
    assert acp.prune_count(ratio=0.99, channels=10) == 9
    assert acp.prune_count(ratio=0.8, channels=1) == 0  # keep at least one
    with pytest.raises(ConfigError):
        acp.prune_count(ratio=1.5, channels=4)


def test_group_score_is_eq_10():
    scores = torch.tensor([1.0, 2.0, 6.0])
    assert acp.group_score(scores) == 3.0


def test_separation_group_score_follows_eqs_10_to_13_exactly():
    """Hand-computed sequence: R means 2, 4, 1 at t = 1, 2, 3 of T = 4."""
    state = acp.AdaptiveRatio(**BOUNDS)
    steps = []
    for t, r in ((1, 2.0), (2, 4.0), (3, 1.0)):
        alpha = lcis.combination_weight(t=t, total=4)
        steps.append(state.step(combined=ZEROS, separation=sep(r), alpha=alpha))
    # t=1: alpha .75, R_hist 2, D_inst = 2, D_hist = 2, W = 1
    assert steps[0].d_inst == 2.0 and steps[0].w == 1.0 and steps[0].ratio == 0.7
    # t=2: alpha .5, R_hist 3, D_inst = .5*4 + .5*3 = 3.5, D_hist = 2.75, W = 2.75/3.5
    assert math.isclose(steps[1].d_inst, 3.5) and math.isclose(steps[1].d_hist, 2.75)
    assert math.isclose(steps[1].w, 2.75 / 3.5)
    assert math.isclose(steps[1].ratio, max(0.6, 0.7 * 2.75 / 3.5))
    # t=3: alpha .25, R_hist 7/3, D_inst = .25 + .75*7/3 = 2, D_hist = 7.5/3 = 2.5, W = 1.25
    assert math.isclose(steps[2].d_inst, 2.0) and math.isclose(steps[2].d_hist, 2.5)
    assert math.isclose(steps[2].w, 1.25) and steps[2].ratio == 0.8


def test_rising_separation_prunes_less_and_falling_prunes_more():
    rising = acp.AdaptiveRatio(**BOUNDS)
    rising.step(combined=ZEROS, separation=sep(1.0), alpha=1.0)
    up = rising.step(combined=ZEROS, separation=sep(1.1), alpha=1.0)
    assert up.w < 1 and up.ratio < 0.7
    falling = acp.AdaptiveRatio(**BOUNDS)
    falling.step(combined=ZEROS, separation=sep(1.0), alpha=1.0)
    down = falling.step(combined=ZEROS, separation=sep(0.9), alpha=1.0)
    assert down.w > 1 and down.ratio > 0.7


def test_no_separation_at_all_gives_base_ratio():
    state = acp.AdaptiveRatio(**BOUNDS)
    for _ in range(3):
        step = state.step(combined=ZEROS, separation=ZEROS, alpha=0.5)
        assert step.w == 1.0 and step.ratio == 0.7


def test_separation_mode_needs_separation_scores():
    with pytest.raises(ConfigError, match="separation"):
        acp.AdaptiveRatio(**BOUNDS).step(combined=ZEROS, separation=None, alpha=1.0)
    with pytest.raises(ConfigError, match="group_score"):
        acp.AdaptiveRatio(**BOUNDS, group_score="mean")


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    steps=st.integers(1, 8),
    channels=st.integers(1, 8),
    classes=st.integers(1, 6),
    nonneg=st.booleans(),
)
def test_paper_group_score_never_nan_or_inf(seed, steps, channels, classes, nonneg):
    gen = torch.Generator().manual_seed(seed)
    state = acp.AdaptiveRatio(**BOUNDS, group_score="paper")
    history = lcis.ScoreHistory()
    all_flawed = True  # every S_inst so far sums to zero (two labels, non-zero inter)
    for t in range(1, steps + 1):
        x = torch.randn(12, channels, 2, 2, generator=gen) * float(torch.rand((), generator=gen))
        x = torch.relu(x) if nonneg else x
        y = torch.randint(0, classes, (12,), generator=gen)
        scores = lcis.lcis_scores(x, y)
        inst = scores.instantaneous
        all_flawed &= nonneg and scores.num_labels >= 2 and float(scores.inter.sum()) > 0
        comb = lcis.combine(
            instantaneous=inst,
            historical=history.update(inst),
            alpha=lcis.combination_weight(t=t, total=steps),
        )
        step = state.step(combined=comb, separation=None, alpha=0.0)
        for value in (step.w, step.ratio, step.d_inst, step.d_hist):
            assert math.isfinite(value)
        assert 0.6 <= step.ratio <= 0.8
        if all_flawed:  # Σ S_comb = 0 up to rounding: the guard must give P_base
            assert step.w == 1.0 and step.ratio == 0.7


def test_paper_group_score_is_literal_when_defined():
    state = acp.AdaptiveRatio(**BOUNDS, group_score="paper")
    state.step(combined=torch.tensor([1.0, 1.0], dtype=torch.float64), separation=None, alpha=1)
    step = state.step(
        combined=torch.tensor([2.0, 2.0], dtype=torch.float64), separation=None, alpha=1
    )
    assert step.d_inst == 2.0 and step.d_hist == 1.5 and step.w == 0.75
    assert math.isclose(step.ratio, 0.6)


@settings(max_examples=30, deadline=None)
@given(values=st.lists(st.floats(0.0, 1e6), min_size=1, max_size=20), alpha=st.floats(0, 1))
def test_adaptive_ratio_respects_bounds(values, alpha):
    policy = ratios.create("adaptive", p_min=0.2, p_base=0.5, p_max=0.9)
    for v in values:
        ratio = policy.step(combined=ZEROS, separation=sep(v), alpha=alpha).ratio
        assert 0.2 <= ratio <= 0.9
        assert policy.latest == ratio


def test_fixed_and_random_policies():
    fixed = ratios.create("fixed", **BOUNDS)
    assert {fixed.step(combined=ZEROS, separation=None, alpha=0.5).ratio for _ in range(5)} == {0.7}
    assert not fixed.needs_separation
    a = ratios.create("random", **BOUNDS, seed=5)
    b = ratios.create("random", **BOUNDS, seed=5)
    drawn = [a.step(combined=ZEROS, separation=None, alpha=0.5).ratio for _ in range(200)]
    assert drawn == [b.step(combined=ZEROS, separation=None, alpha=0.5).ratio for _ in range(200)]
    assert all(0.6 <= r <= 0.8 for r in drawn)
    assert len(set(drawn)) == 200
    assert min(drawn) < 0.62 and max(drawn) > 0.78  # covers the interval
    assert ratios.names() == ["adaptive", "fixed", "random"]
    with pytest.raises(ConfigError, match="unknown pruning-ratio policy"):
        ratios.create("cosine")


@pytest.mark.parametrize("name", ["adaptive", "fixed", "random"])
def test_policy_state_round_trip_continues_identically(name):
    kwargs = {"seed": 1} if name == "random" else {}
    a = ratios.create(name, **BOUNDS, **kwargs)
    for v in (1.0, 2.0, 0.5):
        a.step(combined=ZEROS, separation=sep(v), alpha=0.3)
    b = ratios.create(name, **BOUNDS, **kwargs)
    b.load_state_dict(a.state_dict())
    assert b.latest == a.latest
    for v in (0.7, 3.0):
        assert a.step(combined=ZEROS, separation=sep(v), alpha=0.1) == b.step(
            combined=ZEROS, separation=sep(v), alpha=0.1
        )
    for value in a.state_dict().values():
        assert isinstance(value, (torch.Tensor, int, float))
