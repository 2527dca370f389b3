"""Dataset readers: real MNIST, small files written in the exact upstream formats, and errors."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import io
import pickle
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from acpsl.data import ImageDataset, integrity, load_dataset, names
from acpsl.data import cifar as cifar_mod
from acpsl.data import digits as digits_mod
from acpsl.data import mnist as mnist_mod
from acpsl.data.download import fetch
from acpsl.data.safe_pickle import load_pickle
from acpsl.errors import ConfigError, DataError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _fresh_md5_cache() -> Iterator[None]:
    integrity.clear_cache()
    yield
    integrity.clear_cache()


def _shared(folder: str) -> Path:
    if not (SHARED_DATA / folder).is_dir():
        pytest.skip(f"real dataset folder {SHARED_DATA / folder} not found")
    return SHARED_DATA


# ----------------------------------------------------------------------- upstream file writers
def write_idx(path: Path, array: np.ndarray) -> Path:
    """An IDX file of unsigned bytes (magic 0x0000080N, big-endian dims), gzipped if *.gz."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    raw = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def write_idx_split(folder: Path, *, prefix: str, n: int, seed: int, gz: bool) -> tuple:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    ext = ".gz" if gz else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels)
    return images, labels


def cifar_batch(n: int, *, seed: int, classes: int, label_key: bytes) -> dict:
    """A dict shaped like an upstream CIFAR python batch (bytes keys, uint8 [n, 3072])."""
    rng = np.random.default_rng(seed)
    batch = {
        b"batch_label": b"synthetic batch",
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        label_key: rng.integers(0, classes, size=n).tolist(),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }
    if label_key == b"fine_labels":
        batch[b"coarse_labels"] = [label // 5 for label in batch[label_key]]
    return batch


def write_pickle(path: Path, obj: object, *, protocol: int = 2) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def python2_cifar_pickle(pixels: np.ndarray, labels: list[int], *, label_key: bytes) -> bytes:
    """Bytes as Python 2's cPickle (protocol 2) wrote the upstream CIFAR batches.

    Python 2 strings are SHORT_BINSTRING/BINSTRING opcodes and numpy arrays reference
    ``numpy.core.multiarray._reconstruct`` with a ``(1, shape, dtype, False, raw)`` state.
    """
    n, d = pixels.shape
    raw = pixels.tobytes()

    def short(text: bytes) -> bytes:
        return b"U" + bytes([len(text)]) + text

    array = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85"
        + short(b"b")
        + b"\x87R(K\x01K"
        + bytes([n])
        + b"M"
        + d.to_bytes(2, "little")
        + b"\x86"
        + b"cnumpy\ndtype\n"
        + short(b"u1")
        + b"K\x00K\x01\x87R"
        + b"(K\x03"
        + short(b"|")
        + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
        + b"\x89T"
        + len(raw).to_bytes(4, "little")
        + raw
        + b"tb"
    )
    label_list = b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    return (
        b"\x80\x02}("
        + short(b"batch_label")
        + short(b"testing batch 1 of 1")
        + short(label_key)
        + label_list
        + short(b"data")
        + array
        + b"u."
    )


def write_cifar10_pickles(folder: Path, *, n: int = 7) -> list[dict]:
    batches = []
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        batch = cifar_batch(n, seed=i, classes=10, label_key=b"labels")
        write_pickle(folder / name, batch, protocol=2 if i % 2 else 4)
        batches.append(batch)
    return batches


# ------------------------------------------------------------------------------- real MNIST
def test_real_mnist_shapes_counts_labels_and_normalization() -> None:
    root = _shared("mnist")
    train = load_dataset("mnist", root=root, train=True)
    test = load_dataset("mnist", root=root, train=False)
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 1, 28, 28)
    assert train.labels.dtype == torch.int64 and len(train) == 60000 and len(test) == 10000
    assert train.labels.min() == 0 and train.labels.max() == 9 and train.num_classes == 10
    # Upstream facts: the first training labels are 5 0 4 1 9 and 5923 zeros in train.
    assert train.labels[:5].tolist() == [5, 0, 4, 1, 9]
    assert int((train.labels == 0).sum()) == 5923
    assert int((test.labels == 0).sum()) == 980
    # The normalization constants are the training set's real statistics (exact, from the
    # 256-bin pixel histogram).
    counts = torch.bincount(train.images.flatten(), minlength=256).double()
    levels = torch.arange(256, dtype=torch.float64) / 255
    mean = float((counts * levels).sum() / counts.sum())
    std = float(((counts * (levels - mean) ** 2).sum() / counts.sum()).sqrt())
    assert abs(mean - train.mean[0]) < 1e-4 and abs(std - train.std[0]) < 1e-4


def test_real_mnist_loads_fast_once_md5_is_cached() -> None:
    root = _shared("mnist")
    load_dataset("mnist", root=root, train=True)
    start = time.perf_counter()
    load_dataset("mnist", root=root, train=True)
    assert time.perf_counter() - start < 3.0


def test_regzipped_mnist_train_images_accepted_by_content_md5() -> None:
    root = _shared("mnist")
    path = root / "mnist" / "train-images-idx3-ubyte.gz"
    spec = mnist_mod.MNIST.files[path.name]
    assert integrity.md5_file(path) not in spec.md5s  # re-gzipped: .gz md5 is not upstream's
    integrity.verify_md5(path, md5s=spec.md5s, raw_md5s=spec.raw_md5s, decompress=gzip.decompress)
    integrity.clear_cache()
    with pytest.raises(DataError, match=r"md5 check failed for .*train-images-idx3-ubyte\.gz"):
        integrity.verify_md5(path, md5s=spec.md5s)


def test_md5_result_is_cached_by_path_size_mtime(tmp_path, monkeypatch) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    good = hashlib.md5(b"abc").hexdigest()
    calls = []
    real = integrity.md5_bytes
    monkeypatch.setattr(integrity, "md5_bytes", lambda data: calls.append(1) or real(data))
    integrity.verify_md5(path, md5s={good})
    integrity.verify_md5(path, md5s={good})
    assert len(calls) == 1
    path.write_bytes(b"abd")  # new content and size -> checked again, and fails
    with pytest.raises(DataError, match="md5 check failed"):
        integrity.verify_md5(path, md5s={good})
    assert len(calls) == 2


def test_shared_fashion_labels_pass_md5_and_missing_images_are_named(tmp_path) -> None:
    root = _shared("fashion-mnist")
    for name in ("train-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        spec = mnist_mod.FASHION_MNIST.files[name]
        integrity.verify_md5(root / "fashion-mnist" / name, md5s=spec.md5s)
    # a folder holding the real label files but no images
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    for name in ("train-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (folder / name).symlink_to(root / "fashion-mnist" / name)
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", root=tmp_path, train=True)
    message = str(info.value)
    assert "train-images-idx3-ubyte.gz" in message
    assert str(folder.resolve()) in message
    assert "--download" in message and "copy" in message
    assert "train-labels" not in message  # present files are not reported missing


# ------------------------------------------------------------------ IDX files written here
@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_reader_round_trips_idx_files(tmp_path, gz) -> None:
    folder = tmp_path / "fashion-mnist"
    images, labels = write_idx_split(folder, prefix="train", n=13, seed=1, gz=gz)
    test_images, test_labels = write_idx_split(folder, prefix="t10k", n=4, seed=2, gz=gz)
    data = load_dataset("fashion-mnist", root=tmp_path, train=True, verify=False)
    assert data.images.shape == (13, 1, 28, 28)
    assert torch.equal(data.images[:, 0], torch.from_numpy(images))
    assert data.labels.tolist() == labels.tolist()
    assert data.class_names[9] == "Ankle boot"
    test = load_dataset("fashion-mnist", root=tmp_path, train=False, verify=False)
    assert torch.equal(test.images[:, 0], torch.from_numpy(test_images))
    assert test.labels.tolist() == test_labels.tolist()


def test_synthetic_files_fail_md5_naming_the_file(tmp_path) -> None:
    write_idx_split(tmp_path / "fashion-mnist", prefix="train", n=5, seed=0, gz=True)
    with pytest.raises(DataError, match=r"md5 check failed for .*train-images-idx3-ubyte\.gz"):
        load_dataset("fashion-mnist", root=tmp_path, train=True)


def test_root_defaults_to_acpsl_data_env(tmp_path, monkeypatch) -> None:
    write_idx_split(tmp_path / "mnist", prefix="t10k", n=3, seed=0, gz=False)
    monkeypatch.setenv("ACPSL_DATA", str(tmp_path))
    assert len(load_dataset("mnist", train=False, verify=False)) == 3


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda raw: raw[:-5], r"size check failed"),
        (lambda raw: raw + b"\x00", r"size check failed"),
        (lambda raw: raw[:10], r"IDX header truncated"),
        (lambda raw: b"\x00\x00\x08\x01" + raw[4:], r"wrong IDX magic number 0x00000801"),
        (lambda raw: b"\x00\x00\x0d\x03" + raw[4:], r"wrong IDX magic number 0x00000d03"),
    ],
)
def test_corrupt_idx_names_file_and_check(tmp_path, damage, match) -> None:
    folder = tmp_path / "mnist"
    write_idx_split(folder, prefix="t10k", n=6, seed=0, gz=False)
    path = folder / "t10k-images-idx3-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError, match=match) as info:
        load_dataset("mnist", root=tmp_path, train=False, verify=False)
    assert str(path) in str(info.value)


def test_truncated_gzip_and_count_mismatch(tmp_path) -> None:
    folder = tmp_path / "mnist"
    write_idx_split(folder, prefix="t10k", n=6, seed=0, gz=True)
    path = folder / "t10k-images-idx3-ubyte.gz"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz: gzip decompression failed"):
        load_dataset("mnist", root=tmp_path, train=False, verify=False)
    write_idx(path, np.zeros((5, 28, 28), np.uint8))
    with pytest.raises(DataError, match=r"count check failed.*5 images.*6 labels"):
        load_dataset("mnist", root=tmp_path, train=False, verify=False)


def test_missing_mnist_files_listed_with_folder(tmp_path) -> None:
    with pytest.raises(DataError) as info:
        load_dataset("mnist", root=tmp_path, train=False)
    message = str(info.value)
    assert "t10k-images-idx3-ubyte.gz" in message and "t10k-labels-idx1-ubyte.gz" in message
    assert str((tmp_path / "mnist").resolve()) in message


# ------------------------------------------------------------------------------------ CIFAR
def test_cifar10_pickle_batches_in_upstream_folder(tmp_path) -> None:
    batches = write_cifar10_pickles(tmp_path / "cifar-10" / "cifar-10-batches-py")
    train = load_dataset("cifar-10", root=tmp_path, train=True, verify=False)
    assert train.images.shape == (35, 3, 32, 32) and train.num_classes == 10
    expected = np.concatenate([b[b"data"] for b in batches[:5]]).reshape(-1, 3, 32, 32)
    assert torch.equal(train.images, torch.from_numpy(expected))
    assert train.labels.tolist() == [label for b in batches[:5] for label in b[b"labels"]]
    # Upstream layout: 1024 red, then green, then blue values, row-major 32x32.
    assert int(train.images[0, 1, 2, 3]) == int(batches[0][b"data"][0, 1024 + 2 * 32 + 3])
    test = load_dataset("cifar-10", root=tmp_path, train=False, verify=False)
    assert test.labels.tolist() == batches[5][b"labels"]


def test_cifar10_md5_checked_and_accepted_when_known(tmp_path, monkeypatch) -> None:
    folder = tmp_path / "cifar-10"
    write_cifar10_pickles(folder)
    with pytest.raises(DataError, match=r"md5 check failed for .*test_batch"):
        load_dataset("cifar-10", root=tmp_path, train=False)
    layout = cifar_mod.CIFAR10.layouts[0]
    known = dataclasses.replace(
        layout.test[0], md5s=frozenset({integrity.md5_file(folder / "test_batch")})
    )
    source = dataclasses.replace(
        cifar_mod.CIFAR10,
        layouts=(dataclasses.replace(layout, test=(known,)), *cifar_mod.CIFAR10.layouts[1:]),
    )
    monkeypatch.setattr(cifar_mod, "CIFAR10", source)
    assert len(load_dataset("cifar-10", root=tmp_path, train=False)) == 7


def test_cifar10_binary_batches(tmp_path) -> None:
    rng = np.random.default_rng(5)
    folder = tmp_path / "cifar-10" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    records = {}
    for name in [*(f"data_batch_{k}.bin" for k in range(1, 6)), "test_batch.bin"]:
        rec = rng.integers(0, 256, size=(4, 3073), dtype=np.uint8)
        rec[:, 0] = rng.integers(0, 10, size=4)
        (folder / name).write_bytes(rec.tobytes())
        records[name] = rec
    # synthetic files: their md5 is not upstream's, so the reader is asked not to check it
    test = load_dataset("cifar-10", root=tmp_path, train=False, verify=False)
    rec = records["test_batch.bin"]
    assert test.labels.tolist() == rec[:, 0].tolist()
    assert torch.equal(test.images, torch.from_numpy(rec[:, 1:].reshape(4, 3, 32, 32)))
    train = load_dataset("cifar-10", root=tmp_path, train=True, verify=False)
    assert (
        len(train) == 20
        and train.labels[4:8].tolist() == records["data_batch_2.bin"][:, 0].tolist()
    )
    (folder / "test_batch.bin").write_bytes(rec.tobytes()[:-1])
    with pytest.raises(DataError, match=r"test_batch\.bin: size check failed"):
        load_dataset("cifar-10", root=tmp_path, train=False, verify=False)
    with pytest.raises(DataError, match=r"md5 check failed for .*test_batch\.bin"):
        load_dataset("cifar-10", root=tmp_path, train=False)
    rec[0, 0] = 10
    (folder / "test_batch.bin").write_bytes(rec.tobytes())
    with pytest.raises(DataError, match=r"label check failed"):
        load_dataset("cifar-10", root=tmp_path, train=False, verify=False)


def test_cifar100_pickle_uses_fine_labels(tmp_path) -> None:
    folder = tmp_path / "cifar-100" / "cifar-100-python"
    train = cifar_batch(9, seed=3, classes=100, label_key=b"fine_labels")
    write_pickle(folder / "train", train)
    write_pickle(folder / "test", cifar_batch(2, seed=4, classes=100, label_key=b"fine_labels"))
    data = load_dataset("cifar-100", root=tmp_path, train=True, verify=False)
    assert data.num_classes == 100 and len(data.class_names) == 100
    assert data.class_names[:2] == ("apple", "aquarium_fish") and data.class_names[-1] == "worm"
    assert data.labels.tolist() == train[b"fine_labels"]
    assert torch.equal(data.images.reshape(9, -1), torch.from_numpy(train[b"data"]))


def test_python2_written_cifar100_pickle_and_str_keys(tmp_path) -> None:
    rng = np.random.default_rng(8)
    pixels = rng.integers(0, 256, size=(3, 3072), dtype=np.uint8)
    labels = [99, 0, 42]
    folder = tmp_path / "cifar-100"
    folder.mkdir()
    (folder / "test").write_bytes(python2_cifar_pickle(pixels, labels, label_key=b"fine_labels"))
    data = load_dataset("cifar-100", root=tmp_path, train=False, verify=False)
    assert data.labels.tolist() == labels
    assert torch.equal(data.images.reshape(3, -1), torch.from_numpy(pixels))
    write_pickle(folder / "test", {"data": pixels, "fine_labels": labels}, protocol=4)
    again = load_dataset("cifar-100", root=tmp_path, train=False, verify=False)
    assert again.labels.tolist() == labels


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda b: b.pop(b"labels"), r"missing key\(s\) labels"),
        (lambda b: b.__setitem__(b"data", b[b"data"][:, :100]), r"'data' must be a uint8"),
        (lambda b: b.__setitem__(b"labels", b[b"labels"][:-1]), r"count check failed"),
    ],
)
def test_cifar_pickle_structure_checks(tmp_path, mutate, match) -> None:
    folder = tmp_path / "cifar-10"
    write_cifar10_pickles(folder)
    batch = cifar_batch(7, seed=0, classes=10, label_key=b"labels")
    mutate(batch)
    write_pickle(folder / "test_batch", batch)
    with pytest.raises(DataError, match=match) as info:
        load_dataset("cifar-10", root=tmp_path, train=False, verify=False)
    assert "test_batch" in str(info.value)


def test_cifar_tarball_is_extracted_when_alone(tmp_path) -> None:
    staging = tmp_path / "staging"
    batches = write_cifar10_pickles(staging / "cifar-10-batches-py")
    folder = tmp_path / "data" / "cifar-10"
    folder.mkdir(parents=True)
    with tarfile.open(folder / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(staging / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    with pytest.raises(DataError, match=r"md5 check failed for .*cifar-10-python\.tar\.gz"):
        load_dataset("cifar-10", root=tmp_path / "data", train=False)
    assert not (folder / "cifar-10-batches-py").exists()
    test = load_dataset("cifar-10", root=tmp_path / "data", train=False, verify=False)
    assert test.labels.tolist() == batches[5][b"labels"]
    assert (folder / "cifar-10-batches-py" / "test_batch").is_file()
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temp folder left


@pytest.mark.parametrize("kind", ["dotdot", "symlink"])
def test_unsafe_tarball_is_refused(tmp_path, kind) -> None:
    folder = tmp_path / "cifar-10"
    folder.mkdir()
    with tarfile.open(folder / "cifar-10-python.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("../escaped" if kind == "dotdot" else "cifar-10-batches-py/x")
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = 3
            tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(DataError, match="refusing to extract"):
        load_dataset("cifar-10", root=tmp_path, train=False, verify=False)
    assert not (tmp_path / "escaped").exists()


def test_cifar_missing_names_files_and_tarball(tmp_path) -> None:
    with pytest.raises(DataError) as info:
        load_dataset("cifar-100", root=tmp_path, train=True)
    message = str(info.value)
    assert "train" in message and "cifar-100-python.tar.gz" in message
    assert str((tmp_path / "cifar-100").resolve()) in message


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_restricted_unpickler_refuses_code(tmp_path) -> None:
    marker = tmp_path / "pwned"
    path = write_pickle(tmp_path / "test_batch", {b"data": _Evil(marker)})
    with pytest.raises(DataError, match=r"not allowed"):
        load_pickle(path)
    assert not marker.exists()
    ok = write_pickle(tmp_path / "ok", {b"data": np.arange(6, dtype=np.uint8).reshape(2, 3)})
    assert load_pickle(ok)[b"data"].tolist() == [[0, 1, 2], [3, 4, 5]]
    (tmp_path / "trunc").write_bytes(ok.read_bytes()[:-3])
    with pytest.raises(DataError, match=r"trunc: not a valid dataset pickle"):
        load_pickle(tmp_path / "trunc")


# ---------------------------------------------------------------------------------- download
def test_download_offline_is_a_clear_error(tmp_path, monkeypatch) -> None:
    dest = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    with pytest.raises(
        DataError,
        match=r"could not reach the host of http://127\.0\.0\.1:9/.*copy the file by hand",
    ):
        fetch(["http://127.0.0.1:9/t10k-labels-idx1-ubyte.gz"], dest, timeout=5, progress=False)
    assert not dest.exists() and not list(dest.parent.iterdir())
    monkeypatch.setattr(
        mnist_mod, "MNIST", dataclasses.replace(mnist_mod.MNIST, mirrors=("http://127.0.0.1:9/",))
    )
    with pytest.raises(DataError, match="could not reach the host"):
        load_dataset("mnist", root=tmp_path, train=False, download=True)


@pytest.fixture
def loopback_server(tmp_path) -> Iterator[tuple[str, Path]]:
    """An HTTP server on 127.0.0.1 serving tmp_path/served (no outside network)."""
    served = tmp_path / "served"
    served.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", served
    finally:
        server.shutdown()
        server.server_close()


def test_download_writes_verified_file_atomically(tmp_path, loopback_server, monkeypatch) -> None:
    url, served = loopback_server
    images, _ = write_idx_split(served, prefix="t10k", n=8, seed=9, gz=True)
    md5 = {p.name: integrity.md5_file(p) for p in served.iterdir()}
    files = dict(mnist_mod.MNIST.files)
    for name, value in md5.items():
        files[name] = dataclasses.replace(files[name], md5s=frozenset({value}))
    source = dataclasses.replace(mnist_mod.MNIST, mirrors=("http://127.0.0.1:9/", url), files=files)
    monkeypatch.setattr(mnist_mod, "MNIST", source)
    data = load_dataset("mnist", root=tmp_path / "root", train=False, download=True)
    assert torch.equal(data.images[:, 0], torch.from_numpy(images))
    assert sorted(p.name for p in (tmp_path / "root" / "mnist").iterdir()) == sorted(md5)
    with pytest.raises(DataError, match=r"answered HTTP 404"):
        fetch([url + "absent.gz"], tmp_path / "absent.gz", progress=False)
    dest = tmp_path / "other" / "x.gz"
    with pytest.raises(DataError, match=r"md5 is .* discarded"):
        fetch([url + "t10k-labels-idx1-ubyte.gz"], dest, md5s={"0" * 32}, progress=False)
    assert not dest.exists() and not list(dest.parent.iterdir())


# ------------------------------------------------------------------------------------ digits
def test_digits_has_1797_samples_split_stratified_and_fixed() -> None:
    pytest.importorskip("sklearn")
    train = load_dataset("digits", train=True)
    test = load_dataset("digits", train=False)
    assert len(train) + len(test) == 1797 and (len(train), len(test)) == (1438, 359)
    assert train.images.shape[1:] == (1, 8, 8) and train.images.dtype == torch.uint8
    assert int(train.images.max()) == 255 and int(train.images.min()) == 0
    from sklearn.datasets import load_digits

    bunch = load_digits()
    all_images = np.rint(bunch.images * 255 / 16).astype(np.uint8)
    train_idx, test_idx = digits_mod.stratified_split(bunch.target, test_fraction=0.2, seed=0)
    assert np.intersect1d(train_idx, test_idx).size == 0
    assert torch.equal(test.images[:, 0], torch.from_numpy(all_images[test_idx]))
    counts = np.bincount(bunch.target)
    assert np.bincount(test.labels.numpy()).tolist() == np.rint(0.2 * counts).astype(int).tolist()
    x, _ = train.batch(torch.arange(len(train)))
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std()) - 1) < 1e-3
    assert "digits" in names()


def test_digits_without_sklearn_is_a_clear_error(monkeypatch) -> None:
    digits_mod._digits.cache_clear()
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    try:
        with pytest.raises(DataError, match=r"needs scikit-learn.*pip install"):
            load_dataset("digits", train=True)
    finally:
        digits_mod._digits.cache_clear()


# ------------------------------------------------------------------------------ ImageDataset
def _small_dataset() -> ImageDataset:
    gen = torch.Generator().manual_seed(0)
    return ImageDataset(
        images=torch.randint(0, 256, (10, 3, 4, 5), dtype=torch.uint8, generator=gen),
        labels=torch.arange(10) % 4,
        num_classes=4,
        name="tiny",
        mean=(0.1, 0.5, 0.9),
        std=(0.2, 0.3, 0.4),
    )


def test_batch_normalizes_like_a_naive_loop() -> None:
    data = _small_dataset()
    idx = torch.tensor([7, 2, 2, 9])
    x, y = data.batch(idx)
    assert x.dtype == torch.float32 and x.shape == (4, 3, 4, 5)
    assert y.tolist() == [3, 2, 2, 1]
    for row, i in enumerate(idx.tolist()):
        for c in range(3):
            ref = (data.images[i, c].double() / 255 - data.mean[c]) / data.std[c]
            assert torch.allclose(x[row, c].double(), ref, atol=1e-5)
    with pytest.raises(ConfigError, match=r"batch indices must lie in \[0, 10\)"):
        data.batch(torch.tensor([10]))


def test_subset_is_a_view_and_validated() -> None:
    data = _small_dataset()
    assert repr(data) == "ImageDataset(name='tiny', samples=10, shape=(3, 4, 5), num_classes=4)"
    sub = data.subset(3)
    assert len(sub) == 3 and sub.images.data_ptr() == data.images.data_ptr()
    assert sub.labels.data_ptr() == data.labels.data_ptr()
    for bad in (0, 11, 2.5, True):
        with pytest.raises(ConfigError, match="subset size"):
            data.subset(bad)


def test_dataset_validation_and_unknown_name(tmp_path) -> None:
    with pytest.raises(DataError, match="10 images but 9 labels"):
        ImageDataset(
            images=torch.zeros(10, 1, 2, 2, dtype=torch.uint8),
            labels=torch.zeros(9, dtype=torch.int64),
            num_classes=2,
            name="x",
            mean=(0.0,),
            std=(1.0,),
        )
    with pytest.raises(ConfigError, match=r"unknown dataset 'nope'.*mnist"):
        load_dataset("nope", root=tmp_path, train=True)
    assert set(names()) >= {"mnist", "fashion-mnist", "cifar-10", "cifar-100", "digits"}


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny matmuls gain nothing from threads, and threads thrash on a busy 2-core runner."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_digits_batches_are_learnable(one_thread) -> None:
    """Normalized digits batches train a softmax regression to > 90% test accuracy."""
    pytest.importorskip("sklearn")
    train = load_dataset("digits", train=True)
    test = load_dataset("digits", train=False)
    x, y = train.batch(torch.arange(len(train)))
    xt, yt = test.batch(torch.arange(len(test)))
    gen = torch.Generator().manual_seed(0)
    weight = (0.01 * torch.randn(64, 10, generator=gen)).requires_grad_()
    bias = torch.zeros(10, requires_grad=True)
    opt = torch.optim.SGD([weight, bias], lr=1.0)
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x.flatten(1) @ weight + bias, y)
        loss.backward()
        opt.step()
    with torch.no_grad():
        accuracy = float(((xt.flatten(1) @ weight + bias).argmax(1) == yt).float().mean())
    assert accuracy > 0.9, accuracy
