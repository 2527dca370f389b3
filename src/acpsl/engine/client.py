"""The client side of split learning: its model part, its optimizer and its cut scheme.

One SL iteration is four byte strings (docs/ENGINE_API.md): the client's :meth:`forward`
produces the uplink (smashed data + labels), the server answers with the gradient bytes, and
the client's :meth:`backward` finishes the step. The client's scheme instance keeps that
client's own LCIS/ACP history (SPEC section 2: the scoring runs on the device).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from acpsl.cut.labels import encode_labels
from acpsl.cut.state import decode_state_dict, encode_state_dict
from acpsl.data.augment import BatchAugmenter
from acpsl.engine.precision import Precision
from acpsl.engine.schedule import LrSchedule
from acpsl.errors import PayloadError, TrainingError
from acpsl.schemes.base import Scheme


@dataclass(frozen=True)
class Uplink:
    """What a client sends for one training iteration.

    Attributes:
        smashed: the scheme's forward payload (counted as ``bytes_up``).
        labels: the labels payload (counted apart, as ``bytes_labels``).
    """

    smashed: bytes
    labels: bytes


class ClientRuntime:
    """One client: a client-model part, its optimizer and its own scheme instance.

    Several runtimes may share one model and optimizer object (sequential SL, where the
    model is relayed and the hand-off is a round trip through :meth:`export_state` /
    :meth:`import_state` bytes); each always has its own scheme.

    Args:
        client_id: index of the client (the server keeps one decoder per id).
        model: the client part of the split model.
        optimizer: optimizer over ``model``'s parameters.
        scheme: this client's scheme instance (client side of the cut).
        device: where ``model`` lives; inputs are moved there.
        augment: augments each training batch (``--augment``; ``None``: no augmentation).
        precision: autocast and memory format of the forward pass (default: fp32).
        schedule: sets the optimizer's learning rate before each step (``None``: as built).
    """

    def __init__(
        self,
        *,
        client_id: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheme: Scheme,
        device: torch.device | str = "cpu",
        augment: BatchAugmenter | None = None,
        precision: Precision | None = None,
        schedule: LrSchedule | None = None,
    ) -> None:
        self.client_id = int(client_id)
        self.model = model
        self.optimizer = optimizer
        self.scheme = scheme
        self.device = torch.device(device)
        self.augment = augment
        self.precision = precision if precision is not None else Precision()
        self.schedule = schedule
        self._smashed: torch.Tensor | None = None
        self._step: tuple[int, int] = (0, 0)

    def _smash(self, x: torch.Tensor) -> torch.Tensor:
        """The client model's output on ``x`` (already on the device), as float32: what
        crosses the cut is float32 whatever the precision of the computation."""
        with self.precision.autocast(self.device):
            out = self.model(self.precision.input(x))
        return out.float()

    # ------------------------------------------------------------------------- training
    def forward(self, x: torch.Tensor, y: torch.Tensor, *, t: int, total: int) -> Uplink:
        """Client forward of one training batch and its uplink bytes (SPEC section 1, steps 1-4).

        Args:
            x: input batch ``[B, C, H, W]``.
            y: labels ``[B]``.
            t: global iteration of the run, 1-based (eq. 9 of ACP-SL uses ``t / T``).
            total: ``T``, the run's total number of iterations.
        """
        self.model.train()
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        if self.augment is not None:
            x = self.augment(x, step=t)
        smashed = self._smash(x)
        self._step = (t, total)
        self.scheme.set_iteration(t=t, total=total)
        payload = self.scheme.compress(smashed.detach(), labels=y, training=True)
        self._smashed = smashed
        return Uplink(smashed=payload, labels=encode_labels(y))

    def backward(self, down: bytes) -> None:
        """Finish the iteration from the server's gradient bytes (SPEC section 1, step 6).

        The scheme's client-side loss (L1's ``λ Σ|o|``) is added to the backward pass.

        Raises:
            TrainingError: if no :meth:`forward` is waiting for its gradient.
            PayloadError: if ``down`` is malformed or does not match the smashed data.
        """
        smashed = self._smashed
        if smashed is None:
            raise TrainingError(f"client {self.client_id}: backward() called without forward()")
        self._smashed = None
        grad = self.scheme.decompress_grad(down)
        if tuple(grad.shape) != tuple(smashed.shape):
            raise PayloadError(
                f"client {self.client_id}: gradient payload has shape {tuple(grad.shape)}, "
                f"smashed data has {tuple(smashed.shape)}"
            )
        grad = grad.to(device=smashed.device, dtype=smashed.dtype)
        extra = self.scheme.client_loss(smashed)
        self.optimizer.zero_grad(set_to_none=True)
        if extra is None:
            smashed.backward(grad)
        else:
            torch.autograd.backward([smashed, extra], [grad, torch.ones_like(extra)])
        if self.schedule is not None:
            self.schedule.apply(self.optimizer, t=self._step[0], total=self._step[1])
        self.optimizer.step()

    # ------------------------------------------------------------------------ inference
    @torch.no_grad()
    def encode_eval(self, x: torch.Tensor) -> bytes:
        """Uplink payload of a test batch (``training=False``: the scheme's inference mode)."""
        self.model.eval()
        smashed = self._smash(x.to(self.device, non_blocking=True))
        return self.scheme.compress(smashed, labels=None, training=False)

    @torch.no_grad()
    def smash(self, x: torch.Tensor) -> torch.Tensor:
        """The client model's output on ``x`` in eval mode, uncompressed (for comparison)."""
        self.model.eval()
        return self._smash(x.to(self.device, non_blocking=True))

    # ---------------------------------------------------------------- model hand-off
    def export_state(self, *, with_optimizer: bool) -> bytes:
        """The client model's state (and its optimizer's, when relayed) as bytes."""
        state: dict[str, Any] = {"model": self.model.state_dict()}
        if with_optimizer:
            state["optimizer"] = self.optimizer.state_dict()
        return encode_state_dict(state)

    def import_state(self, data: bytes) -> None:
        """Load bytes made by :meth:`export_state` (of this or another client).

        Raises:
            PayloadError: if ``data`` is malformed or does not fit this client's model.
        """
        state = decode_state_dict(data)
        if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
            raise PayloadError("client state payload does not hold a model state")
        try:
            self.model.load_state_dict(state["model"])
            if "optimizer" in state:
                self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise PayloadError(
                f"client state payload does not fit the client model: {exc}"
            ) from None
