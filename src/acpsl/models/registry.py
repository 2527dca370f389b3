"""The registry of split models (``acpsl.models.create`` / ``names``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from acpsl import plugins
from acpsl.config import STEMS
from acpsl.errors import ConfigError
from acpsl.models.split import SplitModel
from acpsl.registry import Registry

#: Factories called as ``factory(in_channels=, num_classes=, cut=, stem=, seed=)`` with
#: arguments already checked by :func:`create`; ``cut=None`` means the model's default cut.
MODELS: Registry[SplitModel] = Registry("model")


def register(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering a split-model builder under ``name`` (duplicates raise).

    The builder is called with the keyword arguments it takes among ``in_channels``,
    ``num_classes``, ``cut``, ``stem`` and ``seed``, and returns a :class:`SplitModel` or a
    ``(client, server)`` pair of modules (docs/models.md, "Your own model").
    """
    return MODELS.register(name)


def resolve(name: str) -> Callable[..., Any]:
    """The builder of ``name``: a registered name or a ``MODULE:FUNCTION`` plug-in.

    Raises:
        ConfigError: unknown name, or a plug-in that cannot be imported.
    """
    if plugins.is_reference(name):
        return plugins.resolve(
            name, kind="model", registered=lambda n: MODELS.get(n) if n in MODELS else None
        )
    return MODELS.get(name)


def _check_positive_int(what: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{what} must be a positive int, got {value!r}")
    return value


def create(
    name: str,
    *,
    in_channels: int,
    num_classes: int,
    cut: int | None = None,
    stem: str = "imagenet",
    seed: int = 0,
) -> SplitModel:
    """Build the split model registered as ``name``.

    Args:
        name: a name from :func:`names` (``resnet18``, ``resnet20``, ``smallcnn``) or a
            ``MODULE:FUNCTION`` plug-in (:mod:`acpsl.plugins`).
        in_channels: image channels (1 for MNIST/Fashion-MNIST, 3 for CIFAR).
        num_classes: number of classes (logits).
        cut: number of the model's top-level children on the client; ``None`` takes the
            model's default (ResNet-18: 4, after the max-pool; ResNet-20: all but the linear
            classifier; SmallCNN: 1, after the first conv block).
        stem: ``"imagenet"`` (7x7/2 conv + 3x3/2 max-pool) or ``"cifar"`` (3x3/1 conv, no
            pool) for ResNet-18; the other models have one fixed stem and only check the name.
        seed: seed of the initial weights (the global RNG is never used).

    Returns:
        The :class:`SplitModel` (client, server and the full model sharing parameters).

    Raises:
        ConfigError: unknown name or stem, non-positive sizes, or a cut that leaves the
            client or the server empty.
    """
    factory = resolve(name)
    _check_positive_int("in_channels", in_channels)
    _check_positive_int("num_classes", num_classes)
    if stem not in STEMS:
        raise ConfigError(f"unknown stem {stem!r}; choose one of: {', '.join(STEMS)}")
    if cut is not None and (not isinstance(cut, int) or isinstance(cut, bool)):
        raise ConfigError(f"cut must be an int or None, got {cut!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"seed must be an int, got {seed!r}")
    values: dict[str, Any] = {
        "in_channels": in_channels,
        "num_classes": num_classes,
        "cut": cut,
        "stem": stem,
        "seed": seed,
    }
    kwargs = plugins.accepted_kwargs(factory, values)
    for key, default in (("cut", None), ("stem", "imagenet")):
        if key not in kwargs and values[key] != default:
            raise ConfigError(f"model {name!r} does not take {key}= (got {values[key]!r})")
    if "seed" in kwargs:
        built = factory(**kwargs)
    else:
        # A builder without a seed draws its initial weights from torch's global RNG: give
        # it the run's seed in a forked RNG, so the caller's global state is left untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            built = factory(**kwargs)
    return as_split_model(built, name=name, in_channels=in_channels, num_classes=num_classes)


def as_split_model(built: object, *, name: str, in_channels: int, num_classes: int) -> SplitModel:
    """A builder's result as a :class:`SplitModel` (a ``(client, server)`` pair is wrapped).

    Raises:
        ConfigError: the result is neither a SplitModel nor a pair of ``nn.Module``.
    """
    if isinstance(built, SplitModel):
        return built
    if (
        isinstance(built, (tuple, list))
        and len(built) == 2
        and all(isinstance(m, nn.Module) for m in built)
    ):
        client, server = built
        return SplitModel(
            name=name,
            cut=max(1, len(list(client.children()))),
            in_channels=in_channels,
            num_classes=num_classes,
            client=client,
            server=server,
            full=nn.Sequential(client, server),
        )
    raise ConfigError(
        f"model builder {name!r} returned {type(built).__name__}; return an "
        "acpsl.models.SplitModel or a (client, server) pair of torch.nn.Module"
    )


def names() -> list[str]:
    """Registered model names, in registration order."""
    return MODELS.names()
