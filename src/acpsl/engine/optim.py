"""Optimizers of the client and server model parts, built from a :class:`TrainConfig`."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from acpsl.config import TrainConfig
from acpsl.errors import ConfigError


def make_optimizer(
    params: Iterable[torch.nn.Parameter], *, config: TrainConfig
) -> torch.optim.Optimizer:
    """The optimizer ``config.optimizer`` over ``params``.

    ``sgd`` uses ``config.momentum`` and ``config.weight_decay``; ``adam`` uses
    ``config.weight_decay`` as its L2 term (PyTorch's ``Adam``, not ``AdamW``) and ignores
    the momentum, whose role Adam's first-moment estimate plays.

    Raises:
        ConfigError: if ``config.optimizer`` is unknown or the model part has no parameters.
    """
    plist = [p for p in params if p.requires_grad]
    if not plist:
        raise ConfigError(
            "a model part has no trainable parameters; move the cut so that both the client "
            "and the server hold at least one layer with weights"
        )
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            plist, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(plist, lr=config.lr, weight_decay=config.weight_decay)
    raise ConfigError(f"unknown optimizer {config.optimizer!r}; choose sgd or adam")
