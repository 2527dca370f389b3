"""Datasets and their partition among clients (SPEC section 5).

* ``load_dataset(name, *, root, train, download=False)`` -> :class:`ImageDataset` (uint8
  pixels, int64 labels, normalized batches by index); ``names()`` lists the datasets:
  ``mnist``, ``fashion-mnist``, ``cifar-10``, ``cifar-100`` (upstream files, md5-checked) and
  ``digits`` (scikit-learn's bundled 8x8 digits, no download).
* Your own: ``@register(name)`` a function returning a split or a ``(train, test)`` pair of
  torch Datasets, or name it as ``MODULE:FUNCTION``; a torch Dataset becomes a
  :class:`TorchSplit` (docs/data.md).
* ``partition(name, *, labels, clients, seed, beta)`` -> one index tensor per client
  (``iid`` or ``dirichlet``); ``label_histogram`` / ``format_histogram`` /
  ``save_histogram`` show what a partition did.
"""

from acpsl.data import cifar as _cifar  # noqa: F401  (registers cifar-10, cifar-100)
from acpsl.data import digits as _digits  # noqa: F401  (registers digits)
from acpsl.data import mnist as _mnist  # noqa: F401  (registers mnist, fashion-mnist)
from acpsl.data.dataset import ImageDataset
from acpsl.data.partitions import (
    PARTITIONERS,
    Partitioner,
    format_histogram,
    label_histogram,
    label_skew,
    partition,
    partitioner_names,
    save_histogram,
)
from acpsl.data.registry import DATASETS, load_dataset, names, register, resolve
from acpsl.data.torch_split import Split, TorchSplit

__all__ = [
    "DATASETS",
    "PARTITIONERS",
    "ImageDataset",
    "Partitioner",
    "Split",
    "TorchSplit",
    "format_histogram",
    "label_histogram",
    "label_skew",
    "load_dataset",
    "names",
    "partition",
    "partitioner_names",
    "register",
    "resolve",
    "save_histogram",
]
