"""The dataset registry: ``load_dataset(name, *, root, train)`` and ``names()``.

A dataset is registered as a loader function taking keyword arguments
``root`` (the dataset folder's parent), ``train``, ``download``, ``verify``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from acpsl.config import default_data_dir
from acpsl.data.dataset import ImageDataset
from acpsl.registry import Registry


class DatasetLoader(Protocol):
    """What a registered dataset loader is called with."""

    def __call__(
        self, *, root: Path, train: bool, download: bool, verify: bool
    ) -> ImageDataset: ...


DATASETS: Registry[ImageDataset] = Registry("dataset")


def register(name: str) -> Callable[[DatasetLoader], DatasetLoader]:
    """Decorator: register a dataset loader under ``name`` (raises on a duplicate)."""

    def decorator(loader: DatasetLoader) -> DatasetLoader:
        DATASETS.register(name)(loader)
        return loader

    return decorator


def names() -> list[str]:
    """Registered dataset names."""
    return DATASETS.names()


def load_dataset(
    name: str,
    *,
    root: str | os.PathLike[str] | None = None,
    train: bool,
    download: bool = False,
    verify: bool = True,
) -> ImageDataset:
    """Load the train or test split of dataset ``name`` from its upstream files.

    Args:
        name: a registered name (``mnist``, ``fashion-mnist``, ``cifar-10``, ``cifar-100``,
            ``digits``).
        root: folder holding one folder per dataset (``mnist/``, ``cifar-10/`` ...);
            default ``$ACPSL_DATA``, else ``./data``.
        train: the training split if true, else the test split.
        download: fetch missing files from upstream (md5-checked) instead of failing.
        verify: check md5 values where upstream publishes them (cached per file).

    Raises:
        ConfigError: unknown dataset name.
        DataError: files missing (the message names them and the folder), corrupt, or not
            downloadable.
    """
    loader = DATASETS.get(name)
    base = Path(root if root is not None else default_data_dir()).expanduser()
    return loader(root=base, train=train, download=download, verify=verify)
