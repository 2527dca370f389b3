"""Real-data readiness: the complete CIFAR-10 and Fashion-MNIST in ../shared/data.

Counts, per-class counts, upstream order, md5 values as the data layer checks them, and the
normalization constants measured on the training split. Each test skips, saying why, when
the dataset's folder is absent (CI has ../shared/data beside the checkout). The short
training runs that show the data learns are in ``test_engine_real.py``.
"""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from acpsl.data import ImageDataset, integrity, load_dataset
from acpsl.data import cifar as cifar_mod
from acpsl.data import mnist as mnist_mod
from acpsl.errors import DataError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _fresh_md5_cache() -> Iterator[None]:
    integrity.clear_cache()
    yield
    integrity.clear_cache()


def _root(folder: str, files: tuple[str, ...]) -> Path:
    """``SHARED_DATA`` if ``folder`` holds ``files``, else skip saying what is missing."""
    where = SHARED_DATA / folder
    missing = [name for name in files if not (where / name).is_file()]
    if missing:
        pytest.skip(f"real dataset files {', '.join(missing)} not found in {where}")
    return SHARED_DATA


_CIFAR_FILES = (*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin")
_FASHION_FILES = tuple(mnist_mod.FASHION_MNIST.files)


def _channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Exact per-channel mean and std of uint8 pixels scaled to [0, 1] (256-bin histograms)."""
    levels = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for c in range(images.shape[1]):
        counts = torch.bincount(images[:, c].flatten(), minlength=256).double()
        mean = float((counts * levels).sum() / counts.sum())
        var = float((counts * (levels - mean) ** 2).sum() / counts.sum())
        means.append(mean)
        stds.append(var**0.5)
    return means, stds


def _check_split(data: ImageDataset, *, count: int, shape: tuple[int, int, int]) -> None:
    assert len(data) == count and data.shape == shape and data.images.dtype == torch.uint8
    assert data.num_classes == 10 and len(data.class_names) == 10
    per_class = torch.bincount(data.labels, minlength=10).tolist()
    assert per_class == [count // 10] * 10, per_class


# --------------------------------------------------------------------------------- CIFAR-10
def test_real_cifar10_counts_per_class_order_and_normalization() -> None:
    root = _root("cifar-10", _CIFAR_FILES)
    train = load_dataset("cifar-10", root=root, train=True)
    test = load_dataset("cifar-10", root=root, train=False)
    _check_split(train, count=50000, shape=(3, 32, 32))
    _check_split(test, count=10000, shape=(3, 32, 32))
    # upstream order (../shared/data/README.txt)
    assert train.labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert test.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    # the constants the data layer normalizes with are the training split's statistics
    mean, std = _channel_stats(train.images)
    for measured, constant in zip((*mean, *std), (*train.mean, *train.std)):
        assert abs(measured - constant) < 1e-4, (mean, std)
    x, _ = train.batch(torch.arange(5000))
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05


def test_real_cifar10_md5_as_the_data_layer_checks_it(tmp_path) -> None:
    root = _root("cifar-10", _CIFAR_FILES)
    layout = next(layout for layout in cifar_mod.CIFAR10.layouts if layout.kind == "binary")
    for spec in (*layout.train, *layout.test):
        assert spec.md5s, f"{spec.name} has no md5 to check"
        assert integrity.md5_file(root / "cifar-10" / spec.name) in spec.md5s, spec.name
    # a copy with one byte changed is refused, naming the file
    folder = tmp_path / "cifar-10"
    folder.mkdir()
    shutil.copyfile(root / "cifar-10" / "test_batch.bin", folder / "test_batch.bin")
    with open(folder / "test_batch.bin", "r+b") as fh:
        fh.seek(1000)
        byte = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([byte[0] ^ 1]))
    with pytest.raises(DataError, match=r"md5 check failed for .*test_batch\.bin"):
        load_dataset("cifar-10", root=tmp_path, train=False)


# ---------------------------------------------------------------------------- Fashion-MNIST
def test_real_fashion_mnist_counts_per_class_and_normalization() -> None:
    root = _root("fashion-mnist", _FASHION_FILES)
    train = load_dataset("fashion-mnist", root=root, train=True)
    test = load_dataset("fashion-mnist", root=root, train=False)
    _check_split(train, count=60000, shape=(1, 28, 28))
    _check_split(test, count=10000, shape=(1, 28, 28))
    assert train.class_names[0] == "T-shirt/top" and train.class_names[9] == "Ankle boot"
    mean, std = _channel_stats(train.images)
    assert abs(mean[0] - train.mean[0]) < 1e-4 and abs(std[0] - train.std[0]) < 1e-4
    # measured values, as README.txt of ../shared/data states them
    assert abs(mean[0] - 0.2860) < 1e-4 and abs(std[0] - 0.3530) < 1e-4


def test_real_fashion_mnist_md5_as_the_data_layer_checks_it() -> None:
    root = _root("fashion-mnist", _FASHION_FILES)
    for name, spec in mnist_mod.FASHION_MNIST.files.items():
        path = root / "fashion-mnist" / name
        # all four .gz files are byte-identical to upstream: the .gz md5 itself matches
        assert integrity.md5_file(path) in spec.md5s, name
        integrity.verify_md5(
            path, md5s=spec.md5s, raw_md5s=spec.raw_md5s, decompress=gzip.decompress
        )
