"""Label-skewed (non-IID) partition: per class, client shares ~ Dirichlet(beta).

The scheme of Hsu et al. (2019) used by the ACP-SL paper's non-IID runs (beta = 0.5): for
each class, draw the clients' proportions from a symmetric Dirichlet(beta) and cut that
class's shuffled indices at the cumulative proportions. Small beta gives clients few classes.
"""

from __future__ import annotations

import numpy as np

from acpsl.data.partitions.base import Partitioner, register
from acpsl.errors import ConfigError


@register("dirichlet")
class DirichletPartitioner(Partitioner):
    """Per-class Dirichlet(beta) shares; every client ends with at least one sample.

    If a draw leaves a client empty, the whole draw is repeated (up to ``max_draws`` times,
    from the same seeded Generator); if that still fails (many clients, little data, tiny
    beta), samples are moved deterministically: the largest client (lowest index on ties)
    gives its last index to each empty client in turn.

    Args:
        clients: number of clients.
        seed: seed of every draw.
        beta: Dirichlet concentration (> 0); smaller is more skewed.
        max_draws: how many draws to try before rebalancing.
    """

    def __init__(self, *, clients: int, seed: int, beta: float = 0.5, max_draws: int = 100) -> None:
        super().__init__(clients=clients, seed=seed)
        if not (isinstance(beta, (int, float)) and np.isfinite(beta) and beta > 0):
            raise ConfigError(f"invalid beta={beta!r}: the Dirichlet concentration must be > 0")
        if isinstance(max_draws, bool) or not isinstance(max_draws, int) or max_draws < 1:
            raise ConfigError(f"invalid max_draws={max_draws!r}: must be a positive integer")
        self.beta = float(beta)
        self.max_draws = max_draws

    def _draw(self, labels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        chunks: list[list[np.ndarray]] = [[] for _ in range(self.clients)]
        for cls in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == cls))
            shares = rng.dirichlet(np.full(self.clients, self.beta))
            cuts = (np.cumsum(shares)[:-1] * members.size).astype(np.int64)
            for client, piece in enumerate(np.split(members, cuts)):
                chunks[client].append(piece)
        return [np.concatenate(c) if c else np.empty(0, np.int64) for c in chunks]

    def assign(self, labels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        """Draw until no client is empty, then rebalance if ``max_draws`` did not suffice."""
        parts = self._draw(labels, rng)
        for _ in range(self.max_draws - 1):
            if all(p.size for p in parts):
                return parts
            parts = self._draw(labels, rng)
        for client in range(self.clients):
            if parts[client].size == 0:
                donor = int(np.argmax([p.size for p in parts]))
                parts[client] = parts[donor][-1:]
                parts[donor] = parts[donor][:-1]
        return parts
