"""The ``acp`` scheme on the cut: exact bytes, round trips, malformed payloads, state, ablations."""

from __future__ import annotations

import itertools
import math
import struct

import pytest
import torch

from acpsl import lcis, schemes
from acpsl.acp import keep_indices, prune_count
from acpsl.cut.payload import HEADER_FIXED, header_size, unpack_bits
from acpsl.errors import CheckpointError, ConfigError, PayloadError, TrainingError

B, N, H, W = 6, 10, 3, 3
#: Header of a 4-D payload; the N-bit mask (2 bytes for N = 10) follows it.
HEAD = header_size(4)
MASK = slice(HEAD, HEAD + 2)


def separable_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Channels 2, 5 and 7 carry a one-hot of the label; every other channel is zero.

    LCIS then scores channels 2, 5, 7 at 1/3 each and the rest at 0, so keeping 3 of 10
    channels gives the known mask {2, 5, 7}.
    """
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    x = torch.zeros(B, N, H, W)
    for channel, cls in ((2, 0), (5, 1), (7, 2)):
        x[:, channel] = (labels == cls).float().reshape(B, 1, 1)
    return x, labels


def random_batch(seed: int, *, b: int = B, n: int = N) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (b,), generator=gen)
    x = torch.relu(
        torch.randn(b, n, H, W, generator=gen) + torch.randn(4, n, 1, 1, generator=gen)[labels]
    )
    return x, labels


def test_registered_with_wire_id_2():
    assert "acp" in schemes.names()
    scheme = schemes.create("acp")
    assert scheme.wire_id == 2 and scheme.name == "acp"


def test_exact_payload_bytes_for_a_known_mask():
    x, labels = separable_batch()
    client = schemes.create("acp", ratio="fixed")  # P_base 0.7: prune 7 of 10
    client.set_iteration(t=1, total=10)
    data = client.compress(x, labels=labels)
    kept = 3
    assert HEAD == 23
    assert len(data) == HEAD + math.ceil(N / 8) + B * kept * H * W * 4  # = 673
    assert data[MASK] == bytes([0b10100100, 0b00000000])  # bits 2, 5, 7 (LSB first)
    assert struct.unpack("<4I", data[HEADER_FIXED:HEAD]) == (B, N, H, W)
    assert unpack_bits(data[MASK], N).nonzero().reshape(-1).tolist() == [2, 5, 7]
    values = torch.frombuffer(bytearray(data[HEAD + 2 :]), dtype=torch.float32).reshape(
        B, kept, H, W
    )
    assert torch.equal(values, x[:, [2, 5, 7]])
    stats = client.stats()
    assert stats["ratio"] == 0.7 and stats["kept"] == 3.0
    assert stats["table2_bytes"] == B * kept * H * W * 4 + N / 8
    assert client.kept_counts() == [0, 0, 1, 0, 0, 1, 0, 1, 0, 0]

    server = schemes.create("acp")
    grad = torch.randn(B, N, H, W, generator=torch.Generator().manual_seed(0))
    server.decompress(data)
    down = server.compress_grad(grad)
    assert len(down) == HEAD + B * kept * H * W * 4  # the mask is not resent


@pytest.mark.parametrize("seed", range(4))
def test_round_trip_and_zero_gradient_on_pruned_channels(seed):
    x, labels = random_batch(seed)
    client, server = schemes.create("acp"), schemes.create("acp")
    client.set_iteration(t=seed + 1, total=8)
    payload = client.compress(x, labels=labels)
    mask = unpack_bits(payload[MASK], N)
    n_kept = N - prune_count(ratio=client.stats()["p_target"], channels=N)
    assert int(mask.sum()) == int(client.stats()["kept"]) == n_kept
    rebuilt = server.decompress(payload)
    assert rebuilt.shape == x.shape and rebuilt.dtype == torch.float32
    assert torch.equal(rebuilt[:, mask], x[:, mask])  # exact on kept channels
    assert torch.equal(rebuilt[:, ~mask], torch.zeros_like(x[:, ~mask]))  # zeros elsewhere
    # the downlink: the client's gradient is exact on kept channels and exactly 0 elsewhere
    g = torch.randn(B, N, H, W, generator=torch.Generator().manual_seed(seed))
    g_client = client.decompress_grad(server.compress_grad(g))
    assert torch.equal(g_client[:, mask], g[:, mask])
    assert bool((g_client[:, ~mask] == 0).all())


def test_client_backward_has_exactly_zero_gradient_on_pruned_channels():
    gen = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(1, N, 3, padding=1)
    with torch.no_grad():
        for p in conv.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    images = torch.randn(B, 1, H, W, generator=gen)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    client, server = schemes.create("acp"), schemes.create("acp")
    a = conv(images)
    payload = client.compress(a.detach(), labels=labels)
    mask = unpack_bits(payload[MASK], N)
    rebuilt = server.decompress(payload).requires_grad_(True)
    loss = (rebuilt * torch.randn(rebuilt.shape, generator=gen)).sum()
    loss.backward()
    assert rebuilt.grad is not None
    g = client.decompress_grad(server.compress_grad(rebuilt.grad))
    a.backward(g)
    assert conv.weight.grad is not None and conv.bias.grad is not None
    assert bool((conv.weight.grad[~mask] == 0).all()) and bool((conv.bias.grad[~mask] == 0).all())
    assert bool((conv.weight.grad[mask] != 0).any())


def test_malformed_payloads_raise_payload_error():
    x, labels = separable_batch()
    client = schemes.create("acp", ratio="fixed")
    data = client.compress(x, labels=labels)
    server = schemes.create("acp")
    bad_padding = bytearray(data)
    bad_padding[HEAD + 1] |= 0b10000000  # bit 15 > N
    extra_channel = bytearray(data)
    extra_channel[HEAD] |= 0b00000001  # mask keeps 4 channels, values for 3
    empty_mask = bytearray(data)
    empty_mask[MASK] = b"\x00\x00"
    wrong_kind = bytearray(data)
    wrong_kind[4] = 1
    wrong_scheme = schemes.create("standard").compress(x)
    flat = schemes.create("acp", ratio="fixed", scorer="l0")
    one_dim = bytearray(flat.compress(x.reshape(B, N * H * W)[:, :2]))
    one_dim[6] = 1  # ndim 1
    for bad in (
        data[:-1],
        data + b"\x00",
        data[: HEAD + 1],
        bytes(bad_padding),
        bytes(extra_channel),
        bytes(empty_mask),
        bytes(wrong_kind),
        wrong_scheme,
        b"",
        b"XX" + data[2:],
        bytes(one_dim),
    ):
        with pytest.raises(PayloadError):
            server.decompress(bad)
    with pytest.raises(PayloadError):
        server.decompress("not bytes")  # type: ignore[arg-type]

    server.decompress(data)
    down = server.compress_grad(torch.ones(B, N, H, W))
    for bad in (down[:-4], down + b"\x00\x00\x00\x00", data):
        with pytest.raises(PayloadError):
            client.decompress_grad(bad)
    other = schemes.create("acp", ratio="fixed")
    other.compress(torch.ones(B + 1, N, H, W), labels=torch.arange(B + 1) % 3)
    with pytest.raises(PayloadError, match="shape"):
        other.decompress_grad(down)
    with pytest.raises(PayloadError, match="before any uplink"):
        schemes.create("acp").decompress_grad(down)
    with pytest.raises(TrainingError, match="before any decompress"):
        schemes.create("acp").compress_grad(torch.ones(B, N, H, W))
    with pytest.raises(TrainingError, match="shape"):
        server.compress_grad(torch.ones(B, N, H, W + 1))


def test_bad_arguments_raise_config_errors():
    for params in (
        {"score_mode": "mean"},
        {"scorer": "l2"},
        {"ratio": "cosine"},
        {"p_min": 0.9},
        {"p_max": 1.0},
        {"group_score": "average"},
        {"seed": -1},
        {"unknown": 1},
    ):
        with pytest.raises(ConfigError):
            schemes.create("acp", **params)
    scheme = schemes.create("acp")
    with pytest.raises(ConfigError, match="labels"):
        scheme.compress(torch.ones(2, 3, 1, 1))
    with pytest.raises(ConfigError, match=r"\[B, N"):
        scheme.compress(torch.ones(3), labels=torch.zeros(3, dtype=torch.int64))
    x = torch.ones(2, 3, 2, 2)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(TrainingError):
        scheme.compress(x, labels=torch.tensor([0, 1]))
    with pytest.raises(TrainingError):
        schemes.create("acp", scorer="l0", ratio="fixed").compress(x)


def test_huge_finite_values_are_not_mistaken_for_divergence():
    # Every value is finite but their float32 sum overflows to inf: only a NaN/inf value
    # means a diverged model, so the label-free ablations must still compress.
    x = torch.full((4, 3, 2, 2), 3e38)
    assert not math.isfinite(float(x.sum()))
    for scorer, ratio in itertools.product(("l0", "random"), ("fixed", "random")):
        client = schemes.create("acp", scorer=scorer, ratio=ratio)
        rebuilt = schemes.create("acp").decompress(client.compress(x))
        assert rebuilt.shape == x.shape
        assert bool(torch.isfinite(rebuilt).all())
    x[1, 2, 0, 1] = float("inf")
    with pytest.raises(TrainingError):
        schemes.create("acp", scorer="l0", ratio="fixed").compress(x)


def test_label_free_ablations_need_no_labels():
    x, _ = random_batch(1)
    for scorer, ratio in itertools.product(("l0", "random"), ("fixed", "random")):
        client = schemes.create("acp", scorer=scorer, ratio=ratio)
        rebuilt = schemes.create("acp").decompress(client.compress(x))
        assert rebuilt.shape == x.shape


@pytest.mark.parametrize(
    ("scorer", "score_mode", "ratio"),
    list(
        itertools.product(
            ("lcis", "l0", "random"), ("inst", "hist", "comb"), ("adaptive", "fixed", "random")
        )
    ),
)
def test_every_ablation_prunes_within_bounds_with_exact_bytes(scorer, score_mode, ratio):
    client = schemes.create("acp", scorer=scorer, score_mode=score_mode, ratio=ratio, seed=3)
    server = schemes.create("acp")
    n = 20
    lo, hi = prune_count(ratio=0.6, channels=n), prune_count(ratio=0.8, channels=n)
    kept_total = 0
    for t in range(1, 6):
        x, labels = random_batch(t, n=n)
        client.set_iteration(t=t, total=5)
        data = client.compress(x, labels=labels)
        kept = int(client.stats()["kept"])
        assert lo <= n - kept <= hi
        assert client.stats()["ratio"] == (n - kept) / n
        assert len(data) == HEAD + math.ceil(n / 8) + B * kept * H * W * 4
        rebuilt = server.decompress(data)
        assert len(server.compress_grad(rebuilt)) == HEAD + B * kept * H * W * 4
        kept_total += kept
    assert len(client.kept_counts()) == n
    assert sum(client.kept_counts()) == kept_total


def test_kept_counts_accumulate_training_only():
    client = schemes.create("acp", ratio="fixed")
    total = 0
    for t in range(1, 4):
        x, labels = random_batch(t)
        client.set_iteration(t=t, total=3)
        client.compress(x, labels=labels)
        total += int(client.stats()["kept"])
    assert sum(client.kept_counts()) == total == 9
    client.compress(x, training=False)
    assert sum(client.kept_counts()) == total


def test_ranking_uses_combined_scores_of_eq_8():
    client = schemes.create("acp", ratio="fixed", p_base=0.5, p_min=0.5, p_max=0.5)
    history = lcis.ScoreHistory()
    for t in range(1, 5):
        x, labels = random_batch(10 + t)
        client.set_iteration(t=t, total=4)
        data = client.compress(x, labels=labels)
        inst = lcis.instantaneous_scores(x, labels)
        comb = lcis.combine(instantaneous=inst, historical=history.update(inst), alpha=1 - t / 4)
        expected = keep_indices(comb, keep=5)
        assert unpack_bits(data[MASK], N).nonzero().reshape(-1).tolist() == expected.tolist()
        assert client.stats()["alpha"] == 1 - t / 4


def test_inference_uses_latest_history_and_ratio_and_changes_no_state():
    client = schemes.create("acp")
    x, labels = random_batch(0)
    data = client.compress(x, training=False)  # before any training: keep every channel
    assert unpack_bits(data[MASK], N).all() and client.stats()["ratio"] == 0.0
    assert len(data) == HEAD + 2 + B * N * H * W * 4
    hist = lcis.ScoreHistory()
    for t in range(1, 4):
        x, labels = random_batch(t)
        client.set_iteration(t=t, total=3)
        client.compress(x, labels=labels)
        hist.update(lcis.instantaneous_scores(x, labels))
    latest = client.policy.latest
    assert latest is not None
    before = client.state_dict()
    test_x, _ = random_batch(99)
    data = client.compress(test_x, training=False)
    expected = keep_indices(hist.mean, keep=N - prune_count(ratio=latest, channels=N))
    assert unpack_bits(data[MASK], N).nonzero().reshape(-1).tolist() == expected.tolist()
    after = client.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, after[key])
        else:
            assert value == after[key]
    # the downlink of an inference uplink follows the state rule too
    server = schemes.create("acp")
    server.decompress(data)
    g = client.decompress_grad(server.compress_grad(torch.ones(B, N, H, W)))
    assert int((g.flatten(2).sum(dim=2)[0] != 0).sum()) == len(expected)


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"group_score": "paper"},
        {"scorer": "random", "ratio": "random", "seed": 7},
        {"scorer": "l0", "score_mode": "hist"},
    ],
)
def test_state_dict_resume_continues_identically(params):
    a = schemes.create("acp", **params)
    for t in range(1, 4):
        x, labels = random_batch(t)
        a.set_iteration(t=t, total=6)
        a.compress(x, labels=labels)
    state = a.state_dict()
    for value in state.values():
        assert isinstance(value, (torch.Tensor, int, float, list))
    b = schemes.create("acp", **params)
    b.load_state_dict(state)
    for t in range(4, 7):
        x, labels = random_batch(t)
        a.set_iteration(t=t, total=6)
        b.set_iteration(t=t, total=6)
        assert a.compress(x, labels=labels) == b.compress(x, labels=labels)
        assert a.stats() == b.stats()
    assert a.kept_counts() == b.kept_counts()
    assert a.compress(x, training=False) == b.compress(x, training=False)


def test_load_state_dict_rejects_foreign_state():
    with pytest.raises(CheckpointError):
        schemes.create("acp", scorer="random").load_state_dict({"kept_counts": []})


def test_all_zero_features_keep_lowest_channels():
    client = schemes.create("acp", ratio="fixed")
    data = client.compress(torch.zeros(B, N, H, W), labels=torch.arange(B) % 3)
    assert unpack_bits(data[MASK], N).nonzero().reshape(-1).tolist() == [0, 1, 2]


def test_adaptive_ratio_reacts_to_separation_through_the_scheme():
    """A batch whose classes separate better than the history keeps more channels."""
    client = schemes.create("acp")
    x, labels = random_batch(0, n=40)
    client.set_iteration(t=1, total=100)
    client.compress(x, labels=labels)
    assert client.stats()["ratio"] == 28 / 40  # first step: W = 1, P_base
    gen = torch.Generator().manual_seed(1)
    spread = torch.randn(4, 40, 1, 1, generator=gen) * 5
    sharper = torch.relu(x + spread[labels])
    client.set_iteration(t=2, total=100)
    client.compress(sharper, labels=labels)
    assert client.stats()["w"] < 1 and client.stats()["ratio"] < 0.7
    client.set_iteration(t=3, total=100)
    client.compress(torch.relu(x) * 0.01, labels=labels)
    assert client.stats()["w"] > 1 and client.stats()["ratio"] > 0.7


# ------------------------------------------------------------------ single-label batches
#: Iterations of the single-label traces (issue 10, defect 6: a 40-iteration trace).
TRACE_T = 40


def single_label_trace(
    group_score: str, *, single_at: int | None, skip: bool = False
) -> tuple[dict[int, float], dict[int, list[int]]]:
    """``P_t`` and the kept channels per iteration over a stream of 4-label batches, where
    the batch at ``single_at`` has all its labels equal (K = 1); with ``skip`` that
    iteration is left out entirely (``t`` still advances), the reference it must match."""
    client = schemes.create("acp", group_score=group_score)
    ratios: dict[int, float] = {}
    kept: dict[int, list[int]] = {}
    for t in range(1, TRACE_T + 1):
        x, labels = random_batch(t, b=32, n=40)
        assert labels.unique().numel() >= 2
        if t == single_at:
            if skip:
                continue
            labels = torch.full_like(labels, 3)
        client.set_iteration(t=t, total=TRACE_T)
        data = client.compress(x, labels=labels)
        ratios[t] = client.stats()["p_target"]
        kept[t] = unpack_bits(data[HEAD : HEAD + 5], 40).nonzero().reshape(-1).tolist()
    return ratios, kept


@pytest.mark.parametrize("group_score", ["separation", "paper"])
@pytest.mark.parametrize("single_at", [5, 20])
def test_single_label_batch_enters_no_history(group_score, single_at):
    """SPEC section 2: a K < 2 batch is pruned at the previous P_t with the previous S_comb
    ranking and changes no history (S_hist, the separation history, D_hist), so every other
    iteration is exactly what it is when that batch never came (t still advances)."""
    ratios, kept = single_label_trace(group_score, single_at=single_at)
    ref_ratios, ref_kept = single_label_trace(group_score, single_at=single_at, skip=True)
    assert ratios[single_at] == ratios[single_at - 1]
    assert kept[single_at] == kept[single_at - 1]
    del ratios[single_at], kept[single_at]
    assert ratios == ref_ratios
    assert kept == ref_kept


@pytest.mark.parametrize("group_score", ["separation", "paper"])
def test_single_label_first_batch_prunes_at_p_base_by_intra_score(group_score):
    ratios, kept = single_label_trace(group_score, single_at=1)
    x, _ = random_batch(1, b=32, n=40)
    intra, _ = lcis.raw_scores(x, torch.full((32,), 3))
    assert ratios[1] == 0.7
    assert kept[1] == keep_indices(intra, keep=40 - prune_count(ratio=0.7, channels=40)).tolist()
    # the next batch is the first in every history: W = 1, P_base
    assert ratios[2] == 0.7
    fresh = schemes.create("acp", group_score=group_score)
    for t in range(2, TRACE_T + 1):
        x, labels = random_batch(t, b=32, n=40)
        fresh.set_iteration(t=t, total=TRACE_T)
        fresh.compress(x, labels=labels)
        assert fresh.stats()["p_target"] == ratios[t]


def test_single_label_batch_after_resume_uses_the_saved_ranking():
    a = schemes.create("acp")
    for t in range(1, 4):
        x, labels = random_batch(t)
        a.set_iteration(t=t, total=6)
        a.compress(x, labels=labels)
    b = schemes.create("acp")
    b.load_state_dict(a.state_dict())
    x, _ = random_batch(4)
    for scheme in (a, b):
        scheme.set_iteration(t=4, total=6)
    assert a.compress(x, labels=torch.zeros(B, dtype=torch.int64)) == b.compress(
        x, labels=torch.zeros(B, dtype=torch.int64)
    )
    assert a.stats() == b.stats()
