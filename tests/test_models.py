"""Tests of acpsl.models: split equivalence, torchvision compatibility, exact sizes, errors."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from acpsl.errors import ConfigError
from acpsl.models import MODELS, SplitModel, create, names
from acpsl.models.resnet_cifar import PadShortcut

# Top-level children of each model, in order (the cut counts these).
CHILDREN = {
    "resnet18": [
        "conv1",
        "bn1",
        "relu",
        "maxpool",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
        "avgpool",
        "fc",
    ],
    "resnet20": ["conv1", "bn1", "relu", "layer1", "layer2", "layer3", "avgpool", "fc"],
    "smallcnn": ["block1", "block2", "pool", "fc"],
}
DEFAULT_CUT = {"resnet18": 4, "resnet20": 7, "smallcnn": 1}


def torchvision_resnet18_keys(in_channels: int, num_classes: int) -> dict[str, tuple[int, ...]]:
    """torchvision ``resnet18`` state_dict keys and shapes, written out from its definition.

    torchvision: ``ResNet(BasicBlock, [2, 2, 2, 2])``; ``conv1`` 7x7 64; ``bn1``; layers of
    64/128/256/512 planes; block 0 of layers 2-4 has ``downsample = Sequential(conv1x1, BN)``;
    ``fc = Linear(512, num_classes)``. Every BatchNorm2d has weight, bias, running_mean,
    running_var, num_batches_tracked.
    """
    keys: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int) -> None:
        keys[f"{prefix}.weight"] = (c,)
        keys[f"{prefix}.bias"] = (c,)
        keys[f"{prefix}.running_mean"] = (c,)
        keys[f"{prefix}.running_var"] = (c,)
        keys[f"{prefix}.num_batches_tracked"] = ()

    keys["conv1.weight"] = (64, in_channels, 7, 7)
    bn("bn1", 64)
    inplanes = 64
    for layer, planes in zip((1, 2, 3, 4), (64, 128, 256, 512)):
        for block in (0, 1):
            p = f"layer{layer}.{block}"
            cin = inplanes if block == 0 else planes
            keys[f"{p}.conv1.weight"] = (planes, cin, 3, 3)
            bn(f"{p}.bn1", planes)
            keys[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            bn(f"{p}.bn2", planes)
            if block == 0 and layer > 1:
                keys[f"{p}.downsample.0.weight"] = (planes, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes)
        inplanes = planes
    keys["fc.weight"] = (num_classes, 512)
    keys["fc.bias"] = (num_classes,)
    return keys


def random_state(keys: dict[str, tuple[int, ...]], *, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, shape in keys.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7, dtype=torch.long)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * 0.1
    return state


def randomize_bn_stats(model: SplitModel, *, seed: int) -> None:
    """Non-trivial running statistics, so eval-mode equivalence checks BN really."""
    g = torch.Generator().manual_seed(seed)
    for m in model.full.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def sample(in_channels: int, size: int, *, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, in_channels, size, size, generator=g)


def test_registry_names() -> None:
    assert names() == ["resnet18", "resnet20", "smallcnn"]
    assert MODELS.list() == names()
    with pytest.raises(ValueError, match="already registered"):
        MODELS.register("resnet18")(lambda **kw: None)


# (model, stem, in_channels, cuts, input size): every cut of every model, both stems of
# ResNet-18, greyscale and RGB.
EQUIV_CASES = [
    ("resnet18", "imagenet", 1, range(1, 10), 28),
    ("resnet18", "imagenet", 3, (1, 4, 9), 32),
    ("resnet18", "cifar", 3, (1, 3, 4, 5, 8, 9), 16),
    ("resnet18", "cifar", 1, (4,), 28),
    ("resnet20", "cifar", 3, range(1, 8), 32),
    ("resnet20", "imagenet", 1, (3, 7), 28),
    ("smallcnn", "imagenet", 1, range(1, 4), 28),
    ("smallcnn", "cifar", 3, range(1, 4), 32),
]


@pytest.mark.parametrize(("name", "stem", "in_channels", "cuts", "size"), EQUIV_CASES)
def test_server_of_client_equals_full(
    name: str, stem: str, in_channels: int, cuts: range, size: int
) -> None:
    x = sample(in_channels, size)
    for cut in cuts:
        model = create(name, in_channels=in_channels, num_classes=7, cut=cut, stem=stem)
        randomize_bn_stats(model, seed=cut)
        model.full.eval()
        assert [n for n, _ in model.full.named_children()] == CHILDREN[name]
        with torch.no_grad():
            smashed = model.client(x)
            split_out = model.server(smashed)
            full_out = model.full(x)
        assert split_out.shape == (2, 7)
        assert torch.allclose(split_out, full_out, rtol=1e-6, atol=1e-6), (name, cut)
        assert tuple(smashed.shape[1:]) == model.cut_shape((in_channels, size, size))
        client_children = [n for n in model.client._modules if n != "flatten"]
        server_children = [n for n in model.server._modules if n != "flatten"]
        assert client_children == CHILDREN[name][:cut]
        assert server_children == CHILDREN[name][cut:]


@pytest.mark.parametrize("name", names())
def test_split_relay_gives_full_gradients(name: str) -> None:
    """The SL relay (detach at the cut, server backward, client backward) equals full backprop.

    The server's input is a leaf that requires grad, as on a real server; a server part that
    started with an in-place op would fail here.
    """
    in_channels, size = 3, 16
    x = sample(in_channels, size, batch=4)
    y = torch.tensor([0, 1, 2, 1])
    for cut in range(1, len(CHILDREN[name])):
        model = create(name, in_channels=in_channels, num_classes=3, cut=cut, stem="cifar")
        model.full.eval()
        F.cross_entropy(model.full(x), y).backward()
        reference = {k: p.grad.clone() for k, p in model.full.named_parameters()}
        model.full.zero_grad(set_to_none=True)

        a = model.client(x)
        received = a.detach().requires_grad_()
        F.cross_entropy(model.server(received), y).backward()
        assert received.grad is not None
        a.backward(received.grad)
        for key, p in model.full.named_parameters():
            assert p.grad is not None, (cut, key)
            assert torch.allclose(p.grad, reference[key], rtol=1e-5, atol=1e-6), (cut, key)


@pytest.mark.parametrize("name", names())
@pytest.mark.parametrize("cut", [1, 2, 3])
def test_parts_share_parameters_and_partition_state(name: str, cut: int) -> None:
    model = create(name, in_channels=1, num_classes=10, cut=cut)
    full_ptrs = {p.data_ptr() for p in model.full.parameters()}
    client_ptrs = [p.data_ptr() for p in model.client.parameters()]
    server_ptrs = [p.data_ptr() for p in model.server.parameters()]
    assert set(client_ptrs) | set(server_ptrs) == full_ptrs
    assert not set(client_ptrs) & set(server_ptrs)
    client_keys = set(model.client.state_dict())
    server_keys = set(model.server.state_dict())
    assert not client_keys & server_keys
    assert client_keys | server_keys == set(model.full.state_dict())


@pytest.mark.parametrize("in_channels", [1, 3])
def test_resnet18_loads_torchvision_state_dict(in_channels: int) -> None:
    expected = torchvision_resnet18_keys(in_channels, 10)
    assert len(expected) == 122
    model = create("resnet18", in_channels=in_channels, num_classes=10)
    own = model.full.state_dict()
    assert list(own) == list(expected)  # same names, same order as torchvision
    assert {k: tuple(v.shape) for k, v in own.items()} == expected

    state = random_state(expected, seed=1)
    model.full.load_state_dict(state, strict=True)
    for key, value in model.full.state_dict().items():
        assert torch.equal(value, state[key]), key

    # Into the parts: the client takes exactly conv1.* and bn1.*, the server the rest.
    fresh = create("resnet18", in_channels=in_channels, num_classes=10)
    client_state = {k: v for k, v in state.items() if k.startswith(("conv1.", "bn1."))}
    server_state = {k: v for k, v in state.items() if k not in client_state}
    assert set(fresh.client.state_dict()) == set(client_state)
    assert set(fresh.server.state_dict()) == set(server_state)
    assert "layer1.0.conv1.weight" in server_state and "fc.weight" in server_state
    fresh.client.load_state_dict(client_state, strict=True)
    fresh.server.load_state_dict(server_state, strict=True)
    for key, value in fresh.full.state_dict().items():
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize("cut", range(1, 10))
def test_resnet18_parts_merge_to_torchvision_keys(cut: int) -> None:
    model = create("resnet18", in_channels=3, num_classes=1000, cut=cut)
    merged = {**model.client.state_dict(), **model.server.state_dict()}
    assert set(merged) == set(torchvision_resnet18_keys(3, 1000))


def resnet18_reference_forward(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """torchvision's resnet18 forward (eval mode), in functional ops over a state_dict."""

    def bn(p: str, t: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            t,
            state[f"{p}.running_mean"],
            state[f"{p}.running_var"],
            state[f"{p}.weight"],
            state[f"{p}.bias"],
            training=False,
            eps=1e-5,
        )

    out = F.conv2d(x, state["conv1.weight"], stride=2, padding=3)
    out = F.max_pool2d(F.relu(bn("bn1", out)), kernel_size=3, stride=2, padding=1)
    for layer in (1, 2, 3, 4):
        for block in (0, 1):
            p = f"layer{layer}.{block}"
            stride = 2 if layer > 1 and block == 0 else 1
            h = F.relu(
                bn(f"{p}.bn1", F.conv2d(out, state[f"{p}.conv1.weight"], stride=stride, padding=1))
            )
            h = bn(f"{p}.bn2", F.conv2d(h, state[f"{p}.conv2.weight"], padding=1))
            if f"{p}.downsample.0.weight" in state:
                identity = bn(
                    f"{p}.downsample.1",
                    F.conv2d(out, state[f"{p}.downsample.0.weight"], stride=stride),
                )
            else:
                identity = out
            out = F.relu(h + identity)
    out = out.mean(dim=(2, 3))
    return F.linear(out, state["fc.weight"], state["fc.bias"])


def test_resnet18_matches_functional_reference() -> None:
    state = random_state(torchvision_resnet18_keys(1, 10), seed=3)
    model = create("resnet18", in_channels=1, num_classes=10)
    model.full.load_state_dict(state, strict=True)
    model.full.eval()
    x = sample(1, 40, batch=3)
    with torch.no_grad():
        expected = resnet18_reference_forward(state, x)
        got = model.server(model.client(x))
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_parameter_counts() -> None:
    def count(model: SplitModel) -> int:
        return sum(p.numel() for p in model.full.parameters())

    assert count(create("resnet18", in_channels=3, num_classes=1000)) == 11_689_512
    # Greyscale: conv1 loses 2 * 64 * 7 * 7 weights; 10 classes: fc shrinks to 512 * 10 + 10.
    assert count(create("resnet18", in_channels=1, num_classes=10)) == (
        11_689_512 - 2 * 64 * 49 - (512 * 1000 + 1000) + (512 * 10 + 10)
    )

    # ResNet-20 (option A: parameter-free shortcuts), layer by layer; BN = 2 * channels.
    stem = 3 * 16 * 9 + 2 * 16  # conv1 + bn1 = 464
    stage1 = 3 * (2 * (16 * 16 * 9) + 2 * 2 * 16)  # 3 blocks of 16->16: 14,016
    stage2 = (16 * 32 * 9 + 32 * 32 * 9 + 2 * 2 * 32) + 2 * (2 * (32 * 32 * 9) + 2 * 2 * 32)
    stage3 = (32 * 64 * 9 + 64 * 64 * 9 + 2 * 2 * 64) + 2 * (2 * (64 * 64 * 9) + 2 * 2 * 64)
    assert (stem, stage1, stage2, stage3) == (464, 14_016, 51_072, 203_520)
    fc10, fc100 = 64 * 10 + 10, 64 * 100 + 100
    assert stem + stage1 + stage2 + stage3 + fc10 == 269_722
    assert count(create("resnet20", in_channels=3, num_classes=10)) == 269_722
    assert (
        count(create("resnet20", in_channels=3, num_classes=100))
        == 275_572
        == (stem + stage1 + stage2 + stage3 + fc100)
    )

    # SmallCNN: conv 1->32 (3x3 + bias), conv 32->64, fc 64*4*4 -> 10.
    assert count(create("smallcnn", in_channels=1, num_classes=10)) == (
        (1 * 32 * 9 + 32) + (32 * 64 * 9 + 64) + (64 * 16 * 10 + 10)
    )


def test_cut_shapes() -> None:
    mnist = create("resnet18", in_channels=1, num_classes=10)
    assert mnist.cut == 4
    assert mnist.cut_shape((1, 28, 28)) == (64, 7, 7)
    assert mnist.cut_shape((1, 224, 224)) == (64, 56, 56)
    cifar = create("resnet18", in_channels=3, num_classes=10, stem="cifar")
    assert cifar.cut_shape((3, 32, 32)) == (64, 32, 32)
    assert create("resnet18", in_channels=3, num_classes=10, cut=9).cut_shape((3, 32, 32)) == (512,)
    r20 = create("resnet20", in_channels=3, num_classes=100)
    assert r20.cut == 7
    assert r20.cut_shape((3, 32, 32)) == (64,)
    assert create("resnet20", in_channels=3, num_classes=10, cut=6).cut_shape((3, 32, 32)) == (
        64,
        8,
        8,
    )
    assert create("resnet20", in_channels=3, num_classes=10, cut=5).cut_shape((3, 32, 32)) == (
        32,
        16,
        16,
    )
    small = create("smallcnn", in_channels=1, num_classes=10)
    assert small.cut_shape((1, 28, 28)) == (32, 14, 14)


def test_cut_shape_keeps_mode_and_statistics() -> None:
    model = create("resnet18", in_channels=1, num_classes=10)
    model.full.train()
    before = {k: v.clone() for k, v in model.full.state_dict().items()}
    model.cut_shape((1, 28, 28))
    assert model.client.training and model.full.training
    assert all(torch.equal(v, before[k]) for k, v in model.full.state_dict().items())


@pytest.mark.parametrize(
    "shape", [(3, 28, 28), (28, 28), (1, 28, 28, 1), (1, 0, 28), (1, 28.0, 28), (1, 1, 1)]
)
def test_cut_shape_rejects_bad_input(shape: tuple) -> None:
    model = create("smallcnn", in_channels=1, num_classes=10, cut=2)
    with pytest.raises(ConfigError):
        model.cut_shape(shape)


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("resnet18", {"cut": 0}, r"cut must be an int in \[1, 9\]"),
        ("resnet18", {"cut": 10}, r"\[1, 9\]"),
        ("resnet18", {"cut": -1}, "cut"),
        ("resnet18", {"cut": True}, "cut"),
        ("resnet18", {"cut": 2.0}, "cut"),
        ("resnet20", {"cut": 8}, r"\[1, 7\]"),
        ("smallcnn", {"cut": 4}, r"\[1, 3\]"),
        ("resnet18", {"stem": "tiny"}, "unknown stem 'tiny'"),
        ("resnet20", {"stem": "CIFAR"}, "unknown stem"),
        ("resnet18", {"in_channels": 0}, "in_channels"),
        ("resnet18", {"num_classes": "10"}, "num_classes"),
        ("smallcnn", {"seed": 1.5}, "seed"),
        ("vgg16", {}, "unknown model 'vgg16'; choose one of: resnet18, resnet20, smallcnn"),
    ],
)
def test_bad_arguments_raise_config_error(name: str, kwargs: dict, match: str) -> None:
    args = {"in_channels": 1, "num_classes": 10, **kwargs}
    with pytest.raises(ConfigError, match=match):
        create(name, **args)


def test_seeded_init_is_reproducible_and_leaves_global_rng_alone() -> None:
    rng_before = torch.get_rng_state()
    a = create("resnet20", in_channels=3, num_classes=10, seed=5)
    b = create("resnet20", in_channels=3, num_classes=10, seed=5)
    c = create("resnet20", in_channels=3, num_classes=10, seed=6)
    assert torch.equal(torch.get_rng_state(), rng_before)
    sa, sb, sc = a.full.state_dict(), b.full.state_dict(), c.full.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["conv1.weight"], sc["conv1.weight"])


def test_initialisation_follows_torchvision() -> None:
    model = create("resnet18", in_channels=3, num_classes=1000, seed=0)
    state = model.full.state_dict()
    # kaiming_normal_(mode="fan_out", nonlinearity="relu"): std = sqrt(2 / (out * k * k)).
    w = state["layer4.1.conv2.weight"]
    assert w.mean().abs() < 1e-3
    assert w.std().item() == pytest.approx(math.sqrt(2 / (512 * 9)), rel=0.01)
    w1 = state["conv1.weight"]
    assert w1.std().item() == pytest.approx(math.sqrt(2 / (64 * 49)), rel=0.05)
    for key, value in state.items():
        if ".bn" in key or key.startswith("bn1") or "downsample.1" in key:
            leaf = key.rsplit(".", 1)[1]
            want = {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0}
            if leaf == "num_batches_tracked":
                assert value.item() == 0, key
            else:
                assert torch.all(value == want[leaf]), key
    # nn.Linear's default: weight and bias uniform in +-1/sqrt(fan_in).
    bound = 1 / math.sqrt(512)
    assert state["fc.weight"].abs().max() <= bound
    assert state["fc.weight"].abs().max() > 0.99 * bound
    assert state["fc.bias"].abs().max() <= bound


def test_option_a_shortcut_matches_loop_reference() -> None:
    x = sample(3, 5, batch=2)
    got = PadShortcut(planes=7, stride=2)(x)
    expected = torch.zeros(2, 7, 3, 3)
    for b in range(2):
        for c in range(3):
            for i in range(3):
                for j in range(3):
                    expected[b, c, i, j] = x[b, c, 2 * i, 2 * j]
    assert torch.equal(got, expected)


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def test_smallcnn_split_learns_mnist(shared_data: Path) -> None:
    """Split training (client -> detached cut -> server -> gradient back) really learns MNIST."""
    mnist = shared_data / "mnist"
    images = _read_idx(mnist / "train-images-idx3-ubyte.gz")[:6000]
    labels = _read_idx(mnist / "train-labels-idx1-ubyte.gz")[:6000]
    test_images = _read_idx(mnist / "t10k-images-idx3-ubyte.gz")[:2000]
    test_labels = _read_idx(mnist / "t10k-labels-idx1-ubyte.gz")[:2000]

    def prepare(a: np.ndarray) -> torch.Tensor:
        return (torch.from_numpy(a.copy()).float().unsqueeze(1) / 255.0 - 0.1307) / 0.3081

    x, y = prepare(images), torch.from_numpy(labels.astype(np.int64))
    xt, yt = prepare(test_images), torch.from_numpy(test_labels.astype(np.int64))
    model = create("smallcnn", in_channels=1, num_classes=10, seed=0)
    assert model.cut_shape((1, 28, 28)) == (32, 14, 14)
    client_opt = torch.optim.SGD(model.client.parameters(), lr=0.05, momentum=0.9)
    server_opt = torch.optim.SGD(model.server.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    model.full.train()
    for idx in torch.randperm(len(x), generator=g).split(64):
        a = model.client(x[idx])
        received = a.detach().requires_grad_()
        loss = F.cross_entropy(model.server(received), y[idx])
        server_opt.zero_grad()
        loss.backward()
        server_opt.step()
        client_opt.zero_grad()
        a.backward(received.grad)
        client_opt.step()
    model.full.eval()
    with torch.no_grad():
        accuracy = (model.server(model.client(xt)).argmax(1) == yt).float().mean().item()
    # One pass over 6,000 images (94 steps) reaches 0.907 here; chance is 0.1.
    assert accuracy > 0.85, accuracy
