"""The in-memory image dataset every client indexes into.

One :class:`ImageDataset` holds a whole split as uint8 pixels; clients hold index tensors into
it, so partitioning a dataset over many clients never copies an image.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from acpsl.errors import ConfigError, DataError


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """A labelled image split kept as uint8 pixels, normalized on the fly per batch.

    Attributes:
        images: uint8 pixels ``[N, C, H, W]``.
        labels: int64 class labels ``[N]``, each in ``[0, num_classes)``.
        num_classes: number of classes of the task (not only those present).
        name: dataset name as registered (``"mnist"``, ``"cifar-10"``, ...).
        mean: per-channel mean of the pixels scaled to ``[0, 1]`` (used to normalize).
        std: per-channel standard deviation of the pixels scaled to ``[0, 1]``.
        class_names: optional human-readable class names (``len == num_classes`` when given).
    """

    images: Tensor
    labels: Tensor
    num_classes: int
    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] = ()
    _scale: Tensor = field(init=False, repr=False, compare=False)
    _shift: Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise DataError(
                f"{self.name}: images must be a uint8 tensor [N, C, H, W], "
                f"got {images.dtype} of shape {tuple(images.shape)}"
            )
        if labels.dtype != torch.int64 or labels.dim() != 1:
            raise DataError(
                f"{self.name}: labels must be an int64 tensor [N], "
                f"got {labels.dtype} of shape {tuple(labels.shape)}"
            )
        if labels.numel() != images.shape[0]:
            raise DataError(
                f"{self.name}: {images.shape[0]} images but {labels.numel()} labels; "
                "the image and label files do not belong together"
            )
        if self.num_classes < 1:
            raise DataError(f"{self.name}: num_classes must be >= 1, got {self.num_classes}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise DataError(
                f"{self.name}: labels must lie in [0, {self.num_classes}), found "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )
        channels = images.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise DataError(
                f"{self.name}: mean/std need one value per channel ({channels}), "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if any(not s > 0 for s in self.std):
            raise DataError(f"{self.name}: every std must be > 0, got {self.std}")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise DataError(
                f"{self.name}: {len(self.class_names)} class names for {self.num_classes} classes"
            )
        # x_norm = (p / 255 - mean) / std = p * scale + shift, one fused multiply-add per batch.
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        object.__setattr__(self, "_scale", 1.0 / (255.0 * std))
        object.__setattr__(self, "_shift", -mean / std)

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, samples={len(self)}, shape={self.shape}, "
            f"num_classes={self.num_classes})"
        )

    def __len__(self) -> int:
        return int(self.labels.numel())

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape ``(C, H, W)`` of one image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """The samples at ``indices``, normalized for a model.

        Args:
            indices: int64 indices into this dataset, any length.

        Returns:
            ``(x, y)``: float32 ``[b, C, H, W]`` with ``(pixel/255 - mean) / std`` per channel,
            and int64 labels ``[b]``.
        """
        idx = torch.as_tensor(indices, dtype=torch.int64)
        if idx.dim() != 1:
            raise ConfigError(f"batch indices must be 1-D, got shape {tuple(idx.shape)}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= len(self)):
            raise ConfigError(
                f"batch indices must lie in [0, {len(self)}) for {self.name}, "
                f"got [{int(idx.min())}, {int(idx.max())}]"
            )
        x = self.images.index_select(0, idx).to(torch.float32)
        x.mul_(self._scale).add_(self._shift)
        return x, self.labels.index_select(0, idx)

    def batches(self, indices: Tensor, *, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """:meth:`batch` of ``indices`` taken ``batch_size`` at a time, in order (the last
        batch may be smaller)."""
        for chunk in torch.as_tensor(indices, dtype=torch.int64).split(batch_size):
            yield self.batch(chunk)

    def subset(self, n: int) -> ImageDataset:
        """The first ``n`` samples, sharing memory with this dataset (views, no copy).

        Raises:
            ConfigError: if ``n`` is not in ``[1, len(self)]``.
        """
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(self):
            raise ConfigError(
                f"subset size must be an integer in [1, {len(self)}] for {self.name}, got {n!r}"
            )
        return ImageDataset(
            images=self.images[:n],
            labels=self.labels[:n],
            num_classes=self.num_classes,
            name=self.name,
            mean=self.mean,
            std=self.std,
            class_names=self.class_names,
        )
