"""MNIST and Fashion-MNIST from their upstream IDX files (gzipped or not).

Loading is one read, one gunzip and one ``np.frombuffer``: 60000 MNIST images load in a
fraction of a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from acpsl.data.dataset import ImageDataset
from acpsl.data.download import fetch
from acpsl.data.files import UpstreamFile, find_file, missing_files_error
from acpsl.data.idx import decompress, parse_idx
from acpsl.data.integrity import verify_md5
from acpsl.data.registry import register
from acpsl.errors import DataError


@dataclass(frozen=True)
class IdxSource:
    """An IDX dataset: its folder, upstream files, mirrors and normalization constants."""

    name: str
    folder: str
    mirrors: tuple[str, ...]
    files: dict[str, UpstreamFile]
    mean: float
    std: float
    class_names: tuple[str, ...]

    def split_files(self, *, train: bool) -> tuple[UpstreamFile, UpstreamFile]:
        """(images, labels) upstream files of one split."""
        prefix = "train" if train else "t10k"
        return (
            self.files[f"{prefix}-images-idx3-ubyte.gz"],
            self.files[f"{prefix}-labels-idx1-ubyte.gz"],
        )


def _files(table: dict[str, tuple[set[str], set[str]]]) -> dict[str, UpstreamFile]:
    return {
        name: UpstreamFile(name, frozenset(md5s), frozenset(raw))
        for name, (md5s, raw) in table.items()
    }


#: Upstream .gz md5 values (as torchvision lists them) plus the md5 of each decompressed file,
#: measured on the byte-identical copies in ../shared/data. The shared train-images.gz was
#: re-gzipped (its .gz md5 is 56f1...), so it is accepted by its content md5 6bbc...
MNIST = IdxSource(
    name="mnist",
    folder="mnist",
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    files=_files(
        {
            "train-images-idx3-ubyte.gz": (
                {"f68b3c2dcbeaaa9fbdd348bbdeb94873"},
                {"6bbc9ace898e44ae57da46a324031adb"},
            ),
            "train-labels-idx1-ubyte.gz": (
                {"d53e105ee54ea40749a09fcbcd1e9432"},
                {"a25bea736e30d166cdddb491f175f624"},
            ),
            "t10k-images-idx3-ubyte.gz": (
                {"9fb629c4189551a2d022fa330f9573f3"},
                {"2646ac647ad5339dbf082846283269ea"},
            ),
            "t10k-labels-idx1-ubyte.gz": (
                {"ec29112dd5afa0611ce80d1b7f02629c"},
                {"27ae3e4e09519cfbb04c329615203637"},
            ),
        }
    ),
    mean=0.1307,
    std=0.3081,
    class_names=tuple(str(d) for d in range(10)),
)

#: Upstream .gz md5 values of Fashion-MNIST (zalandoresearch, as torchvision lists them); the
#: label files' content md5 values were measured on ../shared/data.
FASHION_MNIST = IdxSource(
    name="fashion-mnist",
    folder="fashion-mnist",
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    files=_files(
        {
            "train-images-idx3-ubyte.gz": ({"8d4fb7e6c68d591d4c3dfef9ec88bf0d"}, set()),
            "train-labels-idx1-ubyte.gz": (
                {"25c81989df183df01b3e8a0aad5dffbe"},
                {"9018921c3c673c538a1fc5bad174d6f9"},
            ),
            "t10k-images-idx3-ubyte.gz": ({"bef4ecab320f06d8554ea6380940ec79"}, set()),
            "t10k-labels-idx1-ubyte.gz": (
                {"bb300cfdad3c16e7a12a480ee83cd310"},
                {"15d484375f8d13e6eb1aabb0c3f46965"},
            ),
        }
    ),
    mean=0.2860,
    std=0.3530,
    class_names=(
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
)


def _read(path: Path, spec: UpstreamFile, *, ndim: int, verify: bool) -> np.ndarray:
    data = path.read_bytes()
    content = decompress(path, data)
    if verify:
        if path.suffix == ".gz":
            verify_md5(path, data=data, md5s=spec.md5s, raw_md5s=spec.raw_md5s, raw=content)
        else:
            verify_md5(path, data=data, md5s=spec.raw_md5s)
    return parse_idx(path, content, ndim=ndim)


def load_idx_dataset(
    source: IdxSource, *, root: Path, train: bool, download: bool, verify: bool
) -> ImageDataset:
    """Load one split of an IDX dataset from ``root/<source.folder>/`` (``.gz`` or plain).

    Raises:
        DataError: files missing (and not downloaded), corrupt, or inconsistent.
    """
    folder = root / source.folder
    specs = source.split_files(train=train)
    paths: list[Path | None] = [
        find_file([folder], [spec.name, spec.name.removesuffix(".gz")]) for spec in specs
    ]
    if download:
        for i, spec in enumerate(specs):
            if paths[i] is None:
                urls = [mirror + spec.name for mirror in source.mirrors]
                paths[i] = fetch(urls, folder / spec.name, md5s=spec.md5s)
    missing = [spec.name for spec, path in zip(specs, paths) if path is None]
    if missing:
        raise missing_files_error(source.name, folder, missing)
    image_path, label_path = paths
    assert image_path is not None and label_path is not None
    images = _read(image_path, specs[0], ndim=3, verify=verify)
    labels = _read(label_path, specs[1], ndim=1, verify=verify)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{source.name}: count check failed: {image_path.name} holds {images.shape[0]} "
            f"images but {label_path.name} holds {labels.shape[0]} labels"
        )
    # One copy makes the pixels writable and owned by torch (frombuffer views are read-only).
    pixels = torch.from_numpy(images.copy()).unsqueeze(1)
    targets = torch.from_numpy(labels.astype(np.int64))
    return ImageDataset(
        images=pixels,
        labels=targets,
        num_classes=len(source.class_names),
        name=source.name,
        mean=(source.mean,),
        std=(source.std,),
        class_names=source.class_names,
    )


@register("mnist")
def load_mnist(*, root: Path, train: bool, download: bool, verify: bool) -> ImageDataset:
    """MNIST handwritten digits (LeCun et al.), 60000 train / 10000 test, 1x28x28."""
    return load_idx_dataset(MNIST, root=root, train=train, download=download, verify=verify)


@register("fashion-mnist")
def load_fashion_mnist(*, root: Path, train: bool, download: bool, verify: bool) -> ImageDataset:
    """Fashion-MNIST (Xiao et al.), 60000 train / 10000 test, 1x28x28, 10 clothing classes."""
    return load_idx_dataset(FASHION_MNIST, root=root, train=train, download=download, verify=verify)
