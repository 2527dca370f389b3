"""The one interface every cut scheme implements (SPEC section 7).

A scheme turns the smashed-data batch into ``bytes`` on the client (:meth:`Scheme.compress`)
and rebuilds a tensor from those bytes alone on the server (:meth:`Scheme.decompress`); the
gradient goes back the same way (:meth:`Scheme.compress_grad` on the server,
:meth:`Scheme.decompress_grad` on the client). Traffic is ``len()`` of those bytes.

State rule, so that one class serves both the in-process loop and two processes on a network:
whatever the downlink needs from the uplink (a mask, indices) is remembered both by
``compress`` (client side) and by ``decompress`` (server side). ``compress_grad`` uses what the
last ``decompress`` saw; ``decompress_grad`` uses what the last ``compress`` produced.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from acpsl.cut.payload import ShapeLimit


class Scheme(ABC):
    """Base class of compression schemes on the cut.

    Subclasses set ``name`` (the registry name) and ``wire_id`` (a byte unique among schemes,
    written in every payload header so a payload says which scheme made it).
    """

    name: ClassVar[str] = ""
    wire_id: ClassVar[int] = 0
    #: Whether the scheme reads ``t``/``T`` of :meth:`set_iteration` (ACP-SL's eq. 9), so a
    #: caller that does not know ``T`` must not guess it (``acpsl.CutLayer`` refuses).
    uses_iteration: ClassVar[bool] = False

    def __init__(self) -> None:
        self.iteration = 0
        self.total_iterations = 1
        self._stats: dict[str, float] = {}
        #: The uplink shapes :meth:`decompress` accepts (``None``: any, within the bound of
        #: :data:`acpsl.cut.payload.MAX_EXPANSION`); set with :meth:`expect`.
        self.limit: ShapeLimit | None = None

    def expect(self, limit: ShapeLimit | None) -> None:
        """Make :meth:`decompress` refuse, before decoding anything, an uplink whose declared
        shape is outside ``limit`` (the server's cut shape and batch size); ``None`` lifts it.

        Every decoder passes :attr:`limit` to :func:`acpsl.cut.payload.decode_header`.
        """
        self.limit = limit

    # ----------------------------------------------------------------------------- progress
    def set_iteration(self, *, t: int, total: int) -> None:
        """Tell the scheme the run's global iteration ``t`` (1-based) of ``total``.

        ACP-SL needs it for eq. 9 (``alpha_t = 1 - t / T``); other schemes ignore it.
        """
        self.iteration = int(t)
        self.total_iterations = max(1, int(total))

    # ---------------------------------------------------------------------------- the cut
    @abstractmethod
    def compress(
        self, x: torch.Tensor, *, labels: torch.Tensor | None = None, training: bool = True
    ) -> bytes:
        """Encode the smashed-data batch ``x`` (shape ``[B, ...]``) into the uplink payload.

        Args:
            x: cut-layer activations of one batch.
            labels: the batch's labels; label-aware schemes (ACP-SL) need them in training.
            training: ``False`` selects the scheme's inference behaviour.
        """

    @abstractmethod
    def decompress(self, data: bytes) -> torch.Tensor:
        """Rebuild the smashed data from the uplink payload alone (server side).

        Raises:
            acpsl.PayloadError: if ``data`` is malformed.
        """

    @abstractmethod
    def compress_grad(self, g: torch.Tensor) -> bytes:
        """Encode the gradient w.r.t. the rebuilt smashed data (server side, downlink)."""

    @abstractmethod
    def decompress_grad(self, data: bytes) -> torch.Tensor:
        """Rebuild the gradient for the client's most recent :meth:`compress`.

        Raises:
            acpsl.PayloadError: if ``data`` is malformed or does not match the last uplink.
        """

    # ------------------------------------------------------------------------------ extras
    def client_loss(self, x: torch.Tensor) -> torch.Tensor | None:
        """An extra loss term computed on the client from its smashed data (L1's ``λ Σ|o|``).

        Returns ``None`` for schemes without one.
        """
        return None

    def stats(self) -> dict[str, float]:
        """Numbers about the most recent ``compress``, for the run's records.

        Keys a scheme may report: ``ratio`` (fraction of channels or values dropped),
        ``table2_bytes`` (the papers' size formula for this payload, a check beside the real
        bytes), ``bound_bytes`` (the information bound ``log2 C(d, k) / 8`` of the indices plus
        the values), ``kept`` (values or channels sent per sample).
        """
        return dict(self._stats)

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint (score histories, RNG state); empty for stateless schemes."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        del state
