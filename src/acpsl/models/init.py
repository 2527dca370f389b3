"""Seeded parameter initialisation for the split models.

Models are built on the ``meta`` device and materialised here, so that building a model never
draws from (or advances) PyTorch's global random state: every random number comes from one
explicit :class:`torch.Generator`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


def build_seeded(factory: Callable[[], M], *, seed: int) -> M:
    """Build ``factory()`` without touching the global RNG, then initialise it from ``seed``.

    Args:
        factory: a zero-argument callable that constructs the module.
        seed: seed of the generator every initial weight is drawn from.

    Returns:
        The module on the CPU, initialised by :func:`init_parameters`.
    """
    with torch.device("meta"):
        module = factory()
    module = module.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    init_parameters(module, generator=generator)
    return module


def init_parameters(module: nn.Module, *, generator: torch.Generator) -> None:
    """Initialise every layer of ``module`` the way torchvision's ResNet does.

    * ``Conv2d``: He-normal with ``mode="fan_out"`` (torchvision ``ResNet.__init__``), bias 0.
    * ``BatchNorm2d``: weight 1, bias 0, fresh running statistics.
    * ``Linear``: PyTorch's default (``kaiming_uniform_(a=sqrt(5))`` weight, uniform bias in
      ``±1/sqrt(fan_in)``), which torchvision leaves in place for ``fc``.

    Args:
        module: the model to initialise in place.
        generator: the only source of randomness.
    """
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(
                layer.weight, mode="fan_out", nonlinearity="relu", generator=generator
            )
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm2d):
            layer.reset_parameters()
        elif isinstance(layer, nn.Linear):
            nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
            if layer.bias is not None:
                bound = 1.0 / math.sqrt(layer.in_features)
                nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
        elif any(True for _ in layer.parameters(recurse=False)) or any(
            True for _ in layer.buffers(recurse=False)
        ):
            # A layer type added to a model without an init rule would keep the garbage that
            # ``to_empty`` leaves behind, so refuse loudly instead.
            raise TypeError(f"no initialisation rule for {type(layer).__name__}")
