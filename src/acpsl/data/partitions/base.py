"""The partitioner interface and the registry every partitioner registers in.

A partitioner splits the indices of one dataset among clients. Every partitioner returns
disjoint, covering, non-empty, sorted int64 index tensors, one per client.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from acpsl.errors import ConfigError
from acpsl.registry import Registry


class Partitioner(ABC):
    """Splits sample indices among clients; subclasses override :meth:`assign`.

    Args:
        clients: number of clients (>= 1).
        seed: seed of the numpy Generator behind every random choice.
    """

    def __init__(self, *, clients: int, seed: int) -> None:
        if isinstance(clients, bool) or not isinstance(clients, int) or clients < 1:
            raise ConfigError(f"invalid clients={clients!r}: must be a positive integer")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"invalid seed={seed!r}: must be a non-negative integer")
        self.clients = clients
        self.seed = seed

    def split(self, labels: Tensor | np.ndarray) -> list[Tensor]:
        """Split the indices ``0..len(labels)-1`` among the clients.

        Args:
            labels: int class labels ``[N]`` (non-negative).

        Returns:
            ``clients`` sorted int64 index tensors, disjoint, covering ``0..N-1``, non-empty.

        Raises:
            ConfigError: labels are not a 1-D array of non-negative integers, or there are
                more clients than samples.
        """
        y = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise ConfigError(
                f"labels must be a 1-D integer array, got {y.dtype} of shape {y.shape}"
            )
        if y.size and y.min() < 0:
            raise ConfigError(f"labels must be non-negative, found {int(y.min())}")
        if self.clients > y.size:
            raise ConfigError(
                f"cannot give each of {self.clients} clients a sample: only {y.size} samples; "
                "use fewer clients or more data"
            )
        rng = np.random.default_rng(self.seed)
        parts = self.assign(y.astype(np.int64), rng)
        return [torch.from_numpy(np.sort(part).astype(np.int64)) for part in parts]

    @abstractmethod
    def assign(self, labels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        """Indices of each client (any order); must be disjoint, covering and non-empty.

        Args:
            labels: int64 labels ``[N]`` with ``N >= clients``.
            rng: the Generator seeded with :attr:`seed`; the only source of randomness.
        """


PARTITIONERS: Registry[Partitioner] = Registry("partitioner")


def register(name: str) -> Callable[[type[Partitioner]], type[Partitioner]]:
    """Class decorator: register a :class:`Partitioner` under ``name`` (raises on duplicates)."""

    def decorator(cls: type[Partitioner]) -> type[Partitioner]:
        PARTITIONERS.register(name)(cls)
        return cls

    return decorator
