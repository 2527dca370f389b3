"""The dropgroup scheme (ACP-SL Fig. 2's channel-group ablation): exact bytes, round trips,
malformed payloads, and group boundaries against a naive reference."""

from __future__ import annotations

import pytest
import torch

from acpsl import schemes
from acpsl.cut.payload import KIND_FORWARD, encode_header, header_size
from acpsl.errors import ConfigError, PayloadError
from acpsl.schemes.dropgroup import DROPGROUP_WIRE_ID, group_bounds, kept_channel_mask


def _naive_bounds(channels: int, groups: int) -> list[tuple[int, int]]:
    base, extra = divmod(channels, groups)
    out, start = [], 0
    for g in range(groups):
        size = base + (1 if g < extra else 0)
        out.append((start, start + size))
        start += size
    return out


@pytest.mark.parametrize("channels,groups", [(64, 4), (64, 3), (10, 4), (3, 4), (1, 1), (7, 7)])
def test_group_bounds_match_naive_split(channels: int, groups: int) -> None:
    bounds = group_bounds(channels, groups)
    assert bounds == _naive_bounds(channels, groups)
    assert bounds[0][0] == 0 and bounds[-1][1] == channels


def test_registered_with_wire_id_20() -> None:
    assert "dropgroup" in schemes.names()
    scheme = schemes.create("dropgroup", groups=4, drop=2)
    assert scheme.wire_id == DROPGROUP_WIRE_ID == 20


@pytest.mark.parametrize("drop", [0, 1, 2, 3])
def test_round_trip_zeroes_exactly_the_dropped_group(drop: int) -> None:
    gen = torch.Generator().manual_seed(drop)
    x = torch.randn(5, 64, 7, 7, generator=gen)
    client = schemes.create("dropgroup", groups=4, drop=drop)
    server = schemes.create("dropgroup", groups=4, drop=drop)
    data = client.compress(x)
    # header (7 + 4 * 4) + u16 groups + u16 drop + 48 kept channels of 7x7 float32
    assert len(data) == header_size(4) + 4 + 4 * 5 * 48 * 49
    rebuilt = server.decompress(data)
    expected = x.clone()
    expected[:, 16 * drop : 16 * (drop + 1)] = 0
    assert torch.equal(rebuilt, expected)
    stats = client.stats()
    assert stats["ratio"] == pytest.approx(0.25)
    assert stats["kept"] == 48 * 49

    g = torch.randn(5, 64, 7, 7, generator=gen)
    grad_data = server.compress_grad(g)
    assert len(grad_data) == len(data)
    g_back = client.decompress_grad(grad_data)
    g_expected = g.clone()
    g_expected[:, 16 * drop : 16 * (drop + 1)] = 0
    assert torch.equal(g_back, g_expected)


def test_uneven_groups_mask() -> None:
    mask = kept_channel_mask(10, groups=4, drop=1)  # sizes 3, 3, 2, 2
    assert mask.tolist() == [True] * 3 + [False] * 3 + [True] * 4


def test_malformed_payloads_raise_payload_error() -> None:
    x = torch.randn(2, 8, 3, 3)
    scheme = schemes.create("dropgroup", groups=4, drop=0)
    data = scheme.compress(x)
    with pytest.raises(PayloadError):
        scheme.decompress(data[:-1])
    with pytest.raises(PayloadError):
        scheme.decompress(data + b"\x00")
    with pytest.raises(PayloadError):
        schemes.create("dropgroup", groups=4, drop=1).decompress(data)
    with pytest.raises(PayloadError):
        schemes.create("standard").decompress(data)
    with pytest.raises(PayloadError):
        scheme.decompress(b"not a payload")


def test_gradient_of_another_shape_is_rejected() -> None:
    client = schemes.create("dropgroup", groups=2, drop=0)
    client.compress(torch.randn(2, 4, 3, 3))
    other = schemes.create("dropgroup", groups=2, drop=0)
    wrong = other.compress_grad(torch.randn(3, 4, 3, 3))
    with pytest.raises(PayloadError):
        client.decompress_grad(wrong)


@pytest.mark.parametrize("params", [{"groups": 0}, {"groups": 4, "drop": 4}, {"drop": -1}])
def test_bad_parameters_are_config_errors(params: dict) -> None:
    with pytest.raises(ConfigError):
        schemes.create("dropgroup", **params)


def test_state_round_trip_and_mismatch() -> None:
    scheme = schemes.create("dropgroup", groups=4, drop=3)
    state = scheme.state_dict()
    schemes.create("dropgroup", groups=4, drop=3).load_state_dict(state)
    with pytest.raises(ConfigError):
        schemes.create("dropgroup", groups=4, drop=2).load_state_dict(state)


def test_tiny_payload_declaring_a_huge_shape_is_rejected_before_allocating() -> None:
    import struct
    import tracemalloc

    # 19 bytes: header of a [1, 2**24] tensor + groups/drop, and no values at all.
    data = encode_header(scheme_id=DROPGROUP_WIRE_ID, kind=KIND_FORWARD, shape=(1, 2**24))
    data += struct.pack("<HH", 4, 0)
    assert len(data) == header_size(2) + 4 == 19
    scheme = schemes.create("dropgroup", groups=4, drop=0)
    tracemalloc.start()
    try:
        with pytest.raises(PayloadError, match=r"needs|more than"):
            scheme.decompress(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # the old decoder built np.arange(2**24) (128 MiB) first
    with pytest.raises(PayloadError):
        scheme.decompress_grad(data[:4] + b"\x01" + data[5:])


def test_group_bounds_are_arithmetic_for_many_channels() -> None:
    bounds = group_bounds(2**24 + 3, 4)
    assert bounds[0] == (0, 2**22 + 1) and bounds[-1] == (3 * 2**22 + 3, 2**24 + 3)
    assert kept_channel_mask(5, groups=7, drop=6).all()  # more groups than channels


def test_edge_shapes_round_trip() -> None:
    gen = torch.Generator().manual_seed(9)
    # the only channel dropped: no values cross; an empty dropped group: everything crosses
    for shape, groups, drop, expect_zero in (
        ((2, 1, 3, 3), 4, 0, True),
        ((2, 1, 3, 3), 3, 2, False),
        ((3, 5), 2, 1, False),
        ((2, 6, 2, 2), 3, 1, False),
    ):
        x = torch.randn(*shape, generator=gen)
        client = schemes.create("dropgroup", groups=groups, drop=drop)
        server = schemes.create("dropgroup", groups=groups, drop=drop)
        rebuilt = server.decompress(client.compress(x))
        start, stop = group_bounds(shape[1], groups)[drop]
        expected = x.clone()
        expected[:, start:stop] = 0
        assert torch.equal(rebuilt, expected)
        assert bool((rebuilt == 0).all()) == expect_zero
        back = client.decompress_grad(server.compress_grad(x))
        assert torch.equal(back, expected)
