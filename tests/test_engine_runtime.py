"""Client and server runtimes: one SL iteration through bytes equals unsplit training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from acpsl import models, schemes
from acpsl.config import TrainConfig
from acpsl.cut.labels import encode_labels
from acpsl.cut.payload import header_size
from acpsl.engine import ClientRuntime, ServerRuntime
from acpsl.engine.aggregate import splitfed_aggregate, weighted_average
from acpsl.engine.optim import make_optimizer
from acpsl.errors import ConfigError, PayloadError, TrainingError


def make_pair(
    *, model="smallcnn", cut=1, stem="imagenet", scheme="standard", params=None, opt="sgd"
):
    """A client and a server runtime over one split model, plus the reference full model."""
    config = TrainConfig(optimizer=opt, lr=0.05, momentum=0.9, weight_decay=1e-4)
    split = models.create(model, in_channels=1, num_classes=10, cut=cut, stem=stem, seed=3)
    ref = models.create(model, in_channels=1, num_classes=10, cut=cut, stem=stem, seed=3)
    client = ClientRuntime(
        client_id=0,
        model=split.client,
        optimizer=make_optimizer(split.client.parameters(), config=config),
        scheme=schemes.create(scheme, **(params or {})),
    )
    server = ServerRuntime(
        model=split.server,
        optimizer=make_optimizer(split.server.parameters(), config=config),
        scheme_factory=lambda: schemes.create(scheme, **(params or {})),
    )
    ref_opt = make_optimizer(ref.full.parameters(), config=config)
    return split, client, server, ref, ref_opt


def batch(n=8, *, seed=0, size=28):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, size, size, generator=gen), torch.randint(0, 10, (n,), generator=gen)


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_split_iterations_through_bytes_equal_unsplit_training(opt):
    split, client, server, ref, ref_opt = make_pair(opt=opt)
    for step in range(3):
        x, y = batch(seed=step)
        up = client.forward(x, y, t=step + 1, total=3)
        down, loss, correct = server.step(0, up.smashed, up.labels)
        client.backward(down)

        ref.full.train()
        logits = ref.full(x)
        ref_loss = F.cross_entropy(logits, y)
        ref_opt.zero_grad()
        ref_loss.backward()
        ref_opt.step()
        assert loss == pytest.approx(float(ref_loss.detach()), rel=1e-6, abs=1e-6)
        assert correct == int((logits.argmax(1) == y).sum())
    got = {**split.client.state_dict(), **split.server.state_dict()}
    for name, value in ref.full.state_dict().items():
        torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_byte_counts_of_the_paper_split_are_exact():
    # ResNet-18, ImageNet stem, cut 4 on 28x28 greyscale: smashed data [B, 64, 7, 7].
    _, client, server, _, _ = make_pair(model="resnet18", cut=4, stem="imagenet")
    b = 8
    x, y = batch(b)
    up = client.forward(x, y, t=1, total=1)
    header = header_size(4)
    assert len(up.smashed) == header + b * 64 * 7 * 7 * 4 == 100_375
    assert len(up.labels) == header_size(1) + 1 + b == 20
    down, _, _ = server.step(0, up.smashed, up.labels)
    assert len(down) == len(up.smashed)
    client.backward(down)


def test_client_loss_of_l1_is_added_to_the_backward():
    params = {"lam": 0.5}
    split, client, server, ref, ref_opt = make_pair(scheme="l1", params=params)
    ref_scheme = schemes.create("l1", **params)
    x, y = batch(seed=4)
    up = client.forward(x, y, t=1, total=1)
    down, _, _ = server.step(0, up.smashed, up.labels)
    client.backward(down)

    ref.full.train()
    smashed = ref.client(x)
    logits = ref.server(smashed)
    loss = F.cross_entropy(logits, y) + ref_scheme.client_loss(smashed)
    ref_opt.zero_grad()
    loss.backward()
    ref_opt.step()
    for name, value in ref.client.state_dict().items():
        torch.testing.assert_close(split.client.state_dict()[name], value, rtol=1e-5, atol=1e-6)
    # without the extra term the client weights would differ measurably
    plain, c2, s2, _, _ = make_pair(scheme="l1", params={"lam": 0.0})
    up2 = c2.forward(x, y, t=1, total=1)
    c2.backward(s2.step(0, up2.smashed, up2.labels)[0])
    w = (
        "0.weight"
        if "0.weight" in plain.client.state_dict()
        else next(iter(plain.client.state_dict()))
    )
    assert not torch.allclose(plain.client.state_dict()[w], split.client.state_dict()[w])


def test_server_keeps_one_scheme_per_client_and_evaluates_through_the_cut():
    _, client, server, _, _ = make_pair(scheme="acp")
    assert server.scheme(0) is server.scheme(0)
    assert server.scheme(0) is not server.scheme(1)
    x, y = batch(6)
    client.forward(x, y, t=1, total=2)  # ACP needs one training batch before inference
    client._smashed = None
    payload = client.encode_eval(x)
    loss_sum, correct, count = server.evaluate(0, payload, encode_labels(y))
    assert count == 6 and 0 <= correct <= 6 and loss_sum > 0
    raw_loss, _, raw_count = server.score(client.smash(x), y)
    assert raw_count == 6 and raw_loss > 0


def test_backward_without_forward_and_bad_gradient_payloads():
    _, client, server, _, _ = make_pair()
    with pytest.raises(TrainingError, match="without forward"):
        client.backward(b"")
    x, y = batch(4)
    up = client.forward(x, y, t=1, total=1)
    with pytest.raises(PayloadError):
        client.backward(up.smashed)  # a forward payload is not a gradient payload
    up = client.forward(x, y, t=1, total=1)
    with pytest.raises(PayloadError):
        server.step(0, up.smashed, encode_labels(y[:3]))  # 4 samples, 3 labels


def test_non_finite_loss_is_a_training_error_suggesting_a_lower_lr():
    _, client, server, _, _ = make_pair()
    x, y = batch(4)
    x[0, 0, 0, 0] = float("inf")
    up = client.forward(x, y, t=1, total=1)
    with pytest.raises(TrainingError, match="lower the learning rate"):
        server.step(0, up.smashed, up.labels)


def test_state_hand_off_moves_model_and_optimizer_exactly():
    a_split, a, server, _, _ = make_pair()
    b_split, b, _, _, _ = make_pair()
    x, y = batch(4)
    up = a.forward(x, y, t=1, total=1)
    a.backward(server.step(0, up.smashed, up.labels)[0])
    data = a.export_state(with_optimizer=True)
    b.import_state(data)
    for (name, va), vb in zip(
        a_split.client.state_dict().items(), b_split.client.state_dict().values()
    ):
        assert torch.equal(va, vb), name
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    for key in sa["state"]:
        assert torch.equal(sa["state"][key]["momentum_buffer"], sb["state"][key]["momentum_buffer"])
    with pytest.raises(PayloadError):
        b.import_state(data[:-1])
    other, *_ = make_pair(model="resnet18", cut=4)
    with pytest.raises(PayloadError):
        ClientRuntime(
            client_id=1,
            model=other.client,
            optimizer=torch.optim.SGD(other.client.parameters(), lr=0.1),
            scheme=schemes.create("standard"),
        ).import_state(data)


def test_weighted_average_matches_a_naive_loop():
    gen = torch.Generator().manual_seed(0)
    states = [{"w": torch.randn(3, 2, generator=gen), "n": torch.tensor(c * 10)} for c in range(3)]
    weights = [1, 2, 5]
    out = weighted_average(states, weights=weights)
    total = sum(weights)
    for i in range(3):
        for j in range(2):
            naive = sum(weights[c] * float(states[c]["w"][i, j]) for c in range(3)) / total
            assert float(out["w"][i, j]) == pytest.approx(naive, abs=1e-6)
    assert out["n"].dtype == torch.int64 and int(out["n"]) == round((0 + 20 + 100) / 8)
    with pytest.raises(TrainingError):
        weighted_average(states, weights=[0, 0, 0])
    with pytest.raises(TrainingError):
        weighted_average(states, weights=[1, 2])
    with pytest.raises(TrainingError):
        weighted_average(
            [states[0], {"w": torch.zeros(2, 2), "n": torch.tensor(0)}], weights=[1, 1]
        )


def test_splitfed_aggregate_gives_every_client_the_size_weighted_average():
    config = TrainConfig(optimizer="sgd", lr=0.1)
    clients = []
    for c in range(3):
        split = models.create("smallcnn", in_channels=1, num_classes=10, seed=c)
        clients.append(
            ClientRuntime(
                client_id=c,
                model=split.client,
                optimizer=make_optimizer(split.client.parameters(), config=config),
                scheme=schemes.create("standard"),
            )
        )
    sizes = [10, 30, 60]
    before = [{k: v.clone() for k, v in c.model.state_dict().items()} for c in clients]
    uploads = [len(c.export_state(with_optimizer=False)) for c in clients]
    moved = splitfed_aggregate(clients, sizes=sizes)
    download = len(clients[0].export_state(with_optimizer=False))
    assert moved == sum(uploads) + 3 * download
    for key, value in clients[0].model.state_dict().items():
        if not value.is_floating_point():
            continue
        expected = sum(s * b[key].double() for s, b in zip(sizes, before)) / sum(sizes)
        torch.testing.assert_close(value.double(), expected, rtol=0, atol=1e-6)
        for other in clients[1:]:
            assert torch.equal(other.model.state_dict()[key], value)


def test_optimizer_needs_parameters():
    with pytest.raises(ConfigError, match="no trainable parameters"):
        make_optimizer([], config=TrainConfig())


def test_server_refuses_unusable_batches_before_touching_the_model():
    from acpsl.cut.payload import KIND_FORWARD
    from acpsl.engine.server import NonFiniteSmashedError
    from acpsl.schemes.standard import StandardScheme, encode_dense

    _, client, server, _, _ = make_pair()
    assert server.num_classes == 10  # the width of the classifier head
    before = {k: v.clone() for k, v in server.model.state_dict().items()}

    def dense(x):
        return encode_dense(x, scheme_id=StandardScheme.wire_id, kind=KIND_FORWARD)

    x, y = batch(4)
    up = client.forward(x, y, t=1, total=1)
    good = server.scheme(0).decompress(up.smashed)
    cases = {
        "empty batch": (dense(good[:0]), encode_labels(y[:0])),
        "outside the 10 classes": (up.smashed, encode_labels(torch.tensor([0, 1, 10, 2]))),
        "does not match": (up.smashed, encode_labels(y[:3])),
    }
    for message, (smashed, labels) in cases.items():
        with pytest.raises(PayloadError, match=message):
            server.step(0, smashed, labels)
        with pytest.raises(PayloadError, match=message):
            server.evaluate(0, smashed, labels)
    for bad in (float("nan"), float("inf")):
        poisoned = good.clone()
        poisoned[1, 0, 0, 0] = bad
        with pytest.raises(NonFiniteSmashedError, match="lower the learning rate") as info:
            server.step(0, dense(poisoned), up.labels)
        # refused as input (PayloadError, a ValueError) and, in process, a TrainingError
        assert isinstance(info.value, PayloadError) and isinstance(info.value, ValueError)
        assert isinstance(info.value, TrainingError)
    # finite but huge inputs overflow to a non-finite loss: refused, nothing applied
    with pytest.raises(TrainingError, match="non-finite training loss"):
        server.step(0, dense(torch.full_like(good, 3e38)), up.labels)
    for key, value in server.model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not server.optimizer.state  # no optimizer step was ever taken
    down, loss, _ = server.step(0, up.smashed, up.labels)  # and a good batch still trains
    assert down and loss > 0
