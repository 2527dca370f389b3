"""The registry of split models (``acpsl.models.create`` / ``names``)."""

from __future__ import annotations

from collections.abc import Callable

from acpsl.config import STEMS
from acpsl.errors import ConfigError
from acpsl.models.split import SplitModel
from acpsl.registry import Registry

#: Factories called as ``factory(in_channels=, num_classes=, cut=, stem=, seed=)`` with
#: arguments already checked by :func:`create`; ``cut=None`` means the model's default cut.
MODELS: Registry[SplitModel] = Registry("model")


def register(name: str) -> Callable[[Callable[..., SplitModel]], Callable[..., SplitModel]]:
    """Decorator registering a split-model factory under ``name`` (duplicates raise)."""
    return MODELS.register(name)


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
        name: a name from :func:`names` (``resnet18``, ``resnet20``, ``smallcnn``).
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
    factory = MODELS.get(name)
    _check_positive_int("in_channels", in_channels)
    _check_positive_int("num_classes", num_classes)
    if stem not in STEMS:
        raise ConfigError(f"unknown stem {stem!r}; choose one of: {', '.join(STEMS)}")
    if cut is not None and (not isinstance(cut, int) or isinstance(cut, bool)):
        raise ConfigError(f"cut must be an int or None, got {cut!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"seed must be an int, got {seed!r}")
    return factory(in_channels=in_channels, num_classes=num_classes, cut=cut, stem=stem, seed=seed)


def names() -> list[str]:
    """Registered model names, in registration order."""
    return MODELS.names()
