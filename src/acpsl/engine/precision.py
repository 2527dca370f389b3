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
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from acpsl.config import PRECISIONS
from acpsl.errors import ConfigError

log = logging.getLogger(__name__)


def cpu_has_fast_bf16() -> bool:
    """Whether PyTorch runs bf16 convolutions on this CPU through oneDNN (AVX-512 BF16 or AMX).

    Without it, bf16 autocast falls back to reference im2col convolutions: measured 4.8x
    slower than fp32 on a Zen 3 EPYC (AVX2 only; docs/engine.md, "Which is fast on a CPU").
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN: no fast path either
        return False


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

    def warn_if_slow(self, device: torch.device) -> None:
        """Log a warning when ``bf16`` was asked for on a CPU without oneDNN bf16.

        The run still does what was asked (the option is valid everywhere); the warning says
        why it will be several times slower than fp32 and what to do instead.
        """
        if self.dtype == "bf16" and device.type == "cpu" and not cpu_has_fast_bf16():
            log.warning(
                "precision bf16 on a CPU without oneDNN bf16 (no AVX-512 BF16 / AMX): PyTorch "
                "runs bf16 convolutions in reference kernels, several times slower than fp32 "
                "(4.8x measured on an AVX2 CPU); use --precision fp32 here, bf16 on a GPU or a "
                "CPU with AMX"
            )

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
