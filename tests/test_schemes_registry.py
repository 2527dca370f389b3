"""Every registered scheme (``acpsl.schemes.names()``): byte round trips and malformed bytes.

Parametrized over the whole registry, so a scheme is covered the day it registers. A scheme
is driven as in training: the client's instance compresses, a separate server instance
decompresses and compresses the gradient, the client decompresses it.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import acpsl.schemes as schemes
from acpsl.cut.payload import header_size
from acpsl.errors import PayloadError
from acpsl.schemes.base import Scheme

NAMES = schemes.names()
SHAPE = (6, 8, 4, 4)  # [B, N, H, W]: channel schemes (ACP) and per-instance schemes alike


def make_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*SHAPE, generator=gen).relu() + 0.01 * torch.randn(*SHAPE, generator=gen)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    return x, labels


def pair(name: str) -> tuple[Scheme, Scheme]:
    client, server = schemes.create(name), schemes.create(name)
    for scheme in (client, server):
        scheme.set_iteration(t=1, total=10)
    return client, server


def uplink(name: str) -> tuple[Scheme, Scheme, bytes, bytes]:
    """A client and server after one full exchange; returns them with both payloads."""
    client, server = pair(name)
    x, labels = make_batch()
    up = client.compress(x, labels=labels)
    rebuilt = server.decompress(up)
    down = server.compress_grad(
        torch.randn(rebuilt.shape, generator=torch.Generator().manual_seed(1))
    )
    return client, server, up, down


def test_registry_holds_every_spec_scheme() -> None:
    assert {"standard", "acp", "randtopk", "topk", "sizered", "quant", "l1"} <= set(NAMES)
    for name in NAMES:
        assert isinstance(schemes.create(name), Scheme)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("training", [True, False])
def test_round_trip_through_bytes(name: str, training: bool) -> None:
    client, server = pair(name)
    x, labels = make_batch()
    if not training:  # inference after some training, as in an evaluation pass
        server.decompress(client.compress(x, labels=labels))
    up = client.compress(x, labels=labels, training=training)
    assert isinstance(up, bytes) and len(up) > header_size(len(SHAPE))
    out = server.decompress(up)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert bool(torch.isfinite(out).all())
    # a compressor is never worse than sending nothing
    assert float((out - x).norm()) <= float(x.norm()) * (1 + 1e-6)
    assert torch.equal(schemes.create(name).decompress(up), out)  # from the bytes alone
    g = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    down = server.compress_grad(g)
    assert isinstance(down, bytes)
    back = client.decompress_grad(down)
    assert back.shape == x.shape and back.dtype == torch.float32
    assert float((back - g).norm()) <= float(g.norm()) * (1 + 1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_truncated_and_extended_payloads(name: str) -> None:
    client, server, up, down = uplink(name)
    for data, decode in ((up, server.decompress), (down, client.decompress_grad)):
        cuts = sorted({*range(min(len(data), 40)), *range(0, len(data), max(1, len(data) // 40))})
        for cut in cuts:
            with pytest.raises(PayloadError):
                decode(data[:cut])
        for extra in (b"\0", b"\xff", b"\0" * 8):
            with pytest.raises(PayloadError):
                decode(data + extra)


@pytest.mark.parametrize("name", NAMES)
def test_flipped_header_bytes(name: str) -> None:
    client, server, up, down = uplink(name)
    for data, decode in ((up, server.decompress), (down, client.decompress_grad)):
        for pos in range(header_size(len(SHAPE))):
            corrupt = bytearray(data)
            corrupt[pos] ^= 0xFF
            with pytest.raises(PayloadError):
                decode(bytes(corrupt))


@pytest.mark.parametrize("name", NAMES)
def test_wrong_kind_wrong_scheme_and_not_bytes(name: str) -> None:
    client, server, up, down = uplink(name)
    with pytest.raises(PayloadError):
        server.decompress(down)
    with pytest.raises(PayloadError):
        client.decompress_grad(up)
    for other in NAMES:
        if other != name:
            _, _, other_up, other_down = uplink(other)
            with pytest.raises(PayloadError):
                server.decompress(other_up)
            with pytest.raises(PayloadError):
                client.decompress_grad(other_down)
    with pytest.raises(PayloadError):
        server.decompress("not bytes")  # type: ignore[arg-type]
    with pytest.raises(PayloadError):
        server.decompress(b"")


@pytest.mark.parametrize("name", NAMES)
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_corrupted_body_decodes_or_raises_payload_error(name: str, data: st.DataObject) -> None:
    """Random edits after the header: the decoder returns a tensor or raises PayloadError."""
    client, server, up, down = uplink(name)
    direction = data.draw(st.sampled_from(["up", "down"]))
    payload, decode = (
        (up, server.decompress) if direction == "up" else (down, client.decompress_grad)
    )
    corrupt = bytearray(payload)
    start = header_size(len(SHAPE))
    for _ in range(data.draw(st.integers(1, 4))):
        if len(corrupt) <= start:
            break
        pos = data.draw(st.integers(start, len(corrupt) - 1))
        action = data.draw(st.sampled_from(["set", "delete", "insert"]))
        if action == "set":
            corrupt[pos] = data.draw(st.integers(0, 255))
        elif action == "delete":
            del corrupt[pos]
        else:
            corrupt.insert(pos, data.draw(st.integers(0, 255)))
    try:
        out = decode(bytes(corrupt))
    except PayloadError:
        return
    assert out.shape == SHAPE
