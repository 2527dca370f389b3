"""Numeric precision and memory format of the model parts (``--precision``,
``--channels-last``).

``bf16`` runs the client and server forward passes under ``torch.autocast`` (CPU or CUDA)
in bfloat16; the weights, optimizer states and gradients stay float32, and so does every
tensor that crosses the cut: the client casts its smashed data to float32 before the scheme
encodes it, and the server's gradient w.r.t. the rebuilt (float32) smashed data is float32.
The payloads therefore have the same layout and length in both precisions.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from acpsl.config import PRECISIONS
from acpsl.errors import ConfigError


@dataclass(frozen=True)
class Precision:
    """How a model part computes.

    Attributes:
        dtype: ``fp32`` or ``bf16`` (autocast).
        channels_last: 4-D weights and inputs in channels-last memory format.
    """

    dtype: str = "fp32"
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in PRECISIONS:
            raise ConfigError(
                f"unknown precision {self.dtype!r}; choose one of {', '.join(PRECISIONS)}"
            )

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        """The context the forward pass runs in (a no-op for ``fp32``)."""
        if self.dtype == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    def model(self, module: nn.Module) -> nn.Module:
        """``module`` in the memory format asked for (in place; returned for chaining)."""
        if self.channels_last:
            # nn.Module.to accepts memory_format (its type stubs do not say so)
            module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return module

    def input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the memory format asked for (only 4-D tensors have a channels-last one)."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x
