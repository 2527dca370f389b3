"""Matched compression (acpsl.schemes.matching) and the exact size functions it relies on."""

from __future__ import annotations

import functools
import math

import pytest
import torch

import acpsl.schemes as schemes
from acpsl.errors import ConfigError
from acpsl.schemes.matching import forward_size, match_params, measure_bytes_per_sample
from acpsl.schemes.sizes import l1_forward_size, log2_binomial


def real_size(name: str, sample: tuple[int, ...], batch: int, **params: object) -> int:
    x = torch.randn(batch, *sample, generator=torch.Generator().manual_seed(0))
    return len(schemes.create(name, **params).compress(x))


@pytest.mark.parametrize("name", ["topk", "randtopk", "sizered"])
@pytest.mark.parametrize(("sample", "batch"), [((5,), 3), ((4, 6, 6), 8), ((3, 1, 1), 1)])
def test_size_function_equals_real_encodes_for_every_k(
    name: str, sample: tuple[int, ...], batch: int
) -> None:
    d = math.prod(sample)
    for k in range(1, d + 1):
        predicted = forward_size(name, sample_shape=sample, batch_size=batch, value=k)
        assert predicted == real_size(name, sample, batch, k=k), k


def test_quant_and_l1_size_functions_equal_real_encodes() -> None:
    for bits in range(1, 17):
        for sample, batch in (((7,), 3), ((2, 5, 5), 4)):
            predicted = forward_size("quant", sample_shape=sample, batch_size=batch, value=bits)
            assert predicted == real_size("quant", sample, batch, bits=bits)
    x = torch.randn(5, 3, 4, generator=torch.Generator().manual_seed(1)).relu()
    counts = (x.reshape(5, -1) != 0).sum(dim=1).tolist()
    assert l1_forward_size(ndim=3, d=12, counts=counts) == len(schemes.create("l1").compress(x))


@functools.cache
def all_real_sizes(name: str, sample: tuple[int, ...], batch: int) -> dict[int, float]:
    """Real bytes per sample for every value of the matched parameter (computed once)."""
    key = "bits" if name == "quant" else "k"
    values = range(1, 17) if name == "quant" else range(1, math.prod(sample) + 1)
    return {v: real_size(name, sample, batch, **{key: v}) / batch for v in values}


@pytest.mark.parametrize("name", ["topk", "randtopk", "sizered", "quant"])
@pytest.mark.parametrize("target", [3.0, 50.0, 130.5, 300.0, 10_000.0])
def test_match_is_the_closest_achievable_size(name: str, target: float) -> None:
    sample, batch = (4, 4, 4), 16
    params = match_params(
        name, target_bytes_per_sample=target, sample_shape=sample, batch_size=batch
    )
    chosen = params["bits" if name == "quant" else "k"]
    sizes = all_real_sizes(name, sample, batch)
    best = min(abs(s - target) for s in sizes.values())
    assert abs(sizes[chosen] - target) == pytest.approx(best)
    assert chosen == min(v for v, s in sizes.items() if abs(abs(s - target) - best) < 1e-9)


def test_match_keeps_fixed_parameters_and_matches_another_scheme() -> None:
    sample, batch = (8, 4, 4), 12
    gen = torch.Generator().manual_seed(2)
    batches = [(torch.randn(batch, *sample, generator=gen), None) for _ in range(3)]
    target = measure_bytes_per_sample(schemes.create("quant", bits=4), batches)
    assert target == pytest.approx(real_size("quant", sample, batch, bits=4) / batch)
    params = match_params(
        "randtopk", target_bytes_per_sample=target, sample_shape=sample, batch_size=batch, alpha=0.2
    )
    assert params["alpha"] == 0.2
    matched = real_size("randtopk", sample, batch, **params) / batch
    # one more or one less kept value per sample moves the size by about 4.x bytes per sample
    assert abs(matched - target) <= 5.0
    assert match_params(
        "quant", target_bytes_per_sample=target, sample_shape=sample, batch_size=batch
    ) == {"bits": 4}


def test_match_against_acp_payload() -> None:
    """The comparison the papers ask for: baselines at ACP-SL's real bytes per sample."""
    if "acp" not in schemes.names():
        pytest.skip("the acp scheme is not registered")
    sample, batch = (16, 6, 6), 10
    gen = torch.Generator().manual_seed(3)
    labels = torch.arange(batch) % 3
    acp = schemes.create("acp")
    acp.set_iteration(t=1, total=5)
    x = torch.randn(batch, *sample, generator=gen).relu()
    target = measure_bytes_per_sample(acp, [(x, labels)])
    for name in ("topk", "sizered"):
        params = match_params(
            name, target_bytes_per_sample=target, sample_shape=sample, batch_size=batch
        )
        assert abs(real_size(name, sample, batch, **params) / batch - target) <= 5.0


def test_match_rejects_what_it_cannot_match() -> None:
    for name in ("l1", "standard", "acp", "nope"):
        with pytest.raises(ConfigError, match="cannot match"):
            match_params(name, target_bytes_per_sample=100.0, sample_shape=(4,), batch_size=2)
    with pytest.raises(ConfigError, match="do not pass"):
        match_params("topk", target_bytes_per_sample=100.0, sample_shape=(4,), batch_size=2, k=3)
    with pytest.raises(ConfigError, match="> 0"):
        match_params("topk", target_bytes_per_sample=0.0, sample_shape=(4,), batch_size=2)
    with pytest.raises(ConfigError, match="at least one"):
        measure_bytes_per_sample(schemes.create("topk"), [])


def test_information_bound_equals_exact_binomial() -> None:
    for d, k in [(1, 0), (1, 1), (10, 3), (4096, 410), (4096, 4095), (100_000, 5)]:
        assert log2_binomial(d, k) == pytest.approx(math.log2(math.comb(d, k)), rel=1e-9, abs=1e-9)
    with pytest.raises(ValueError):
        log2_binomial(3, 4)
