"""Any torch ``Dataset`` of ``(x, y)`` seen through the interface the engine uses.

The engine indexes one shared split per run: ``labels`` (for the partitioners, read without
loading images), ``num_classes``, ``shape`` (one sample), ``batch(indices)`` and
``batches(indices, batch_size=)``. :class:`~acpsl.data.dataset.ImageDataset` is kept in
memory; :class:`TorchSplit` wraps a user's dataset: tensors in memory
(``TensorDataset``) are gathered directly, anything else is read through a
``torch.utils.data.DataLoader`` with worker processes, in the run's seeded order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from acpsl.data.dataset import ImageDataset
from acpsl.errors import DataError

log = logging.getLogger(__name__)

#: DataLoader worker processes of a dataset that is not in memory (``workers=`` overrides).
DEFAULT_WORKERS = 2


def read_labels(dataset: Any, *, name: str) -> Tensor:
    """The int64 labels ``[N]`` of ``dataset``, without loading its images where possible.

    Looked up in order: a ``targets`` attribute (torchvision's convention), a ``labels``
    attribute, a ``TensorDataset``'s second tensor, a ``Subset`` of a dataset that has one
    of these; as a last resort every sample is read once (logged as a warning: give the
    dataset a ``.targets`` attribute to avoid it).

    Raises:
        DataError: the labels are not integers, or their count differs from ``len(dataset)``.
    """
    raw: Any = None
    if isinstance(dataset, Subset):
        parent = read_labels(dataset.dataset, name=name)
        raw = parent[torch.as_tensor(list(dataset.indices), dtype=torch.int64)]
    elif isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        raw = dataset.tensors[1]
    else:
        for attr in ("targets", "labels"):
            value = getattr(dataset, attr, None)
            if value is not None and not callable(value):
                raw = value
                break
    if raw is None:
        log.warning(
            "%s: no .targets attribute; reading all %d samples once to learn their labels",
            name,
            len(dataset),
        )
        raw = [int(dataset[i][1]) for i in range(len(dataset))]
    labels = torch.as_tensor(np.asarray(raw))
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.dim() != 1:
        raise DataError(
            f"{name}: labels must be integer class indices [N], got {labels.dtype} of shape "
            f"{tuple(labels.shape)}"
        )
    if labels.numel() != len(dataset):
        raise DataError(f"{name}: {labels.numel()} labels for {len(dataset)} samples")
    return labels.to(torch.int64)


def infer_num_classes(*datasets: Any, labels: Sequence[Tensor]) -> int:
    """``num_classes`` attribute, else ``len(classes)``, else the largest label + 1."""
    for dataset in datasets:
        for source in (dataset, getattr(dataset, "dataset", None)):
            value = getattr(source, "num_classes", None)
            if isinstance(value, int) and value > 0:
                return value
            classes = getattr(source, "classes", None)
            if isinstance(classes, (list, tuple)) and classes:
                return len(classes)
    return max((int(y.max()) + 1 for y in labels if y.numel()), default=1)


class TorchSplit:
    """A torch ``Dataset`` of ``(x, y)`` with the interface of :class:`ImageDataset`.

    Args:
        dataset: any map-style dataset; ``x`` a tensor (the same shape for every sample, the
            model's input), ``y`` an integer class label.
        name: the name used in messages and records.
        num_classes: number of classes (default: :func:`infer_num_classes`).
        labels: the labels, if known (default: :func:`read_labels`).
        workers: DataLoader worker processes when the data is not in memory (0: read in the
            main process).

    Raises:
        DataError: an empty dataset, a sample that is not ``(tensor, label)``, bad labels.
    """

    def __init__(
        self,
        dataset: Dataset[Any],
        *,
        name: str,
        num_classes: int | None = None,
        labels: Tensor | None = None,
        workers: int = DEFAULT_WORKERS,
    ) -> None:
        self.dataset = dataset
        self.name = name
        size = len(dataset)  # type: ignore[arg-type]
        if size < 1:
            raise DataError(f"{name}: the dataset is empty")
        self.labels = read_labels(dataset, name=name) if labels is None else labels
        self.num_classes = (
            infer_num_classes(dataset, labels=[self.labels]) if num_classes is None else num_classes
        )
        low, high = int(self.labels.min()), int(self.labels.max())
        if low < 0 or high >= self.num_classes:
            raise DataError(
                f"{name}: labels must lie in [0, {self.num_classes}), found [{low}, {high}]"
            )
        sample = dataset[0]
        if not (isinstance(sample, (tuple, list)) and len(sample) == 2):
            raise DataError(f"{name}: a sample must be an (x, y) pair, got {type(sample).__name__}")
        if not isinstance(sample[0], Tensor):
            raise DataError(
                f"{name}: x must be a tensor, got {type(sample[0]).__name__} (add a transform "
                "that makes one, e.g. torchvision's ToTensor)"
            )
        self._shape = tuple(int(s) for s in sample[0].shape)
        self.workers = int(workers)
        self.in_memory = isinstance(dataset, TensorDataset)

    def __repr__(self) -> str:
        kind = "in memory" if self.in_memory else f"{self.workers} loader workers"
        return (
            f"TorchSplit(name={self.name!r}, samples={len(self)}, shape={self.shape}, "
            f"num_classes={self.num_classes}, {kind})"
        )

    def __len__(self) -> int:
        return int(self.labels.numel())

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one sample's ``x``."""
        return self._shape

    def batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """The samples at ``indices`` as ``(x [b, ...] float32, y [b] int64)``."""
        idx = torch.as_tensor(indices, dtype=torch.int64)
        if isinstance(self.dataset, TensorDataset):
            x = self.dataset.tensors[0].index_select(0, idx)
        else:
            x = torch.stack([self.dataset[int(i)][0] for i in idx])
        return x.to(torch.float32), self.labels.index_select(0, idx)

    def batches(self, indices: Tensor, *, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """The samples at ``indices``, in that order, ``batch_size`` at a time (the last
        batch may be smaller); through a DataLoader with workers when not in memory."""
        chunks = [c.tolist() for c in torch.as_tensor(indices, dtype=torch.int64).split(batch_size)]
        if self.in_memory or self.workers == 0 or len(chunks) <= 1:
            for chunk in chunks:
                yield self.batch(torch.tensor(chunk, dtype=torch.int64))
            return
        loader = DataLoader(self.dataset, batch_sampler=chunks, num_workers=self.workers)
        for x, y in loader:
            yield x.to(torch.float32), torch.as_tensor(y).to(torch.int64)

    def subset(self, n: int) -> TorchSplit:
        """The first ``n`` samples."""
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(self):
            raise DataError(f"subset size must be an integer in [1, {len(self)}], got {n!r}")
        return TorchSplit(
            Subset(self.dataset, range(n)),
            name=self.name,
            num_classes=self.num_classes,
            labels=self.labels[:n],
            workers=self.workers,
        )


#: A split the engine can train or evaluate on.
Split = ImageDataset | TorchSplit


def as_split(dataset: object, *, name: str, num_classes: int | None = None) -> Split:
    """A dataset builder's split as a :data:`Split` (an :class:`ImageDataset` or
    :class:`TorchSplit` passes through; a torch ``Dataset`` is wrapped).

    Raises:
        DataError: ``dataset`` is not a map-style dataset of ``(x, y)``.
    """
    if isinstance(dataset, (ImageDataset, TorchSplit)):
        return dataset
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        raise DataError(
            f"dataset {name!r}: a builder must return torch Datasets of (x, y), got "
            f"{type(dataset).__name__}"
        )
    return TorchSplit(dataset, name=name, num_classes=num_classes)  # type: ignore[arg-type]
