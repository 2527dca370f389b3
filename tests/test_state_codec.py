"""The pickle-free state codec: exact round trips, exact sizes, malformed input -> PayloadError."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from acpsl.cut.state import MAGIC, decode_state_dict, encode_state_dict
from acpsl.errors import PayloadError

DTYPES = [
    torch.float64,
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
]


def assert_tree_equal(a, b):
    """Exact equality of two state trees, including container types, dtypes and shapes."""
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan()))
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, dict):
        assert list(a.keys()) == list(b.keys())
        for k in a:
            assert_tree_equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_tree_equal(x, y)
    elif isinstance(a, float) and a != a:
        assert b != b
    else:
        assert a == b


def small_net() -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return net


@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_every_dtype(dtype):
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(3, 5, generator=gen) * 50
    t = base > 0 if dtype == torch.bool else base.to(dtype)
    state = {"w": t, "scalar": t[0, 0].clone(), "empty": t[:0]}
    out = decode_state_dict(encode_state_dict(state))
    assert_tree_equal(state, out)


def test_model_state_round_trip_and_exact_size():
    net = small_net()
    state = net.state_dict()
    data = encode_state_dict(state)
    out = decode_state_dict(data)
    assert_tree_equal(dict(state), out)
    # size = magic(2) + version(1) + skeleton length(4) + skeleton + raw little-endian data
    skeleton_len = struct.unpack("<I", data[3:7])[0]
    raw = sum(t.numel() * t.element_size() for t in state.values())
    assert len(data) == 2 + 1 + 4 + skeleton_len + raw
    assert data[:2] == MAGIC
    # the raw data is the tensors' little-endian bytes, in order
    first = state["0.weight"]
    start = 7 + skeleton_len
    expected = first.numpy().astype("<f4").tobytes()
    assert data[start : start + len(expected)] == expected
    # and it loads back into a fresh module exactly
    fresh = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())
    fresh.load_state_dict(out)
    for a, b in zip(fresh.state_dict().values(), state.values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_optimizer_state_keeps_int_keys_and_tuples(kind):
    net = small_net()
    opt = (
        torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        if kind == "sgd"
        else torch.optim.Adam(net.parameters(), lr=1e-3)
    )
    net(torch.randn(2, 1, 5, 5)).sum().backward()
    opt.step()
    state = opt.state_dict()
    out = decode_state_dict(encode_state_dict(state))
    assert_tree_equal(state, out)
    assert all(isinstance(k, int) for k in out["state"])
    fresh = small_net()
    opt2 = type(opt)(fresh.parameters(), lr=0.5)
    opt2.load_state_dict(out)
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_nested_tree_with_scalars_numpy_and_nan():
    state = {
        "history": [torch.arange(4.0), torch.zeros(0)],
        "pair": (1, 2.5),
        3: "int key",
        "flags": {"on": True, "none": None, "nan": float("nan"), "inf": float("inf")},
        "array": np.arange(6, dtype=np.int32).reshape(2, 3),
        "u16": np.array([1, 65535], dtype=np.uint16),
        "rng": torch.Generator().manual_seed(5).get_state(),
    }
    out = decode_state_dict(encode_state_dict(state))
    assert_tree_equal(state, out)
    gen = torch.Generator()
    gen.set_state(out["rng"])
    assert torch.equal(
        torch.rand(3, generator=gen), torch.rand(3, generator=torch.Generator().manual_seed(5))
    )


def test_non_contiguous_and_big_endian_inputs():
    t = torch.arange(12.0).reshape(3, 4).t()  # non-contiguous
    arr = np.arange(5, dtype=">i4")  # big-endian NumPy array
    out = decode_state_dict(encode_state_dict({"t": t, "a": arr}))
    assert torch.equal(out["t"], t)
    np.testing.assert_array_equal(out["a"], arr)


def test_unsupported_values_raise_type_error():
    with pytest.raises(TypeError):
        encode_state_dict({"module": nn.ReLU()})
    with pytest.raises(TypeError):
        encode_state_dict({("tuple", "key"): 1})
    with pytest.raises(TypeError):
        encode_state_dict({"c": torch.zeros(2, dtype=torch.complex64)})


def _with_skeleton(skeleton, raw=b""):
    text = json.dumps(skeleton).encode()
    return MAGIC + struct.pack("<BI", 1, len(text)) + text + raw


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"SD",
        b"XX" + b"\x01" + b"\x00" * 4,
        b"SD\x02" + struct.pack("<I", 2) + b"{}",
        b"SD\x01" + struct.pack("<I", 100) + b"{}",
        b"SD\x01" + struct.pack("<I", 3) + b"{x}",
        b"SD\x01" + struct.pack("<I", 2) + b"\xff\xfe",
        _with_skeleton({"T": ["float32", [2]]}, b"\x00" * 7),
        _with_skeleton({"T": ["float32", [2]]}, b"\x00" * 9),
        _with_skeleton({"T": ["complex64", [1]]}, b"\x00" * 8),
        _with_skeleton({"T": ["float32", [-1]]}),
        _with_skeleton({"T": ["float32", [True]]}),
        _with_skeleton({"T": ["float32", [2**20, 2**20]]}),
        _with_skeleton({"T": ["float32"]}),
        _with_skeleton({"Z": 1}),
        _with_skeleton({"d": [["a", 1], ["a", 2]]}),
        _with_skeleton({"d": [["a"]]}),
        _with_skeleton({"d": [[["list"], 1]]}),
        _with_skeleton({"d": {"a": 1}}),
        _with_skeleton({"l": 5}),
        _with_skeleton([1, 2]),
        _with_skeleton({"a": 1, "b": 2}),
        _with_skeleton({"N": ["object", [1]]}),
    ],
)
def test_malformed_payloads_raise_payload_error(data):
    with pytest.raises(PayloadError):
        decode_state_dict(data)


def test_every_truncation_and_trailing_byte_is_rejected():
    data = encode_state_dict({"w": torch.arange(6.0), "n": 3})
    for cut in range(len(data)):
        with pytest.raises(PayloadError):
            decode_state_dict(data[:cut])
    with pytest.raises(PayloadError):
        decode_state_dict(data + b"\x00")


def test_deep_nesting_is_rejected_both_ways():
    node: object = 1
    for _ in range(40):
        node = [node]
    with pytest.raises(TypeError):
        encode_state_dict(node)
    skeleton: object = 1
    for _ in range(40):
        skeleton = {"l": [skeleton]}
    with pytest.raises(PayloadError):
        decode_state_dict(_with_skeleton(skeleton))


def test_non_bytes_input_is_payload_error():
    with pytest.raises(PayloadError):
        decode_state_dict("SD not bytes")  # type: ignore[arg-type]


@settings(max_examples=40, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(0, 4), max_size=4), min_size=1, max_size=5),
    dtype_index=st.integers(0, len(DTYPES) - 1),
    seed=st.integers(0, 2**16),
)
def test_random_states_round_trip(shapes, dtype_index, seed):
    gen = torch.Generator().manual_seed(seed)
    dtype = DTYPES[dtype_index]
    state = {}
    for i, shape in enumerate(shapes):
        base = torch.randn(shape, generator=gen) * 100
        state[f"t{i}"] = base > 0 if dtype == torch.bool else base.to(dtype)
    data = encode_state_dict(state)
    assert_tree_equal(state, decode_state_dict(data))
    raw = sum(t.numel() * t.element_size() for t in state.values())
    assert len(data) == 7 + struct.unpack("<I", data[3:7])[0] + raw


def _raw_skeleton(text: bytes, raw: bytes = b"") -> bytes:
    return MAGIC + struct.pack("<BI", 1, len(text)) + text + raw


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # JSON nested deeper than Python's recursion limit: json.loads raised RecursionError
        (b"[" * 100_000 + b"]" * 100_000, "nested deeper"),
        (b'{"l": ' * 50_000 + b"1" + b"}" * 50_000, "nested deeper"),
        # an integer of 5,000 digits: json.loads raised ValueError (int max str digits)
        (b'{"d": [["round", ' + b"9" * 5000 + b"]]}", "integer"),
        # under the digits limit but beyond int64: no state holds such a number
        (b'{"d": [["round", ' + str(2**64).encode() + b"]]}", "integer"),
        (b'{"T": ["float32", [' + b"9" * 5000 + b"]]}", "integer"),
    ],
)
def test_hostile_skeletons_raise_only_payload_error(text: bytes, message: str) -> None:
    # Issue 10, defect 4: the codec must raise PayloadError, and nothing else, on any input.
    with pytest.raises(PayloadError, match=message):
        decode_state_dict(_raw_skeleton(text))


def test_depth_limit_admits_every_state_the_encoder_writes() -> None:
    from acpsl.cut.state import MAX_DEPTH

    node: object = torch.ones(2)
    for i in range(MAX_DEPTH):  # the tensor ends up MAX_DEPTH containers deep
        node = {i: node} if i % 3 == 0 else [node] if i % 3 == 1 else (node,)
    data = encode_state_dict(node)
    assert_tree_equal(decode_state_dict(data), node)
    assert decode_state_dict(encode_state_dict({"n": -(2**63), "m": 2**63 - 1})) == {
        "n": -(2**63),
        "m": 2**63 - 1,
    }
