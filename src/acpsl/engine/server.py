"""The server side of split learning: one server model, one decoder scheme per client.

The server rebuilds each client's smashed data from the uplink bytes alone, runs the rest of
the model, computes the loss (it receives the labels), updates its part of the model every
iteration and returns the gradient w.r.t. the rebuilt smashed data as bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from acpsl.cut.labels import decode_labels
from acpsl.errors import PayloadError, TrainingError
from acpsl.schemes.base import Scheme


class ServerRuntime:
    """The server: its model part, its optimizer and a scheme instance per client.

    Schemes hold the state the downlink needs from the uplink (SPEC section 7, state rule),
    so the server keeps a separate instance for every client, made on first use.

    Args:
        model: the server part of the split model.
        optimizer: optimizer over ``model``'s parameters.
        scheme_factory: builds a fresh server-side scheme instance (called once per client).
        device: where ``model`` lives.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheme_factory: Callable[[], Scheme],
        device: torch.device | str = "cpu",
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.scheme_factory = scheme_factory
        self.device = torch.device(device)
        self.schemes: dict[int, Scheme] = {}

    def scheme(self, client_id: int) -> Scheme:
        """The server-side scheme instance of ``client_id`` (created on first use)."""
        if client_id not in self.schemes:
            self.schemes[client_id] = self.scheme_factory()
        return self.schemes[client_id]

    def _inputs(self, client_id: int, smashed: bytes, labels: bytes) -> tuple[torch.Tensor, ...]:
        x = self.scheme(client_id).decompress(smashed)
        y = decode_labels(labels)
        if x.dim() == 0 or x.shape[0] != y.shape[0]:
            raise PayloadError(
                f"client {client_id}: smashed data of shape {tuple(x.shape)} does not match "
                f"{y.shape[0]} labels"
            )
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def step(self, client_id: int, smashed: bytes, labels: bytes) -> tuple[bytes, float, int]:
        """One server step: decode, forward, loss, backward, optimizer step, encode gradient.

        Args:
            client_id: which client sent the payloads (selects its decoder).
            smashed: the client's forward payload.
            labels: the client's labels payload.

        Returns:
            ``(down, loss, correct)``: gradient payload bytes, the batch's mean cross-entropy
            and how many samples the server model classified correctly.

        Raises:
            PayloadError: if a payload is malformed.
            TrainingError: if the loss is not finite.
        """
        self.model.train()
        x, y = self._inputs(client_id, smashed, labels)
        x.requires_grad_(True)
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise TrainingError(
                f"non-finite training loss ({value}) on client {client_id}'s batch; "
                "the run diverged: lower the learning rate (--lr)"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        grad = x.grad
        assert grad is not None  # x is a leaf that requires grad
        down = self.scheme(client_id).compress_grad(grad)
        correct = int((logits.detach().argmax(dim=1) == y).sum())
        return down, value, correct

    @torch.no_grad()
    def evaluate(self, client_id: int, smashed: bytes, labels: bytes) -> tuple[float, int, int]:
        """Score a test batch sent through the cut.

        Returns:
            ``(loss_sum, correct, count)`` over the batch.
        """
        self.model.eval()
        x, y = self._inputs(client_id, smashed, labels)
        return self.score(x, y)

    @torch.no_grad()
    def score(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int, int]:
        """``(loss_sum, correct, count)`` of the server model (eval mode) on smashed data."""
        self.model.eval()
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        logits = self.model(x)
        loss_sum = float(F.cross_entropy(logits, y, reduction="sum"))
        correct = int((logits.argmax(dim=1) == y).sum())
        return loss_sum, correct, int(y.shape[0])
