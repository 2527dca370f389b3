"""Partitions: invariants for every registered partitioner, seeding, Dirichlet skew, histograms."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from acpsl.data import (
    PARTITIONERS,
    format_histogram,
    label_histogram,
    label_skew,
    partition,
    save_histogram,
)
from acpsl.data.idx import parse_idx
from acpsl.errors import ConfigError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def check_partition(parts: list[torch.Tensor], n: int, clients: int) -> None:
    """Disjoint, covering 0..n-1, non-empty, sorted int64 — the partition contract."""
    assert len(parts) == clients
    for part in parts:
        assert part.dtype == torch.int64 and part.dim() == 1 and part.numel() > 0
        assert torch.all(part[1:] > part[:-1])  # sorted, hence no duplicate inside a part
    joined = torch.cat(parts)
    assert joined.numel() == n  # with the sort below: disjoint and covering
    assert torch.equal(joined.sort().values, torch.arange(n))


def balanced_labels(classes: int, per_class: int, *, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(classes), per_class))


@pytest.mark.parametrize("name", PARTITIONERS.names())
def test_every_partitioner_honours_the_contract_and_its_seed(name) -> None:
    labels = torch.from_numpy(balanced_labels(10, 50, seed=0))
    parts = partition(name, labels=labels, clients=7, seed=3)
    check_partition(parts, 500, 7)
    again = partition(name, labels=labels, clients=7, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(parts, again))
    other = partition(name, labels=labels, clients=7, seed=4)
    assert any(not torch.equal(a, b) for a, b in zip(parts, other))
    with pytest.raises(ConfigError, match="only 500 samples"):
        partition(name, labels=labels, clients=501, seed=0)
    for bad in (0, -1, 2.0):
        with pytest.raises(ConfigError, match="clients"):
            partition(name, labels=labels, clients=bad, seed=0)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 200),
    data=st.data(),
    classes=st.integers(1, 12),
    beta=st.floats(0.01, 100.0),
    seed=st.integers(0, 2**31),
    name=st.sampled_from(["iid", "dirichlet"]),
)
def test_partition_invariants_hold_for_any_shape(n, data, classes, beta, seed, name) -> None:
    clients = data.draw(st.integers(1, n))
    labels = np.random.default_rng(seed).integers(0, classes, size=n)
    parts = partition(name, labels=labels, clients=clients, seed=seed, beta=beta)
    check_partition(parts, n, clients)


def test_iid_is_an_equal_split_of_a_shuffle() -> None:
    labels = balanced_labels(10, 100, seed=1)
    parts = partition("iid", labels=labels, clients=3, seed=0)
    assert [p.numel() for p in parts] == [334, 333, 333]
    perm = np.random.default_rng(0).permutation(1000)
    assert parts[1].tolist() == sorted(perm[334:667].tolist())
    assert label_skew(label_histogram(labels, parts, 10)) < 0.06


def test_dirichlet_skew_grows_as_beta_shrinks() -> None:
    labels = balanced_labels(10, 200, seed=2)
    mean_skew = []
    for beta in (100.0, 5.0, 0.5, 0.05):
        skews = [
            label_skew(
                label_histogram(
                    labels, partition("dirichlet", labels=labels, clients=5, seed=s, beta=beta), 10
                )
            )
            for s in range(5)
        ]
        mean_skew.append(float(np.mean(skews)))
    assert all(a < b for a, b in itertools.pairwise(mean_skew)), mean_skew
    assert mean_skew[0] < 0.1 and mean_skew[-1] > 0.6


def test_dirichlet_follows_its_definition_on_one_class() -> None:
    """With one class, the shares are one Dirichlet draw and the cuts are floor(cumsum * n)."""
    labels = np.zeros(1000, dtype=np.int64)
    parts = partition("dirichlet", labels=labels, clients=4, seed=11, beta=2.0, max_draws=1)
    rng = np.random.default_rng(11)
    members = rng.permutation(1000)
    shares = rng.dirichlet(np.full(4, 2.0))
    cuts = (np.cumsum(shares)[:-1] * 1000).astype(np.int64)
    expected = np.split(members, cuts)
    assert [p.tolist() for p in parts] == [sorted(e.tolist()) for e in expected]


def test_dirichlet_rebalances_when_draws_leave_clients_empty() -> None:
    labels = np.repeat([0, 1], 10)
    parts = partition("dirichlet", labels=labels, clients=20, seed=0, beta=0.01, max_draws=3)
    check_partition(parts, 20, 20)
    assert all(p.numel() == 1 for p in parts)
    again = partition("dirichlet", labels=labels, clients=20, seed=0, beta=0.01, max_draws=3)
    assert all(torch.equal(a, b) for a, b in zip(parts, again))


def test_bad_parameters_are_config_errors() -> None:
    labels = np.arange(10) % 2
    with pytest.raises(ConfigError, match="beta"):
        partition("dirichlet", labels=labels, clients=2, seed=0, beta=0.0)
    with pytest.raises(ConfigError, match="unknown partitioner 'shards'") as info:
        partition("shards", labels=labels, clients=2, seed=0)
    assert "iid" in str(info.value) and "dirichlet" in str(info.value)
    with pytest.raises(ConfigError, match="non-negative"):
        partition("iid", labels=labels - 1, clients=2, seed=0)
    with pytest.raises(ConfigError, match="1-D integer"):
        partition("iid", labels=labels.astype(float), clients=2, seed=0)
    with pytest.raises(ConfigError, match="seed"):
        partition("iid", labels=labels, clients=2, seed=-1)


def test_label_histogram_matches_a_naive_count() -> None:
    labels = torch.from_numpy(np.random.default_rng(0).integers(0, 6, size=300))
    parts = partition("dirichlet", labels=labels, clients=4, seed=1)
    hist = label_histogram(labels, parts, 6)
    naive = np.zeros((4, 6), dtype=np.int64)
    for client, part in enumerate(parts):
        for i in part.tolist():
            naive[client, int(labels[i])] += 1
    assert hist.dtype == np.int64 and np.array_equal(hist, naive)
    assert hist.sum() == 300
    with pytest.raises(ConfigError, match="num_classes=5"):
        label_histogram(labels, parts, 5)


def test_label_skew_extremes() -> None:
    assert label_skew(np.array([[5, 5], [5, 5]])) == 0.0
    assert label_skew(np.array([[10, 0], [0, 10]])) == pytest.approx(0.5)
    assert label_skew(np.array([[9, 0, 0], [0, 0, 1]])) == pytest.approx((0.1 + 0.9) / 2)


def test_format_histogram_is_a_readable_table() -> None:
    hist = np.array([[3, 0, 12], [1, 40, 0]])
    table = format_histogram(hist, class_names=["cat", "dog", "eel"])
    lines = table.splitlines()
    assert lines[0].split() == ["client", "cat", "dog", "eel", "total"]
    assert lines[2].split() == ["0", "3", "0", "12", "15"]
    assert lines[3].split() == ["1", "1", "40", "0", "41"]
    assert lines[-1].split() == ["all", "4", "40", "12", "56"]
    assert len({len(line) for line in lines}) == 1  # columns line up
    with pytest.raises(ConfigError, match="2 class names for 3"):
        format_histogram(hist, class_names=["a", "b"])


def test_save_histogram_writes_json_atomically(tmp_path) -> None:
    hist = np.array([[3, 0], [1, 4]])
    path = save_histogram(
        tmp_path / "run" / "partition.json",
        hist,
        class_names=["a", "b"],
        extra={"partition": "dirichlet", "beta": 0.5, "seed": 0},
    )
    record = json.loads(path.read_text())
    assert record["histogram"] == [[3, 0], [1, 4]] and record["sizes"] == [3, 5]
    assert record["partition"] == "dirichlet" and record["class_names"] == ["a", "b"]
    assert record["skew"] == pytest.approx(label_skew(hist))
    assert [p.name for p in path.parent.iterdir()] == ["partition.json"]


def test_real_mnist_labels_dirichlet_partition() -> None:
    path = SHARED_DATA / "mnist" / "train-labels-idx1-ubyte.gz"
    if not path.is_file():
        pytest.skip(f"real MNIST labels not found at {path}")
    import gzip

    labels = torch.from_numpy(
        parse_idx(path, gzip.decompress(path.read_bytes()), ndim=1).astype(np.int64)
    )
    parts = partition("dirichlet", labels=labels, clients=5, seed=0, beta=0.5)
    check_partition(parts, 60000, 5)
    hist = label_histogram(labels, parts, 10)
    assert hist.sum(axis=0).tolist() == torch.bincount(labels).tolist()
    assert label_skew(hist) > label_skew(
        label_histogram(labels, partition("iid", labels=labels, clients=5, seed=0), 10)
    )
