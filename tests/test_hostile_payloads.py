"""Hostile payloads (issue 10, defect 1): a tiny payload that declares a huge shape is refused
before anything sized from its header is allocated, by every decoder; a server refuses a
payload whose declared shape is not its cut's (or whose batch exceeds the configured one)
before it decodes anything.

Allocation is measured two ways, since NumPy reports its buffers to :mod:`tracemalloc` but
PyTorch's CPU allocator does not: the ``tracemalloc`` peak, and the growth of the process's
peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs`` on Linux).
"""

from __future__ import annotations

import struct
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from acpsl import schemes
from acpsl.cut.indices import index_width
from acpsl.cut.labels import encode_labels
from acpsl.cut.payload import KIND_FORWARD, KIND_GRAD, encode_header
from acpsl.engine.server import ServerRuntime
from acpsl.errors import PayloadError
from acpsl.schemes.dropgroup import DropGroupScheme

#: The shape of the issue's attack: 2**25 float32 values, 128 MiB.
HUGE = (1, 32, 1024, 1024)
HUGE_D = 32 * 1024 * 1024
#: Bounds a refused payload must stay under (the attack allocated 128 MiB to 750 MB).
MAX_TRACED = 1 << 20
MAX_RSS = 24 << 20


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def allocation(fn: Callable[[], Any]) -> tuple[int, int]:
    """``(tracemalloc peak, growth of the peak RSS)`` in bytes while ``fn`` runs; ``fn`` must
    raise :class:`PayloadError`."""
    rss = sys.platform.startswith("linux")
    if rss:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = _status_kib("VmRSS")
    tracemalloc.start()
    try:
        with pytest.raises(PayloadError):
            fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    grown = (_status_kib("VmHWM") - before) * 1024 if rss else 0
    return peak, grown


def header(scheme_id: int, shape: tuple[int, ...], kind: int = KIND_FORWARD) -> bytes:
    return encode_header(scheme_id=scheme_id, kind=kind, shape=shape)


def topk_like(wire_id: int) -> bytes:
    """The issue's 36-byte top-k step: k = 1, one packed index, one value."""
    index = (0).to_bytes((index_width(HUGE_D) + 7) // 8, "little")
    return b"".join(
        (header(wire_id, HUGE), struct.pack("<I", 1), b"\x00", index, struct.pack("<f", 1.0))
    )


def hostile_forward(name: str) -> tuple[dict[str, Any], bytes]:
    """A scheme's parameters and a small forward payload declaring a huge tensor."""
    scheme_cls = schemes.SCHEMES.get(name)
    wire = scheme_cls.wire_id
    if name == "standard":
        return {}, header(wire, HUGE)  # a dense header with an empty body
    if name in ("topk", "randtopk"):
        return {}, topk_like(wire)
    if name == "sizered":  # k = 1, d repeated, one value: 35 bytes
        return {}, header(wire, HUGE) + struct.pack("<IIf", 1, HUGE_D, 1.0)
    if name == "quant":  # 1-bit codes would be 4 MiB: only the ranges are there
        return {}, header(wire, HUGE) + bytes([1]) + struct.pack("<ff", 0.0, 1.0)
    if name == "l1":  # every count zero (26 bits), an empty packed index block: 28 bytes
        return {}, header(wire, HUGE) + (0).to_bytes(4, "little") + b"\x00"
    if name == "acp":  # 32,768 channels, one kept: 8 KiB of payload for 128 MiB
        shape = (1, 32768, 32, 32)
        mask = b"\x01" + bytes(32768 // 8 - 1)
        return {}, header(wire, shape) + mask + bytes(4 * 32 * 32)
    if name == "dropgroup":  # the 23 bytes: one channel, in the dropped group
        return {"groups": 4, "drop": 0}, header(wire, (1, 1, HUGE_D)) + struct.pack("<HH", 4, 0)
    raise AssertionError(f"no hostile payload for scheme {name!r}")


SCHEME_NAMES = ["standard", "acp", "randtopk", "topk", "sizered", "quant", "l1", "dropgroup"]


def test_every_registered_scheme_has_a_hostile_payload() -> None:
    assert set(schemes.names()) <= set(SCHEME_NAMES)


@pytest.mark.parametrize("name", SCHEME_NAMES)
def test_tiny_forward_payload_declaring_a_huge_shape_is_refused_without_allocating(
    name: str,
) -> None:
    params, data = hostile_forward(name)
    scheme = schemes.create(name, **params)
    assert len(data) < 9000
    peak, grown = allocation(lambda: scheme.decompress(data))
    assert peak < MAX_TRACED, f"{name}: {peak:,} bytes traced for a {len(data)}-byte payload"
    assert grown < MAX_RSS, f"{name}: resident set grew {grown:,} bytes"


def _client_after_uplink(name: str, params: dict[str, Any]) -> Any:
    scheme = schemes.create(name, **params)
    x = torch.randn(2, 4, 3, 3)
    scheme.compress(x, labels=torch.tensor([0, 1]))
    return scheme


@pytest.mark.parametrize("name", SCHEME_NAMES)
def test_tiny_gradient_payload_declaring_a_huge_shape_is_refused_without_allocating(
    name: str,
) -> None:
    params = {"groups": 4, "drop": 0} if name == "dropgroup" else {}
    scheme = _client_after_uplink(name, params)
    wire = type(scheme).wire_id
    if name == "sizered":
        data = header(wire, HUGE, KIND_GRAD) + struct.pack("<IIf", 1, HUGE_D, 1.0)
    elif name == "dropgroup":
        data = header(wire, (1, 1, HUGE_D), KIND_GRAD) + struct.pack("<HH", 4, 0)
    else:
        data = header(wire, HUGE, KIND_GRAD) + struct.pack("<f", 1.0)
    peak, grown = allocation(lambda: scheme.decompress_grad(data))
    assert peak < MAX_TRACED, f"{name}: {peak:,} bytes traced for a {len(data)}-byte payload"
    assert grown < MAX_RSS, f"{name}: resident set grew {grown:,} bytes"


@pytest.mark.parametrize("name", SCHEME_NAMES)
def test_valid_payloads_still_round_trip_with_an_expected_shape(name: str) -> None:
    from acpsl.cut.payload import ShapeLimit

    params = {"groups": 4, "drop": 1} if name == "dropgroup" else {}
    client, server = schemes.create(name, **params), schemes.create(name, **params)
    server.expect(ShapeLimit(sample_shape=(4, 3, 3), max_batch=8))
    x = torch.randn(5, 4, 3, 3).relu()
    labels = torch.tensor([0, 1, 2, 0, 1])
    up = client.compress(x, labels=labels)
    rebuilt = server.decompress(up)
    assert rebuilt.shape == x.shape
    grad = client.decompress_grad(server.compress_grad(torch.ones_like(rebuilt)))
    assert grad.shape == x.shape
    wrong = client.compress(torch.randn(5, 4, 3, 2).relu(), labels=labels)
    with pytest.raises(PayloadError, match="shape"):
        server.decompress(wrong)
    too_many = client.compress(torch.randn(9, 4, 3, 3).relu(), labels=torch.arange(9) % 3)
    with pytest.raises(PayloadError, match="batch"):
        server.decompress(too_many)


def test_an_all_zero_l1_batch_of_a_large_cut_decodes_when_the_shape_is_expected() -> None:
    from acpsl.cut.payload import MAX_EXPANSION, ShapeLimit

    # CIFAR stem, cut after the stem: 64 x 32 x 32 per sample. An all-zero batch is legit
    # (every activation driven to zero by L1) and is only the counts: far above
    # MAX_EXPANSION. Knowing the cut's shape, the server decodes it.
    x = torch.zeros(16, 64, 32, 32)
    client, server = schemes.create("l1"), schemes.create("l1")
    data = client.compress(x)
    assert 4 * x.numel() > MAX_EXPANSION * len(data)
    with pytest.raises(PayloadError, match="expected"):
        server.decompress(data)
    server.expect(ShapeLimit(sample_shape=(64, 32, 32), max_batch=16))
    assert torch.equal(server.decompress(data), x)


# ------------------------------------------------------------------------ server runtime
class _Flat(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def _server(scheme: str, **params: Any) -> ServerRuntime:
    torch.manual_seed(0)
    model = nn.Sequential(_Flat(), nn.Linear(4 * 3 * 3, 3))
    return ServerRuntime(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        scheme_factory=lambda: schemes.create(scheme, **params),
        cut_shape=(4, 3, 3),
        max_batch=8,
    )


def test_server_refuses_a_wrong_shape_before_decoding_and_leaves_the_model_alone() -> None:
    server = _server("topk")
    before = [p.detach().clone() for p in server.model.parameters()]
    calls: list[bytes] = []
    scheme = server.scheme(0)
    original = scheme.decompress
    scheme.decompress = lambda data: calls.append(data) or original(data)  # type: ignore[method-assign]
    labels1 = encode_labels(torch.zeros(1, dtype=torch.int64))
    with pytest.raises(PayloadError, match=r"shape"):
        server.step(0, topk_like(type(scheme).wire_id), labels1)
    client = schemes.create("topk")
    wrong = client.compress(torch.randn(2, 4, 3, 2))
    with pytest.raises(PayloadError, match=r"\(2, 4, 3, 2\)"):
        server.step(0, wrong, encode_labels(torch.zeros(2, dtype=torch.int64)))
    big = client.compress(torch.randn(9, 4, 3, 3))
    with pytest.raises(PayloadError, match="batch"):
        server.step(0, big, encode_labels(torch.zeros(9, dtype=torch.int64)))
    with pytest.raises(PayloadError, match="batch"):
        server.evaluate(0, big, encode_labels(torch.zeros(9, dtype=torch.int64)))
    assert calls == []  # refused before the decoder saw the bytes
    for p, q in zip(server.model.parameters(), before):
        assert torch.equal(p, q)
    # ... and it keeps serving a good step.
    good = client.compress(torch.randn(8, 4, 3, 3))
    down, loss, _ = server.step(0, good, encode_labels(torch.arange(8) % 3))
    assert np.isfinite(loss) and client.decompress_grad(down).shape == (8, 4, 3, 3)
    assert len(calls) == 1


def test_build_run_gives_the_server_the_cut_shape_and_batch_size(shared_data: Path) -> None:
    from acpsl.config import TrainConfig
    from acpsl.engine.setup import build_run

    config = TrainConfig(
        dataset="mnist",
        data_dir=str(shared_data),
        model="smallcnn",
        cut=1,
        subset=64,
        test_subset=32,
        clients=2,
        batch_size=16,
        device="cpu",
        progress=False,
    )
    run = build_run(config, device=torch.device("cpu"))
    assert run.server.cut_shape == (32, 14, 14)
    assert run.server.max_batch == 16
    smashed = run.clients[0].model(run.train_set.batch(torch.arange(3))[0])
    assert tuple(smashed.shape[1:]) == run.server.cut_shape


def test_dropgroup_scheme_is_registered() -> None:
    assert DropGroupScheme.name in schemes.names()
