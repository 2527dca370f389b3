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
from acpsl.cut.payload import ShapeLimit, peek_shape
from acpsl.engine.precision import Precision
from acpsl.engine.schedule import LrSchedule
from acpsl.errors import PayloadError, TrainingError
from acpsl.schemes.base import Scheme
from acpsl.schemes.perinstance import all_finite


class NonFiniteSmashedError(PayloadError, TrainingError):
    """Smashed data holding NaN or infinity.

    A :class:`~acpsl.errors.PayloadError` (the server refuses the input: over the network the
    request is rejected and the run goes on) and a :class:`~acpsl.errors.TrainingError` (in
    process it means the client model diverged, and the run stops as for a non-finite loss).
    """


def _infer_classes(model: nn.Module) -> int | None:
    """Output width of the last ``nn.Linear`` of ``model`` (the classifier head), if any."""
    last: int | None = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = int(module.out_features)
    return last


@torch.no_grad()
def probe_cut_shape(
    model: nn.Module, *, input_shape: tuple[int, ...], device: torch.device | str = "cpu"
) -> tuple[int, ...]:
    """The per-sample shape of ``model``'s output (the smashed data at the cut).

    One forward pass of a single zero sample in eval mode (no batch-norm statistics change,
    no random number is drawn); the model's train/eval mode is restored afterwards.

    Args:
        model: the client part of the split model.
        input_shape: the shape of one input sample (e.g. ``(1, 28, 28)``).
        device: where ``model`` lives.
    """
    was_training = model.training
    model.eval()
    try:
        out = model(torch.zeros((1, *input_shape), device=device))
    finally:
        model.train(was_training)
    return tuple(int(s) for s in out.shape[1:])


class ServerRuntime:
    """The server: its model part, its optimizer and a scheme instance per client.

    Schemes hold the state the downlink needs from the uplink (SPEC section 7, state rule),
    so the server keeps a separate instance for every client, made on first use.

    Args:
        model: the server part of the split model.
        optimizer: optimizer over ``model``'s parameters.
        scheme_factory: builds a fresh server-side scheme instance (called once per client).
        device: where ``model`` lives.
        num_classes: number of classes; labels outside ``[0, num_classes)`` are refused.
            ``None``: the width of ``model``'s last ``nn.Linear``.
        cut_shape: the per-sample shape of the smashed data (the client model's output
            without the batch dimension; :func:`probe_cut_shape`). With ``max_batch``, an
            uplink declaring another shape, or more samples, is refused before it is decoded
            (a tiny payload must not make the server allocate a huge tensor). ``None``: any
            shape, within the decoders' own bound.
        max_batch: the largest batch accepted (the run's batch size).
        precision: autocast and memory format of the forward pass (default: fp32).
        schedule: sets the optimizer's learning rate before each step (``None``: as built).
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheme_factory: Callable[[], Scheme],
        device: torch.device | str = "cpu",
        num_classes: int | None = None,
        cut_shape: tuple[int, ...] | None = None,
        max_batch: int | None = None,
        precision: Precision | None = None,
        schedule: LrSchedule | None = None,
    ) -> None:
        self.model = model
        self.precision = precision if precision is not None else Precision()
        self.schedule = schedule
        self.num_classes = num_classes if num_classes is not None else _infer_classes(model)
        self.optimizer = optimizer
        self.scheme_factory = scheme_factory
        self.device = torch.device(device)
        self.schemes: dict[int, Scheme] = {}
        self.cut_shape = None if cut_shape is None else tuple(int(s) for s in cut_shape)
        self.max_batch = max_batch

    @property
    def limit(self) -> ShapeLimit | None:
        """The uplink shapes accepted (from :attr:`cut_shape` and :attr:`max_batch`), if known."""
        if self.cut_shape is None:
            return None
        return ShapeLimit(
            # an empty batch passes here and is refused, by name, with its labels
            sample_shape=self.cut_shape,
            max_batch=self.max_batch or 2**31 - 1,
            min_batch=0,
        )

    def scheme(self, client_id: int) -> Scheme:
        """The server-side scheme instance of ``client_id`` (created on first use; its decoder
        expects :attr:`limit`)."""
        if client_id not in self.schemes:
            scheme = self.scheme_factory()
            scheme.expect(self.limit)
            self.schemes[client_id] = scheme
        return self.schemes[client_id]

    def check_shapes(self, smashed: bytes, labels: bytes, *, who: str) -> None:
        """Refuse, from their headers alone, an uplink whose declared shape is not the cut's
        or whose batch (of smashed data or labels) exceeds :attr:`max_batch`: before any
        decoder runs, whatever the scheme (a plug-in's included).

        Raises:
            PayloadError: naming the declared and the expected shape.
        """
        limit = self.limit
        if limit is not None:
            limit.check(
                peek_shape(smashed, what=f"{who}: smashed data"), what=f"{who}: smashed data"
            )
        if self.max_batch is not None:
            count = peek_shape(labels, what=f"{who}: labels")
            if len(count) == 1 and count[0] > self.max_batch:
                raise PayloadError(
                    f"{who}: labels payload declares {count[0]} labels, this run's batch size "
                    f"is {self.max_batch}"
                )

    def _inputs(self, client_id: int, smashed: bytes, labels: bytes) -> tuple[torch.Tensor, ...]:
        """Decode and check one batch: non-empty, as many labels as samples, labels in range,
        finite values. Nothing of the model is touched before these checks pass.

        Raises:
            PayloadError: a payload is malformed or the batch is unusable (see above);
                :class:`NonFiniteSmashedError` for NaN or infinite smashed data.
        """
        who = f"client {client_id}"
        self.check_shapes(smashed, labels, who=who)
        y = decode_labels(labels)
        if y.shape[0] == 0:
            raise PayloadError(f"{who}: empty batch (0 labels); send at least one sample")
        classes = self.num_classes
        if classes is not None:
            low, high = int(y.min()), int(y.max())
            if low < 0 or high >= classes:
                raise PayloadError(
                    f"{who}: labels in [{low}, {high}] lie outside the {classes} classes "
                    f"[0, {classes})"
                )
        x = self.scheme(client_id).decompress(smashed)
        if x.dim() == 0 or x.shape[0] != y.shape[0]:
            raise PayloadError(
                f"{who}: smashed data of shape {tuple(x.shape)} does not match {y.shape[0]} labels"
            )
        if x.is_floating_point() and not all_finite(x):
            bad = int((~torch.isfinite(x)).sum())
            raise NonFiniteSmashedError(
                f"{who}: smashed data holds {bad} NaN or infinite values (a diverged client "
                "model: lower the learning rate (--lr))"
            )
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """The server model's float32 logits on rebuilt smashed data ``x``."""
        with self.precision.autocast(self.device):
            return self.model(self.precision.input(x)).float()

    def step(
        self,
        client_id: int,
        smashed: bytes,
        labels: bytes,
        *,
        t: int | None = None,
        total: int | None = None,
    ) -> tuple[bytes, float, int]:
        """One server step: decode, forward, loss, backward, optimizer step, encode gradient.

        Args:
            client_id: which client sent the payloads (selects its decoder).
            smashed: the client's forward payload.
            labels: the client's labels payload.
            t: the global iteration (1-based), for the learning-rate schedule.
            total: the run's total iterations ``T``, for the learning-rate schedule.

        Returns:
            ``(down, loss, correct)``: gradient payload bytes, the batch's mean cross-entropy
            and how many samples the server model classified correctly.

        Raises:
            PayloadError: if a payload is malformed or the batch unusable (empty, labels out
                of range or not matching the samples, non-finite smashed data).
            TrainingError: if the loss is not finite. The step is not applied: the model,
                its buffers (batch-norm statistics) and the optimizer are left as they were.
        """
        self.model.train()
        x, y = self._inputs(client_id, smashed, labels)
        x.requires_grad_(True)
        buffers = [b.detach().clone() for b in self.model.buffers()]
        logits = self._logits(x)
        if self.num_classes is None and int(y.max()) >= logits.shape[-1]:
            self._restore_buffers(buffers)
            raise PayloadError(
                f"client {client_id}: labels up to {int(y.max())} for {logits.shape[-1]} classes"
            )
        loss = F.cross_entropy(logits, y)
        value = float(loss.detach())
        if not math.isfinite(value):
            self._restore_buffers(buffers)
            raise TrainingError(
                f"non-finite training loss ({value}) on client {client_id}'s batch; "
                "the run diverged: lower the learning rate (--lr)"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.schedule is not None and t is not None and total is not None:
            self.schedule.apply(self.optimizer, t=t, total=total)
        self.optimizer.step()
        grad = x.grad
        assert grad is not None  # x is a leaf that requires grad
        down = self.scheme(client_id).compress_grad(grad)
        correct = int((logits.detach().argmax(dim=1) == y).sum())
        return down, value, correct

    @torch.no_grad()
    def _restore_buffers(self, saved: list[torch.Tensor]) -> None:
        for buffer, value in zip(self.model.buffers(), saved):
            buffer.copy_(value)

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
        """``(loss_sum, correct, count)`` of the server model (eval mode) on smashed data.

        Raises:
            PayloadError: the batch is empty or a label lies outside the model's classes.
        """
        self.model.eval()
        if y.numel() == 0:
            raise PayloadError("empty evaluation batch (0 samples)")
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        logits = self._logits(x)
        if int(y.min()) < 0 or int(y.max()) >= logits.shape[-1]:
            raise PayloadError(
                f"evaluation labels in [{int(y.min())}, {int(y.max())}] lie outside the "
                f"{logits.shape[-1]} classes"
            )
        loss_sum = float(F.cross_entropy(logits, y, reduction="sum"))
        correct = int((logits.argmax(dim=1) == y).sum())
        return loss_sum, correct, int(y.shape[0])
