"""``acpsl.CutLayer`` against the engine's own client/server path (SPEC section 7).

For every registered scheme, a plain PyTorch model with a ``CutLayer`` must give exactly the
gradients, bytes and rebuilt test outputs that :class:`ClientRuntime` /
:class:`ServerRuntime` give on the same batches, built by the engine's ``build_run``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import acpsl
from acpsl import schemes
from acpsl.config import TrainConfig
from acpsl.cut.layer import CutLayer
from acpsl.engine.optim import make_optimizer
from acpsl.engine.setup import build_run

#: Parameters that make each scheme do real work on SmallCNN's (32, 14, 14) cut.
PARAMS: dict[str, dict[str, object]] = {
    "randtopk": {"keep_ratio": 0.1, "alpha": 0.2},
    "topk": {"keep_ratio": 0.1},
    "sizered": {"keep_ratio": 0.25},
    "quant": {"bits": 4},
    "l1": {"lam": 1e-3},
    "dropgroup": {"groups": 4, "drop": 1},
}
STEPS = 3
BATCH = 16


def _grads(*modules: nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for m in modules for p in m.parameters() if p.grad is not None]


def _compare_with_engine(name: str, data: Path, device: torch.device) -> None:
    params = PARAMS.get(name, {})
    config = TrainConfig(
        scheme=name,
        scheme_params=params,
        dataset="mnist",
        data_dir=str(data),
        subset=STEPS * BATCH,
        test_subset=BATCH,
        model="smallcnn",
        clients=1,
        batch_size=BATCH,
        rounds=1,
        seed=3,
        progress=False,
    )
    run = build_run(config, device=device)
    client, server = run.clients[0], run.server
    # The user's model: the same initial weights, a CutLayer between the two parts.
    head, tail = copy.deepcopy(client.model), copy.deepcopy(server.model)
    cut = CutLayer(name, total_iterations=STEPS, seed=config.seed, **params)
    opts = [make_optimizer(m.parameters(), config=config) for m in (head, tail)]
    engine_up = engine_down = 0
    for t in range(1, STEPS + 1):
        x, y = run.train_set.batch(torch.arange((t - 1) * BATCH, t * BATCH))
        up = client.forward(x, y, t=t, total=STEPS)
        down, _loss, _hits = server.step(0, up.smashed, up.labels)
        client.backward(down)
        engine_up += len(up.smashed)
        engine_down += len(down)

        x, y = x.to(device), y.to(device)
        logits = tail(cut(head(x), labels=y))
        loss = F.cross_entropy(logits, y) + cut.extra_loss()
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in opts:
            opt.step()
        mine, theirs = _grads(head, tail), _grads(client.model, server.model)
        assert len(mine) == len(theirs) > 0
        for a, b in zip(mine, theirs):
            assert torch.equal(a, b), f"{name}: gradients differ at iteration {t}"
        assert cut.stats().get("ratio") == client.scheme.stats().get("ratio")
    assert (cut.bytes_up, cut.bytes_down) == (engine_up, engine_down)
    assert cut.bytes_labels == STEPS * len(up.labels)
    assert cut.iteration == STEPS

    # Inference: eval() is the scheme's training=False path, as the engine's evaluation.
    x, y = run.test_set.batch(torch.arange(BATCH))
    payload = client.encode_eval(x)
    expected = server.scheme(0).decompress(payload)
    head.eval()
    cut.eval()
    with torch.no_grad():
        rebuilt = cut(head(x.to(device)))
    assert torch.equal(rebuilt.cpu(), expected.cpu())
    assert cut.bytes_eval == len(payload)
    assert rebuilt.device.type == device.type


@pytest.mark.parametrize("name", schemes.names())
def test_cut_layer_matches_engine_cpu(name: str, shared_data: Path) -> None:
    _compare_with_engine(name, shared_data, torch.device("cpu"))


@pytest.mark.needs_cuda
@pytest.mark.parametrize("name", schemes.names())
def test_cut_layer_matches_engine_cuda(name: str, shared_data: Path) -> None:
    _compare_with_engine(name, shared_data, torch.device("cuda"))


def test_cut_layer_is_exported_lazily() -> None:
    assert acpsl.CutLayer is CutLayer


def test_acp_needs_total_iterations() -> None:
    cut = CutLayer("acp")
    with pytest.raises(acpsl.ConfigError, match="total_iterations"):
        cut(torch.randn(4, 8, 3, 3), labels=torch.tensor([0, 1, 0, 1]))
    cut.set_iteration(t=5, total=10)
    cut(torch.randn(4, 8, 3, 3), labels=torch.tensor([0, 1, 0, 1]))
    assert cut.iteration == 5 and cut.client.iteration == 5
    assert cut.client.total_iterations == 10


def test_counters_reset_and_extra_state() -> None:
    cut = CutLayer("topk", keep_ratio=0.25, total_iterations=10)
    h = torch.randn(4, 16, requires_grad=True)
    out = cut(h)
    out.sum().backward()
    assert h.grad is not None and int((h.grad != 0).sum()) == 4 * 4
    assert cut.bytes_up > 0 and cut.bytes_down > 0
    assert float(cut.extra_loss()) == 0.0  # top-k has no client loss
    state = cut.state_dict()
    again = CutLayer("topk", keep_ratio=0.25)
    again.load_state_dict(state)
    assert (again.iteration, again.bytes_up, again.total_iterations) == (1, cut.bytes_up, 10)
    cut.reset_bytes()
    assert cut.stats()["bytes_up"] == cut.stats()["bytes_down"] == 0


def test_scheme_instance_and_bad_arguments() -> None:
    cut = CutLayer(schemes.create("quant", bits=2))
    assert cut.server is not cut.client and cut.server.bits == 2
    with pytest.raises(acpsl.ConfigError, match="instance"):
        CutLayer(schemes.create("quant"), bits=2)
    with pytest.raises(acpsl.ConfigError, match="unknown scheme"):
        CutLayer("nope")
    with pytest.raises(acpsl.ConfigError, match="total_iterations"):
        CutLayer("standard", total_iterations=0)


@pytest.mark.parametrize("training", [True, False])
def test_a_large_sparse_batch_is_decoded_under_the_inputs_own_shape(training: bool) -> None:
    """An all-zero L1 batch is a 160-byte payload for a 16 MiB tensor: beyond the decoders'
    generic expansion cap, so the layer must tell its server the shape it really sent."""
    cut = CutLayer("l1").train(training)
    x = torch.zeros(64, 64, 32, 32, requires_grad=True)
    out = cut(x)
    assert out.shape == x.shape and not out.any()
    assert cut.bytes_up + cut.bytes_eval < 1000
    if training:
        out.sum().backward()
        assert x.grad is not None and x.grad.shape == x.shape
