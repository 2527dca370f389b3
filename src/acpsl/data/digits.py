"""scikit-learn's bundled 8x8 handwritten digits: a real dataset that needs no download.

1797 greyscale images (UCI optdigits test set), pixel values 0..16, scaled here to uint8
0..255. The train/test split is stratified and fixed (80/20, seed 0), so every run and every
machine sees the same split. scikit-learn is an optional extra (``pip install acpsl[digits]``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from acpsl.data.dataset import ImageDataset
from acpsl.data.registry import register
from acpsl.errors import DataError

#: Fraction of each class held out as the test split.
TEST_FRACTION = 0.2
#: Seed of the fixed stratified split (part of the dataset's definition, not of a run).
SPLIT_SEED = 0


def stratified_split(
    labels: np.ndarray, *, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) indices holding ``round(test_fraction * n_c)`` of each class c in test.

    Args:
        labels: int class labels ``[N]``.
        test_fraction: fraction of each class for the test split, in (0, 1).
        seed: seed of the numpy Generator that picks the test samples.
    """
    rng = np.random.default_rng(seed)
    test: list[np.ndarray] = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        take = round(test_fraction * members.size)
        test.append(rng.permutation(members)[:take])
    test_idx = np.sort(np.concatenate(test))
    train_mask = np.ones(labels.size, dtype=bool)
    train_mask[test_idx] = False
    return np.flatnonzero(train_mask), test_idx


@lru_cache(maxsize=1)
def _digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float, float]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError(
            "the 'digits' dataset needs scikit-learn, which is not installed; install it with "
            "pip install 'acpsl[digits]' (or pip install scikit-learn)"
        ) from None
    bunch = load_digits()
    values = np.asarray(bunch.images, dtype=np.float64)  # [1797, 8, 8] in 0..16
    pixels = np.rint(values * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = stratified_split(labels, test_fraction=TEST_FRACTION, seed=SPLIT_SEED)
    train_pixels = pixels[train_idx].astype(np.float64) / 255.0
    mean, std = float(train_pixels.mean()), float(train_pixels.std())
    return (
        torch.from_numpy(pixels[train_idx]),
        torch.from_numpy(labels[train_idx]),
        torch.from_numpy(pixels[test_idx]),
        torch.from_numpy(labels[test_idx]),
        mean,
        std,
    )


@register("digits")
def load_digits_dataset(*, root: Path, train: bool, download: bool, verify: bool) -> ImageDataset:
    """The 8x8 digits: 1438 train / 359 test images, 1x8x8, 10 classes; ``root`` is unused.

    Normalization uses the mean and std of the training split (for both splits).
    """
    del root, download, verify  # bundled with scikit-learn: nothing to find, fetch or check
    train_x, train_y, test_x, test_y, mean, std = _digits()
    images, labels = (train_x, train_y) if train else (test_x, test_y)
    return ImageDataset(
        images=images,
        labels=labels,
        num_classes=10,
        name="digits",
        mean=(mean,),
        std=(std,),
        class_names=tuple(str(d) for d in range(10)),
    )
