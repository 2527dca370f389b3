"""``dropgroup``: the channel-group ablation of ACP-SL Fig. 2, as a cut scheme.

Fig. 2 of the ACP-SL paper trains ResNet-18 on MNIST while one fixed group of the cut
layer's channels is dropped, and compares the training losses: the groups matter unequally,
and their importance changes over the rounds. This scheme reproduces that experiment through
the same cut as every other scheme: the channels are split into ``groups`` contiguous groups
of (almost) equal size (``numpy.array_split`` sizes, computed arithmetically), the group
``drop`` is zeroed on the server side, and only the other channels' values cross the cut —
in both directions, since the client knows which group is dropped (it is a fixed part of the
experiment, like the channel mask of ACP-SL that is not resent on the downlink).

Payload body (after the common header, see :mod:`acpsl.cut.payload`): ``u16 groups``,
``u16 drop``, then the kept channels' values as float32, ``[B, kept channels, ...]`` in C
order. The gradient payload carries the same two fields and the kept channels' gradients.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import torch

from acpsl.cut.payload import (
    KIND_FORWARD,
    KIND_GRAD,
    PayloadReader,
    ShapeLimit,
    decode_header,
    encode_header,
    float32_array,
)
from acpsl.errors import ConfigError, PayloadError
from acpsl.schemes.base import Scheme
from acpsl.schemes.registry import SCHEMES, register

#: Wire id of the scheme (20: outside the range the built-in schemes use).
DROPGROUP_WIRE_ID = 20


def group_bounds(channels: int, groups: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each of ``groups`` contiguous channel groups.

    Sizes follow ``numpy.array_split``: the first ``channels % groups`` groups have one
    channel more than the rest, so 64 channels in 3 groups are 22, 21 and 21 channels.
    """
    return [group_bound(channels, groups=groups, group=g) for g in range(groups)]


def group_bound(channels: int, *, groups: int, group: int) -> tuple[int, int]:
    """``[start, stop)`` of group ``group`` alone, computed arithmetically (no allocation).

    With ``base, extra = divmod(channels, groups)``, group ``g`` starts at
    ``g * base + min(g, extra)`` and has ``base + (g < extra)`` channels.
    """
    base, extra = divmod(channels, groups)
    start = group * base + min(group, extra)
    return start, start + base + (1 if group < extra else 0)


def kept_channel_mask(channels: int, *, groups: int, drop: int) -> torch.Tensor:
    """Boolean ``[channels]`` mask: ``True`` for channels outside the dropped group."""
    start, stop = group_bound(channels, groups=groups, group=drop)
    mask = torch.ones(channels, dtype=torch.bool)
    mask[start:stop] = False
    return mask


class DropGroupScheme(Scheme):
    """Zero one fixed group of cut-layer channels (ACP-SL Fig. 2's channel-group ablation).

    Args:
        groups: number of contiguous channel groups the ``N`` channels are split into.
        drop: index (0-based) of the group that is dropped, in ``[0, groups)``.
    """

    name = "dropgroup"
    wire_id = DROPGROUP_WIRE_ID

    def __init__(self, *, groups: int = 4, drop: int = 0) -> None:
        super().__init__()
        if isinstance(groups, bool) or not isinstance(groups, int) or not 1 <= groups <= 65535:
            raise ConfigError(f"dropgroup: groups={groups!r} must be an integer in [1, 65535]")
        if isinstance(drop, bool) or not isinstance(drop, int) or not 0 <= drop < groups:
            raise ConfigError(
                f"dropgroup: drop={drop!r} must be a group index in [0, {groups}); "
                "use the standard scheme for the run that drops nothing"
            )
        self.groups = groups
        self.drop = drop
        # What the downlink needs, per side (the Scheme state rule).
        self._client_shape: tuple[int, ...] | None = None
        self._server_shape: tuple[int, ...] | None = None

    # ------------------------------------------------------------------------- helpers
    def _bounds(self, channels: int) -> tuple[int, int]:
        return group_bound(channels, groups=self.groups, group=self.drop)

    def _encode(self, x: torch.Tensor, *, kind: int) -> bytes:
        if x.dim() < 2:
            raise ValueError(
                f"dropgroup needs a batch [B, N, ...] with a channel dimension, got "
                f"{tuple(x.shape)}"
            )
        start, stop = self._bounds(x.shape[1])
        arr = float32_array(x).reshape(x.shape[0], x.shape[1], math.prod(x.shape[2:]))
        header = encode_header(scheme_id=self.wire_id, kind=kind, shape=x.shape)
        parts: list[bytes | memoryview] = [header, struct.pack("<HH", self.groups, self.drop)]
        if stop == start:
            parts.append(arr.data)
        else:
            # Each sample's kept channels are at most two contiguous blocks around the dropped
            # group: join copies them straight into the payload (one copy, single-threaded).
            for sample in arr:
                if start:
                    parts.append(sample[:start].data)
                if stop < len(sample):
                    parts.append(sample[stop:].data)
        return b"".join(parts)

    def _decode(
        self, data: bytes, *, kind: int, what: str, limit: ShapeLimit | None
    ) -> torch.Tensor:
        reader = PayloadReader(data, what=what)
        shape = decode_header(reader, scheme_id=self.wire_id, kind=kind, limit=limit)
        if len(shape) < 2:
            raise PayloadError(f"{what}: declares shape {shape}, needs [B, N, ...]")
        groups, drop = reader.u16(), reader.u16()
        if (groups, drop) != (self.groups, self.drop):
            raise PayloadError(
                f"{what}: made with groups={groups}, drop={drop}; this decoder has "
                f"groups={self.groups}, drop={self.drop}"
            )
        channels = shape[1]
        start, stop = self._bounds(channels)
        kept_shape = (shape[0], channels - (stop - start), *shape[2:])
        # Check the body length against the declared shape before allocating anything sized
        # from the header (a tiny payload could otherwise declare a huge tensor).
        if reader.remaining != 4 * math.prod(kept_shape):
            raise PayloadError(
                f"{what}: body has {reader.remaining} bytes, the declared shape {shape} needs "
                f"{4 * math.prod(kept_shape)}"
            )
        per_channel = math.prod(shape[2:])
        values = reader.view(math.prod(kept_shape), "<f4").reshape(
            shape[0], kept_shape[1], per_channel
        )
        reader.finish()
        # One pass, in NumPy (single-threaded: a multi-threaded torch op can stall for a
        # scheduler time slice on a loaded machine): the kept channels, read straight from the
        # payload, around a zero group.
        out = np.empty((shape[0], channels, per_channel), dtype=np.float32)
        out[:, :start] = values[:, :start]
        out[:, start:stop] = 0.0
        out[:, stop:] = values[:, start:]
        return torch.from_numpy(out.reshape(shape))

    # ---------------------------------------------------------------------------- the cut
    def compress(
        self, x: torch.Tensor, *, labels: torch.Tensor | None = None, training: bool = True
    ) -> bytes:
        data = self._encode(x, kind=KIND_FORWARD)
        self._client_shape = tuple(x.shape)
        channels = x.shape[1]
        start, stop = self._bounds(channels)
        kept = channels - (stop - start)
        per_channel = x[0, 0].numel()
        self._stats = {
            "ratio": 1.0 - kept / channels,
            "kept": float(kept * per_channel),
            "table2_bytes": 4.0 * x.shape[0] * kept * per_channel,
        }
        return data

    def decompress(self, data: bytes) -> torch.Tensor:
        out = self._decode(
            data, kind=KIND_FORWARD, what="dropgroup forward payload", limit=self.limit
        )
        self._server_shape = tuple(out.shape)
        return out

    def compress_grad(self, g: torch.Tensor) -> bytes:
        if self._server_shape is not None and tuple(g.shape) != self._server_shape:
            raise ValueError(
                f"dropgroup: gradient shape {tuple(g.shape)} differs from the last uplink's "
                f"{self._server_shape}"
            )
        return self._encode(g, kind=KIND_GRAD)

    def decompress_grad(self, data: bytes) -> torch.Tensor:
        sent = None if self._client_shape is None else ShapeLimit.exact(self._client_shape)
        out = self._decode(data, kind=KIND_GRAD, what="dropgroup gradient payload", limit=sent)
        if self._client_shape is not None and tuple(out.shape) != self._client_shape:
            raise PayloadError(
                f"dropgroup gradient payload has shape {tuple(out.shape)}, the last uplink "
                f"had {self._client_shape}"
            )
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"groups": self.groups, "drop": self.drop}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state.get("groups"), state.get("drop")) != (self.groups, self.drop):
            raise ConfigError(
                f"dropgroup state is for groups={state.get('groups')}, drop={state.get('drop')}; "
                f"this scheme has groups={self.groups}, drop={self.drop}"
            )


def ensure_registered() -> None:
    """Register ``dropgroup`` in the scheme registry (idempotent).

    Importing :mod:`acpsl.experiments` calls it, so worker processes that import the
    experiments package can build the scheme by name.
    """
    if DropGroupScheme.name not in SCHEMES:
        register(DropGroupScheme.name)(DropGroupScheme)


ensure_registered()
