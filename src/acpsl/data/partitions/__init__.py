"""Partitions of a dataset among split-learning clients (SPEC section 5).

``partition(name, *, labels, clients, seed, beta)`` builds the registered partitioner and
returns one sorted int64 index tensor per client (disjoint, covering, non-empty).
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
from torch import Tensor

from acpsl.data.partitions import dirichlet as _dirichlet  # noqa: F401  (registers "dirichlet")
from acpsl.data.partitions import iid as _iid  # noqa: F401  (registers "iid")
from acpsl.data.partitions.base import PARTITIONERS, Partitioner, register
from acpsl.data.partitions.dirichlet import DirichletPartitioner
from acpsl.data.partitions.histogram import (
    format_histogram,
    label_histogram,
    label_skew,
    save_histogram,
)
from acpsl.data.partitions.iid import IidPartitioner


def partition(
    name: str,
    *,
    labels: Tensor | np.ndarray,
    clients: int,
    seed: int,
    beta: float = 0.5,
    **params: Any,
) -> list[Tensor]:
    """Split a dataset's indices among clients with the partitioner registered as ``name``.

    Args:
        name: ``iid`` or ``dirichlet`` (see :func:`partitioner_names`).
        labels: int class labels ``[N]`` of the dataset.
        clients: number of clients.
        seed: seed of every random choice.
        beta: Dirichlet concentration; passed only to partitioners that take it.
        **params: further keyword parameters of the partitioner.

    Returns:
        ``clients`` sorted int64 index tensors: disjoint, covering ``0..N-1``, non-empty.

    Raises:
        ConfigError: unknown name, bad parameters, or more clients than samples.
    """
    factory = PARTITIONERS.get(name)
    if "beta" in inspect.signature(factory).parameters:
        params["beta"] = beta
    partitioner = PARTITIONERS.create(name, clients=clients, seed=seed, **params)
    return partitioner.split(labels)


def partitioner_names() -> list[str]:
    """Registered partitioner names."""
    return PARTITIONERS.names()


__all__ = [
    "PARTITIONERS",
    "DirichletPartitioner",
    "IidPartitioner",
    "Partitioner",
    "format_histogram",
    "label_histogram",
    "label_skew",
    "partition",
    "partitioner_names",
    "register",
    "save_histogram",
]
