"""CIFAR-10 and CIFAR-100 from their upstream files.

Accepted layouts, in ``<root>/cifar-10/`` (or ``cifar-100/``), directly or inside the folder
the upstream tarball unpacks to:

* CIFAR-10 python batches ``data_batch_1..5`` / ``test_batch`` (``cifar-10-batches-py/``);
* CIFAR-10 binary batches ``data_batch_1..5.bin`` / ``test_batch.bin``
  (``cifar-10-batches-bin/``): records of 1 label byte + 3072 pixel bytes;
* CIFAR-100 python ``train`` / ``test`` (``cifar-100-python/``), fine labels.

If only the upstream ``.tar.gz`` is there, it is md5-checked and extracted safely first.
Pickles are read with a restricted unpickler (:mod:`acpsl.data.safe_pickle`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from acpsl.data.archive import extract_tarball
from acpsl.data.dataset import ImageDataset
from acpsl.data.download import fetch
from acpsl.data.files import UpstreamFile, find_file, missing_files_error
from acpsl.data.integrity import verify_md5
from acpsl.data.registry import register
from acpsl.data.safe_pickle import load_pickle
from acpsl.errors import DataError

_PIXELS = 3 * 32 * 32
_HOST = "https://www.cs.toronto.edu/~kriz/"


@dataclass(frozen=True)
class Layout:
    """One way a CIFAR split can be stored: a file format, its folder and file names.

    Attributes:
        kind: ``"pickle"`` or ``"binary"``.
        subdir: folder the upstream tarball unpacks to.
        train: files of the training split.
        test: files of the test split.
        tarball: the upstream tarball holding ``subdir``.
    """

    kind: str
    subdir: str
    train: tuple[UpstreamFile, ...]
    test: tuple[UpstreamFile, ...]
    tarball: UpstreamFile

    def files(self, *, train: bool) -> tuple[UpstreamFile, ...]:
        """The files of one split."""
        return self.train if train else self.test


@dataclass(frozen=True)
class CifarSource:
    """A CIFAR dataset: its folder, layouts (preferred first) and normalization constants."""

    name: str
    folder: str
    layouts: tuple[Layout, ...]
    label_key: bytes
    class_names: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def _f(name: str, md5: str | None = None) -> UpstreamFile:
    return UpstreamFile(name, frozenset({md5}) if md5 else frozenset())


#: CIFAR-100 fine label names, in label order (upstream ``meta``: alphabetical).
_CIFAR100_CLASSES: tuple[str, ...] = (
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
)

#: md5 values published upstream (as torchvision lists them); upstream publishes none for the
#: extracted .bin batches, so theirs are the md5 of the files inside its binary tarball
#: (measured on the byte-identical copies in ../shared/data).
CIFAR10 = CifarSource(
    name="cifar-10",
    folder="cifar-10",
    layouts=(
        Layout(
            kind="pickle",
            subdir="cifar-10-batches-py",
            train=(
                _f("data_batch_1", "c99cafc152244af753f735de768cd75f"),
                _f("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
                _f("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
                _f("data_batch_4", "634d18415352ddfa80567beed471001a"),
                _f("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
            ),
            test=(_f("test_batch", "40351d587109b95175f43aff81a1287e"),),
            tarball=_f("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
        ),
        Layout(
            kind="binary",
            subdir="cifar-10-batches-bin",
            train=(
                _f("data_batch_1.bin", "5dd7e06a14cb22eb9f671a540d1b7c25"),
                _f("data_batch_2.bin", "5ea93a67294ea407fff1d09f752e9692"),
                _f("data_batch_3.bin", "942cd6a4bcdd0dd3c604fbe906cb4421"),
                _f("data_batch_4.bin", "ae636b3ba5c66a11e91e8cb52e771fcb"),
                _f("data_batch_5.bin", "53f37980c15c3d472c316c40844f3f0d"),
            ),
            test=(_f("test_batch.bin", "803d5f7f4d78ea53de84dbe85f74fb6d"),),
            tarball=_f("cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530"),
        ),
    ),
    label_key=b"labels",
    class_names=(
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ),
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
)

CIFAR100 = CifarSource(
    name="cifar-100",
    folder="cifar-100",
    layouts=(
        Layout(
            kind="pickle",
            subdir="cifar-100-python",
            train=(_f("train", "16019d7e3df5f24257cddd939b257f8d"),),
            test=(_f("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),),
            tarball=_f("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),
        ),
    ),
    label_key=b"fine_labels",
    class_names=_CIFAR100_CLASSES,
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
)


def _read_pickle(
    path: Path, spec: UpstreamFile, *, source: CifarSource, verify: bool
) -> tuple[np.ndarray, np.ndarray]:
    data = path.read_bytes()
    if verify:
        verify_md5(path, data=data, md5s=spec.md5s)
    batch = load_pickle(path, data=data)
    if not isinstance(batch, dict):
        raise DataError(f"{path}: pickle check failed: expected a dict, got {type(batch).__name__}")
    # Upstream (Python 2) keys load as bytes; a copy re-pickled by Python 3 may use str keys.
    batch = {k.encode("latin-1") if isinstance(k, str) else k: v for k, v in batch.items()}
    missing = [key.decode() for key in (b"data", source.label_key) if key not in batch]
    if missing:
        raise DataError(f"{path}: pickle check failed: missing key(s) {', '.join(missing)}")
    pixels = batch[b"data"]
    if (
        not isinstance(pixels, np.ndarray)
        or pixels.dtype != np.uint8
        or pixels.ndim != 2
        or pixels.shape[1] != _PIXELS
    ):
        found = f"{pixels.dtype} {pixels.shape}" if isinstance(pixels, np.ndarray) else type(pixels)
        raise DataError(
            f"{path}: pickle check failed: 'data' must be a uint8 array [N, {_PIXELS}], got {found}"
        )
    try:
        labels = np.asarray(batch[source.label_key], dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: pickle check failed: labels are not integers ({exc})") from None
    if labels.shape != (pixels.shape[0],):
        raise DataError(
            f"{path}: count check failed: {pixels.shape[0]} images but labels of shape "
            f"{labels.shape}"
        )
    return pixels, labels


def _read_binary(
    path: Path, spec: UpstreamFile, *, source: CifarSource, verify: bool
) -> tuple[np.ndarray, np.ndarray]:
    data = path.read_bytes()
    if verify:
        verify_md5(path, data=data, md5s=spec.md5s)
    record = 1 + _PIXELS
    if not data or len(data) % record:
        raise DataError(
            f"{path}: size check failed: {len(data)} bytes is not a positive multiple of the "
            f"{record}-byte record (1 label + {_PIXELS} pixels); the file is truncated or corrupt"
        )
    rows = np.frombuffer(data, dtype=np.uint8).reshape(-1, record)
    return rows[:, 1:], rows[:, 0].astype(np.int64)


_READERS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    "pickle": _read_pickle,
    "binary": _read_binary,
}


def _locate(source: CifarSource, folder: Path, *, train: bool) -> tuple[Layout, list[Path]] | None:
    for layout in source.layouts:
        for where in (folder, folder / layout.subdir):
            paths = [where / spec.name for spec in layout.files(train=train)]
            if all(path.is_file() for path in paths):
                return layout, paths
    return None


def _extract_available_tarball(source: CifarSource, folder: Path, *, verify: bool) -> bool:
    tarball = find_file([folder], [layout.tarball.name for layout in source.layouts])
    if tarball is None:
        return False
    spec = next(layout.tarball for layout in source.layouts if layout.tarball.name == tarball.name)
    if verify:
        verify_md5(tarball, md5s=spec.md5s)
    extract_tarball(tarball, folder)
    return True


def load_cifar(
    source: CifarSource, *, root: Path, train: bool, download: bool, verify: bool
) -> ImageDataset:
    """Load one split of a CIFAR dataset from ``root/<source.folder>/``.

    Raises:
        DataError: files missing (and not downloadable), corrupt, or inconsistent.
    """
    folder = root / source.folder
    found = _locate(source, folder, train=train)
    if found is None and _extract_available_tarball(source, folder, verify=verify):
        found = _locate(source, folder, train=train)
    if found is None and download:
        tarball = source.layouts[0].tarball
        fetch([_HOST + tarball.name], folder / tarball.name, md5s=tarball.md5s)
        extract_tarball(folder / tarball.name, folder)
        found = _locate(source, folder, train=train)
    if found is None:
        preferred = source.layouts[0]
        expected: Sequence[str] = [spec.name for spec in preferred.files(train=train)]
        alternatives = ", ".join(layout.tarball.name for layout in source.layouts)
        raise missing_files_error(
            source.name,
            folder,
            [*expected, f"(or the upstream tarball {alternatives})"],
        )
    layout, paths = found
    reader = _READERS[layout.kind]
    parts = [
        reader(path, spec, source=source, verify=verify)
        for path, spec in zip(paths, layout.files(train=train))
    ]
    pixels = np.concatenate([p for p, _ in parts]) if len(parts) > 1 else parts[0][0].copy()
    labels = np.concatenate([lab for _, lab in parts])
    num_classes = len(source.class_names)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{source.name}: label check failed: labels in [{labels.min()}, {labels.max()}], "
            f"expected [0, {num_classes}) in {', '.join(str(p) for p in paths)}"
        )
    return ImageDataset(
        images=torch.from_numpy(pixels).reshape(-1, 3, 32, 32),
        labels=torch.from_numpy(labels),
        num_classes=num_classes,
        name=source.name,
        mean=source.mean,
        std=source.std,
        class_names=source.class_names,
    )


@register("cifar-10")
def load_cifar10(*, root: Path, train: bool, download: bool, verify: bool) -> ImageDataset:
    """CIFAR-10 (Krizhevsky 2009): 50000 train / 10000 test colour images, 3x32x32, 10 classes."""
    return load_cifar(CIFAR10, root=root, train=train, download=download, verify=verify)


@register("cifar-100")
def load_cifar100(*, root: Path, train: bool, download: bool, verify: bool) -> ImageDataset:
    """CIFAR-100 (Krizhevsky 2009): 50000 train / 10000 test, 3x32x32, 100 fine classes."""
    return load_cifar(CIFAR100, root=root, train=train, download=download, verify=verify)
