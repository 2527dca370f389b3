"""Training-batch augmentation, done on the client per batch (SPEC section 7).

``crop-flip`` is the CIFAR recipe of the RandTopk paper (and of torchvision's
``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()``): pad the image with 4 pixels of
zeros (black, pixel value 0, i.e. ``-mean/std`` once normalized), take a random crop of the
original size, and mirror it left-right with probability 1/2. The whole batch is done at
once with one gather (no per-image Python loop), and its random draws come from a generator
seeded by the run's seed and the global iteration, so a rerun, a resumed run and a networked
run draw the same crops for the same batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from acpsl.config import AUGMENTS
from acpsl.errors import ConfigError

#: Pixels of zero padding before the random crop.
PADDING = 4
#: Tag that keeps the augmentation's seeds apart from the run's other random streams.
_SEED_TAG = 4


def draw_crop_flip(
    batch: int, *, generator: torch.Generator, padding: int = PADDING
) -> tuple[Tensor, Tensor, Tensor]:
    """Random crop offsets and flips of a batch.

    Returns:
        ``(top, left, flip)``: int64 offsets in ``[0, 2 * padding]`` into the padded image and
        a bool flip per sample, each ``[batch]``, on the CPU.
    """
    top = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
    flip = torch.rand(batch, generator=generator) < 0.5
    return top, left, flip


def apply_crop_flip(
    x: Tensor,
    *,
    top: Tensor,
    left: Tensor,
    flip: Tensor,
    fill: float | Sequence[float] | Tensor = 0.0,
    padding: int = PADDING,
) -> Tensor:
    """Pad ``x`` by ``padding`` pixels of ``fill``, crop each image at its ``(top, left)`` and
    mirror the images whose ``flip`` is set (crop first, then flip, as torchvision does).

    Args:
        x: images ``[B, C, H, W]``.
        top: row offset of each crop in the padded image, ``[B]`` in ``[0, 2 * padding]``.
        left: column offset of each crop, ``[B]`` in ``[0, 2 * padding]``.
        flip: mirror left-right, ``[B]`` bool.
        fill: the padding value, one per channel or one for all (in ``x``'s units).
        padding: pixels of padding on each side.

    Returns:
        A new contiguous tensor of ``x``'s shape and dtype.
    """
    if x.dim() != 4:
        raise ConfigError(f"crop-flip augments images [B, C, H, W], got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    hp, wp = h + 2 * padding, w + 2 * padding
    fill_t = torch.as_tensor(fill, dtype=x.dtype, device=x.device).reshape(-1)
    padded = x.new_empty(b, c, hp, wp)
    padded.copy_(fill_t.view(1, -1, 1, 1).expand(b, c, hp, wp))
    padded[:, :, padding : padding + h, padding : padding + w] = x
    dev = x.device
    rows = top.to(dev).view(b, 1) + torch.arange(h, device=dev).view(1, h)
    cols = torch.arange(w, device=dev).view(1, w)
    cols = torch.where(flip.to(dev).view(b, 1), w - 1 - cols, cols) + left.to(dev).view(b, 1)
    index = (rows.view(b, h, 1) * wp + cols.view(b, 1, w)).view(b, 1, h * w).expand(b, c, h * w)
    return padded.view(b, c, hp * wp).gather(2, index).view(b, c, h, w)


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of global iteration ``step`` of a run seeded ``seed``."""
    state = np.random.SeedSequence([int(seed), _SEED_TAG, int(step)]).generate_state(2)
    value = (int(state[0]) << 32 | int(state[1])) & ((1 << 63) - 1)
    return torch.Generator().manual_seed(value)


class BatchAugmenter:
    """``crop-flip`` of training batches, seeded by a run's seed and the global iteration.

    Args:
        seed: the run's seed.
        fill: the padding value per channel, in the units of the batches it will see (for
            normalized batches, ``-mean / std``: a black pixel).
        padding: pixels of padding before the crop.
    """

    def __init__(self, *, seed: int, fill: Sequence[float], padding: int = PADDING) -> None:
        self.seed = int(seed)
        self.fill = tuple(float(v) for v in fill)
        self.padding = int(padding)

    def __call__(self, x: Tensor, *, step: int) -> Tensor:
        """The augmented batch of global iteration ``step`` (same step, same crops)."""
        top, left, flip = draw_crop_flip(
            x.shape[0], generator=step_generator(self.seed, step), padding=self.padding
        )
        return apply_crop_flip(
            x, top=top, left=left, flip=flip, fill=self.fill, padding=self.padding
        )


def make_augmenter(
    name: str, *, seed: int, mean: Sequence[float], std: Sequence[float]
) -> BatchAugmenter | None:
    """The augmenter of ``TrainConfig.augment`` for batches normalized by ``mean``/``std``
    (``None`` for ``none``).

    Raises:
        ConfigError: an unknown name.
    """
    if name == "none":
        return None
    if name == "crop-flip":
        return BatchAugmenter(seed=seed, fill=[-m / s for m, s in zip(mean, std)])
    raise ConfigError(f"unknown augmentation {name!r}; choose one of {', '.join(AUGMENTS)}")
