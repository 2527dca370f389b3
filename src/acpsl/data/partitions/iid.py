"""IID partition: a seeded shuffle, then an equal split (sizes differ by at most one)."""

from __future__ import annotations

import numpy as np

from acpsl.data.partitions.base import Partitioner, register


@register("iid")
class IidPartitioner(Partitioner):
    """Shuffle all indices with the seeded Generator and cut them into equal parts.

    Args:
        clients: number of clients.
        seed: shuffle seed.
    """

    def assign(self, labels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        """Equal contiguous chunks of a random permutation (``np.array_split``)."""
        return list(np.array_split(rng.permutation(labels.size), self.clients))
