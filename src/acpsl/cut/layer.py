"""``acpsl.CutLayer``: a scheme's cut as an ``nn.Module`` inside any PyTorch model (SPEC 7).

The layer holds two instances of the scheme, as the engine does: the client's (it encodes
the smashed data and decodes the gradient) and the server's (it rebuilds the smashed data
and encodes the gradient). In training the forward output is
``server.decompress(client.compress(h))`` and the backward hands the input
``client.decompress_grad(server.compress_grad(g))``, through a custom
:class:`torch.autograd.Function`; every payload is real ``bytes`` whose ``len()`` is counted.
The numbers match :class:`~acpsl.engine.client.ClientRuntime` and
:class:`~acpsl.engine.server.ServerRuntime` exactly (tests/test_cut_layer.py checks it for
every registered scheme).

Example::

    cut = acpsl.CutLayer("acp", total_iterations=epochs * len(loader))
    h = cut(client_part(x), labels=y)          # labels: ACP-SL's LCIS scores need them
    loss = F.cross_entropy(server_part(h), y) + cut.extra_loss()
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn

from acpsl.cut.labels import encode_labels
from acpsl.cut.payload import ShapeLimit
from acpsl.errors import ConfigError, PayloadError
from acpsl.schemes.base import Scheme

log = logging.getLogger(__name__)


class _Cut(torch.autograd.Function):
    """Forward: uplink encode/decode; backward: downlink encode/decode (bytes both ways)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, h: torch.Tensor, layer: CutLayer, labels: torch.Tensor | None
    ) -> torch.Tensor:
        payload = layer.client.compress(h.detach(), labels=labels, training=True)
        layer.bytes_up += len(payload)
        # the server decodes under the shape really sent, not the generic expansion cap
        layer.server.expect(ShapeLimit.exact(h.shape))
        rebuilt = layer.server.decompress(payload)
        ctx.layer = layer
        ctx.shape = tuple(h.shape)
        ctx.device, ctx.dtype = h.device, h.dtype
        return rebuilt.to(device=h.device, dtype=h.dtype)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        layer: CutLayer = ctx.layer
        # The engine's server differentiates a float32 leaf; the gradient crosses as float32.
        down = layer.server.compress_grad(g.detach().to(torch.float32))
        layer.bytes_down += len(down)
        grad = layer.client.decompress_grad(down)
        if tuple(grad.shape) != ctx.shape:
            raise PayloadError(
                f"CutLayer: gradient payload has shape {tuple(grad.shape)}, the input had "
                f"{ctx.shape}"
            )
        return grad.to(device=ctx.device, dtype=ctx.dtype), None, None


class CutLayer(nn.Module):
    """Put a compression scheme's cut inside any model: ``h = cut(h, labels=y)``.

    In ``train()`` mode the output is the server's rebuild of the client's uplink payload and
    the input's gradient is the client's rebuild of the server's downlink payload, so the
    model trains exactly as split learning with that scheme would. In ``eval()`` mode the
    scheme's inference behaviour is used (``training=False``, no labels) and no gradient
    flows back. Payloads are CPU ``bytes``; the rebuilt tensor and gradient go back to the
    input's device and dtype.

    Args:
        scheme: a registered scheme name (``acpsl.schemes.names()``) or a
            :class:`~acpsl.schemes.base.Scheme` instance (the client side; the server side is
            a deep copy unless ``server_scheme`` is given).
        total_iterations: ``T`` of ACP-SL's eq. 9 (``alpha_t = 1 - t/T``): the number of
            training forwards of the whole run (epochs x batches per epoch). Schemes that use
            it refuse to train without it (or a :meth:`set_iteration` call).
        seed: the run's seed; with a scheme name the two instances get the seeds the engine
            gives client 0 and its server-side decoder (:func:`acpsl.engine.setup.derive_seed`).
            A ``seed`` inside ``params`` is passed to the scheme as is.
        server_scheme: the server-side instance, when ``scheme`` is an instance.
        **params: the scheme's keyword parameters (with a scheme name).

    Attributes:
        bytes_up: cumulative bytes of the training uplink payloads (smashed data).
        bytes_down: cumulative bytes of the downlink payloads (gradients).
        bytes_labels: cumulative bytes the labels would take on the wire (the engine sends
            them beside the smashed data and counts them apart).
        bytes_eval: cumulative bytes of the uplink payloads in ``eval()`` mode.
        iteration: training forwards done (the next one is iteration ``iteration + 1``).
    """

    def __init__(
        self,
        scheme: str | Scheme,
        *,
        total_iterations: int | None = None,
        seed: int = 0,
        server_scheme: Scheme | None = None,
        **params: Any,
    ) -> None:
        super().__init__()
        if isinstance(scheme, Scheme):
            if params:
                raise ConfigError(
                    "CutLayer: scheme parameters go to acpsl.schemes.create(name, ...) when "
                    f"the scheme is given as an instance; got {', '.join(sorted(params))}"
                )
            client = scheme
            server = server_scheme if server_scheme is not None else copy.deepcopy(scheme)
        elif isinstance(scheme, str):
            if server_scheme is not None:
                raise ConfigError("CutLayer: server_scheme only goes with a scheme instance")
            from acpsl.engine.setup import (
                SEED_CLIENT_SCHEME,
                SEED_SERVER_SCHEME,
                derive_seed,
                make_scheme,
            )

            client = make_scheme(
                scheme, dict(params), seed=derive_seed(seed, SEED_CLIENT_SCHEME, 0)
            )
            server = make_scheme(
                scheme, dict(params), seed=derive_seed(seed, SEED_SERVER_SCHEME, 0)
            )
        else:
            raise ConfigError(
                f"CutLayer: scheme must be a name or an acpsl Scheme, not {type(scheme).__name__}"
            )
        if total_iterations is not None:
            _check_total(total_iterations)
        self.client = client
        self.server = server
        self.total_iterations = total_iterations
        self.iteration = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.bytes_labels = 0
        self.bytes_eval = 0
        self._extra: torch.Tensor | None = None

    # --------------------------------------------------------------------------- progress
    def set_iteration(self, *, t: int, total: int) -> None:
        """Make the next training forward global iteration ``t`` (1-based) of ``total``.

        The layer counts on from there by itself; ``total`` is ``T`` of ACP-SL's eq. 9.
        """
        if isinstance(t, bool) or not isinstance(t, int) or t < 1:
            raise ConfigError(f"CutLayer.set_iteration: t must be an integer >= 1, got {t!r}")
        _check_total(total)
        self.iteration = t - 1
        self.total_iterations = total

    # ------------------------------------------------------------------------------ forward
    def forward(self, h: torch.Tensor, *, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The rebuilt smashed data (train: through the cut both ways; eval: inference).

        Args:
            h: the smashed data ``[B, ...]`` (the client part's output).
            labels: the batch's labels ``[B]``; label-aware schemes (ACP-SL) need them in
                training. Ignored in ``eval()`` mode (the client does not know test labels).
        """
        if not self.training:
            with torch.no_grad():
                payload = self.client.compress(h.detach(), labels=None, training=False)
                self.bytes_eval += len(payload)
                self.server.expect(ShapeLimit.exact(h.shape))
                rebuilt = self.server.decompress(payload)
            return rebuilt.to(device=h.device, dtype=h.dtype)
        t = self.iteration + 1
        total = self.total_iterations
        if total is None:
            if getattr(self.client, "uses_iteration", False):
                raise ConfigError(
                    f"CutLayer({self.client.name!r}) needs T for eq. 9 of ACP-SL: pass "
                    "total_iterations= (epochs x batches per epoch) or call "
                    "cut.set_iteration(t=, total=)"
                )
            total = t
        self.client.set_iteration(t=t, total=total)
        self.iteration = t
        if labels is not None:
            labels = labels.to(h.device)
            self.bytes_labels += len(encode_labels(labels))
        out: torch.Tensor = _Cut.apply(h, self, labels)
        self._extra = self.client.client_loss(h)
        return out

    def extra_loss(self) -> torch.Tensor:
        """The scheme's client-side loss term of the last training forward (L1's ``λ Σ|o|``).

        Add it to the task loss before ``backward()``; it is 0 for schemes without one (and
        before any training forward), so a loop can always add it.
        """
        if self._extra is None:
            return torch.zeros(())
        return self._extra

    # ------------------------------------------------------------------------------ numbers
    def reset_bytes(self) -> None:
        """Set every byte counter back to 0 (the iteration count is kept)."""
        self.bytes_up = self.bytes_down = self.bytes_labels = self.bytes_eval = 0

    def stats(self) -> dict[str, float]:
        """The byte counters, the iteration, and the scheme's numbers about its last compress
        (``ratio``, ``kept``, ``table2_bytes``, ... as :meth:`Scheme.stats` documents)."""
        return {
            **self.client.stats(),
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "bytes_labels": self.bytes_labels,
            "bytes_eval": self.bytes_eval,
            "iteration": self.iteration,
        }

    def get_extra_state(self) -> dict[str, Any]:
        """What the module's ``state_dict`` carries: both schemes' states (LCIS/ACP
        histories, RNG), the iteration counters and the byte counters."""
        return {
            "client": self.client.state_dict(),
            "server": self.server.state_dict(),
            "iteration": self.iteration,
            "total_iterations": self.total_iterations,
            "bytes": [self.bytes_up, self.bytes_down, self.bytes_labels, self.bytes_eval],
        }

    def set_extra_state(self, state: Any) -> None:
        """Restore what :meth:`get_extra_state` returned."""
        self.client.load_state_dict(state["client"])
        self.server.load_state_dict(state["server"])
        self.iteration = int(state["iteration"])
        self.total_iterations = state["total_iterations"]
        self.bytes_up, self.bytes_down, self.bytes_labels, self.bytes_eval = (
            int(v) for v in state["bytes"]
        )

    def extra_repr(self) -> str:
        return f"scheme={self.client.name!r}, iteration={self.iteration}"


def _check_total(total: object) -> None:
    if isinstance(total, bool) or not isinstance(total, int) or total < 1:
        raise ConfigError(f"CutLayer: total_iterations must be an integer >= 1, got {total!r}")
