"""The dataset registry: ``load_dataset(name, *, root, train)`` and ``names()``.

A registered dataset is a function called with the keyword arguments it takes among
``root`` (the data directory: one folder per dataset), ``train``, ``download`` and
``verify``. One that takes ``train`` returns that split; one that does not returns the pair
``(train, test)``. A split is an :class:`ImageDataset` or any torch ``Dataset`` of ``(x, y)``
(wrapped in a :class:`~acpsl.data.torch_split.TorchSplit`). ``name`` may also be a
``MODULE:FUNCTION`` plug-in (:mod:`acpsl.plugins`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from acpsl import plugins
from acpsl.config import default_data_dir
from acpsl.data.dataset import ImageDataset
from acpsl.data.torch_split import (
    Split,
    TorchSplit,
    as_split,
    infer_num_classes,
    read_labels,
)
from acpsl.errors import DataError
from acpsl.registry import Registry


class DatasetLoader(Protocol):
    """What a registered dataset loader is called with."""

    def __call__(
        self, *, root: Path, train: bool, download: bool, verify: bool
    ) -> ImageDataset: ...


DATASETS: Registry[Any] = Registry("dataset")

#: Pairs built by ``(train, test)`` builders, so the two splits come from one call.
_PAIRS: dict[tuple[int, str, bool], tuple[Split, Split]] = {}
_PAIRS_LOCK = threading.Lock()


def register(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register a dataset under ``name`` (raises on a duplicate).

    The function takes keyword arguments among ``root``, ``train``, ``download`` and
    ``verify``; with ``train`` it returns that split, without it the pair ``(train, test)``.
    Splits are :class:`ImageDataset` or torch Datasets of ``(x, y)`` (docs/data.md).
    """

    def decorator(loader: Callable[..., Any]) -> Callable[..., Any]:
        DATASETS.register(name)(loader)
        return loader

    return decorator


def resolve(name: str) -> Callable[..., Any]:
    """The loader of ``name``: a registered name or a ``MODULE:FUNCTION`` plug-in.

    Raises:
        ConfigError: unknown name, or a plug-in that cannot be imported.
    """
    if plugins.is_reference(name):
        return plugins.resolve(
            name, kind="dataset", registered=lambda n: DATASETS.get(n) if n in DATASETS else None
        )
    return DATASETS.get(name)


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
) -> Split:
    """Load the train or test split of dataset ``name``.

    Args:
        name: a registered name (``mnist``, ``fashion-mnist``, ``cifar-10``, ``cifar-100``,
            ``digits``, or one a plug-in registered) or a ``MODULE:FUNCTION`` plug-in.
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
    loader = resolve(name)
    base = Path(root if root is not None else default_data_dir()).expanduser()
    values = {"root": base, "train": train, "download": download, "verify": verify}
    kwargs = plugins.accepted_kwargs(loader, values)
    if "train" in kwargs:
        return as_split(loader(**kwargs), name=name)
    key = (id(loader), str(base.resolve()), download)
    with _PAIRS_LOCK:
        pair = _PAIRS.get(key)
        if pair is None:
            pair = _as_pair(loader(**kwargs), name=name)
            _PAIRS.clear()  # keep one pair: a builder's datasets may be large
            _PAIRS[key] = pair
    return pair[0] if train else pair[1]


def _as_pair(built: object, *, name: str) -> tuple[Split, Split]:
    """A builder's ``(train, test)`` as two splits that agree on ``num_classes``."""
    if not (isinstance(built, (tuple, list)) and len(built) == 2):
        raise DataError(
            f"dataset {name!r}: the builder returned {type(built).__name__}; return a "
            "(train, test) pair of torch Datasets of (x, y)"
        )
    for d in built:
        if not (hasattr(d, "__getitem__") and hasattr(d, "__len__")):
            raise DataError(
                f"dataset {name!r}: a builder must return torch Datasets of (x, y), got "
                f"{type(d).__name__}"
            )
    labels = [
        d.labels if isinstance(d, (ImageDataset, TorchSplit)) else read_labels(d, name=name)
        for d in built
    ]
    known = [d.num_classes for d in built if isinstance(d, (ImageDataset, TorchSplit))]
    classes = max(known) if known else infer_num_classes(*built, labels=labels)
    train, test = (
        d if isinstance(d, (ImageDataset, TorchSplit)) else _wrap(d, name, classes, y)
        for d, y in zip(built, labels)
    )
    return train, test


def _wrap(dataset: Any, name: str, classes: int, labels: Any) -> TorchSplit:
    return TorchSplit(dataset, name=name, num_classes=classes, labels=labels)
