"""Your own model and dataset (SPEC section 7, "Plug-ins"): ``MODULE:FUNCTION`` builders,
``acpsl.models.register`` / ``acpsl.data.register`` in a module on disk, torch Datasets read
through a DataLoader, and ``acpsl compare`` workers that import the same modules."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch.utils.data import TensorDataset

from acpsl import cli, data, models
from acpsl.data import TorchSplit
from acpsl.errors import ConfigError, DataError
from acpsl.plugins import (
    import_plugin_module,
    is_reference,
    registered_modules,
    short_name,
    worker_environment,
)

SRC = Path(__file__).resolve().parents[1] / "src"

#: A user's module: a lazily read dataset of 8x8 one-channel "images" (4 Gaussian blobs,
#: stored as .npy files beside it), a small split model, and both registered by name.
PLUGIN = textwrap.dedent(
    '''
    """A user's plug-in module, as docs/models.md and docs/data.md show."""
    from pathlib import Path

    import numpy as np
    import torch
    from torch import nn
    from torch.utils.data import Dataset

    import acpsl

    HERE = Path(__file__).parent
    GETS = []


    class Blobs(Dataset):
        """Images read from a .npy file one at a time (not in memory); labels in .targets."""

        def __init__(self, split):
            self.file = HERE / f"{split}_x.npy"
            self.targets = np.load(HERE / f"{split}_y.npy")
            self.classes = ["a", "b", "c", "d"]

        def __len__(self):
            return len(self.targets)

        def __getitem__(self, i):
            GETS.append(i)
            x = np.load(self.file, mmap_mode="r")[i]
            return torch.from_numpy(np.array(x)), int(self.targets[i])


    def make_files(root, *, train=256, test=64, seed=0):
        rng = np.random.default_rng(seed)
        centers = rng.normal(0, 1, size=(4, 1, 8, 8)).astype(np.float32)
        for split, n in (("train", train), ("test", test)):
            y = rng.integers(0, 4, size=n)
            x = centers[y] + 0.5 * rng.normal(size=(n, 1, 8, 8)).astype(np.float32)
            np.save(Path(root) / f"{split}_x.npy", x.astype(np.float32))
            np.save(Path(root) / f"{split}_y.npy", y.astype(np.int64))


    def blobs():
        return Blobs("train"), Blobs("test")


    def tiny_pair(*, in_channels, num_classes):
        client = nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU())
        server = nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, num_classes))
        return client, server


    @acpsl.data.register("toyblobs")
    def toyblobs(*, root, download):
        return blobs()


    @acpsl.models.register("tinynet")
    def tinynet(*, in_channels, num_classes):
        return tiny_pair(in_channels=in_channels, num_classes=num_classes)
    '''
)


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    """A folder holding the user's module (``userplug.py``, not yet imported) and its data."""
    (tmp_path / "userplug.py").write_text(PLUGIN, "utf-8")
    return tmp_path


def _load_plugin_functions(directory: Path, name: str) -> ModuleType:
    """The module's text without its registrations, written as ``name.py`` and imported
    the way a reference imports it (so in-process tests register nothing in this session)."""
    path = directory / f"{name}.py"
    path.write_text(PLUGIN.split("@acpsl.data.register")[0], "utf-8")
    module = import_plugin_module(str(path), kind="test", text=str(path))
    module.make_files(directory)
    return module


def test_references_are_told_apart_from_names() -> None:
    assert is_reference("nets.py:build") and is_reference("my.nets:build")
    assert not is_reference("resnet18")
    assert short_name("./a/b.py:blobs") == "blobs" and short_name("mnist") == "mnist"


@pytest.mark.parametrize(
    ("ref", "needle"),
    [
        ("missing_plugin_mod:build", "cannot import model plug-in"),
        ("./absent.py:build", "not found"),
        ("broken_{uid}.py:build", "importing broken_{uid} failed: ZeroDivisionError"),
        ("okmod_{uid}.py:nothing", "has no function 'nothing'"),
        ("okmod_{uid}.py:VALUE", "not a function"),
        ("okmod_{uid}.py:", "use MODULE:FUNCTION"),
    ],
)
def test_bad_references_are_one_line_config_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ref: str, needle: str
) -> None:
    uid = "".join(c if c.isalnum() else "_" for c in tmp_path.name)  # one module per test
    (tmp_path / f"broken_{uid}.py").write_text("1 / 0\n", "utf-8")
    (tmp_path / f"okmod_{uid}.py").write_text("VALUE = 3\n", "utf-8")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=needle.format(uid=uid)) as info:
        models.resolve(ref.format(uid=uid))
    assert "\n" not in str(info.value)


def test_model_builder_pair_is_wrapped_and_seeded(plugin_dir: Path) -> None:
    _load_plugin_functions(plugin_dir, "plug_models")
    ref = f"{plugin_dir / 'plug_models.py'}:tiny_pair"
    before = torch.get_rng_state()
    a = models.create(ref, in_channels=1, num_classes=4, seed=5)
    b = models.create(ref, in_channels=1, num_classes=4, seed=5)
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is left alone
    assert isinstance(a, models.SplitModel) and a.num_classes == 4
    for p, q in zip(a.full.parameters(), b.full.parameters()):
        assert torch.equal(p, q)
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(a.server(a.client(x)), a.full(x))
    with pytest.raises(ConfigError, match="does not take cut"):
        models.create(ref, in_channels=1, num_classes=4, cut=2)


def test_dataset_builder_reads_labels_without_images_and_loads_with_workers(
    plugin_dir: Path,
) -> None:
    gets: list[int] = _load_plugin_functions(plugin_dir, "plug_data").GETS
    ref = f"{plugin_dir / 'plug_data.py'}:blobs"
    train = data.load_dataset(ref, root=plugin_dir, train=True)
    test = data.load_dataset(ref, root=plugin_dir, train=False)
    assert isinstance(train, TorchSplit) and not train.in_memory
    assert (len(train), len(test), train.num_classes, train.shape) == (256, 64, 4, (1, 8, 8))
    assert len(gets) == 2  # one probe per split for the shape, the labels came from .targets
    parts = data.partition("dirichlet", labels=train.labels, clients=3, seed=0, beta=0.5)
    assert sum(int(p.numel()) for p in parts) == 256 and len(gets) == 2
    order = torch.randperm(256, generator=torch.Generator().manual_seed(0))[:100]
    loaded = list(train.batches(order, batch_size=32))  # DataLoader, 2 worker processes
    direct = [train.batch(chunk) for chunk in order.split(32)]
    assert [x.shape[0] for x, _ in loaded] == [32, 32, 32, 4]
    for (x1, y1), (x2, y2) in zip(loaded, direct):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    small = train.subset(10)
    assert len(small) == 10 and torch.equal(small.labels, train.labels[:10])


def test_label_fallback_reads_samples_once_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    class NoTargets(torch.utils.data.Dataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return 6

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            return torch.zeros(3), i % 3

    with caplog.at_level(logging.WARNING):
        split = TorchSplit(NoTargets(), name="plain")
    assert split.labels.tolist() == [0, 1, 2, 0, 1, 2] and split.num_classes == 3
    assert "no .targets attribute" in caplog.text
    mem = TorchSplit(TensorDataset(torch.randn(5, 2), torch.tensor([0, 1, 1, 0, 1])), name="m")
    assert mem.in_memory and mem.batch(torch.tensor([1, 2]))[1].tolist() == [1, 1]
    with pytest.raises(DataError, match="x must be a tensor"):
        TorchSplit([(1.0, 0)], name="bad")


def test_train_cli_with_plugin_model_and_dataset(
    plugin_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _load_plugin_functions(plugin_dir, "plug_train")
    monkeypatch.chdir(plugin_dir)
    (plugin_dir / "run.toml").write_text(
        'model = "plug_train.py:tiny_pair"\ndataset = "plug_train:blobs"\nrounds = 2\n', "utf-8"
    )
    out = plugin_dir / "run"
    argv = ["train", "--config", "run.toml", "--scheme", "topk", "--k", "16", "--clients", "2"]
    argv += ["--batch-size", "32", "--lr", "0.05", "--out", str(out), "--no-progress"]
    code = cli.main(argv)
    assert code == 0
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 2 and records[-1]["test_acc"] >= 0.8  # chance is 0.25
    assert 'model = "plug_train.py:tiny_pair"' in (out / "config.toml").read_text()
    capsys.readouterr()


def test_registered_modules_refuse_main() -> None:
    def build() -> None: ...

    build.__module__ = "__main__"
    with pytest.raises(ConfigError, match="__main__"):
        registered_modules([build])
    build.__module__ = "mylab.nets"
    assert registered_modules([build, models.MODELS.get("smallcnn")]) == ["mylab.nets"]
    env = worker_environment(["mylab.nets"])
    assert env["ACPSL_PLUGINS"] == "mylab.nets" and str(Path.cwd()) in env["ACPSL_PLUGIN_PATH"]


def test_compare_two_workers_with_registered_model_and_dataset(plugin_dir: Path) -> None:
    """The module registers ``tinynet`` and ``toyblobs``; two worker processes import it
    through the references and train on its lazily read dataset."""
    subprocess.run(
        [sys.executable, "-c", "import userplug; userplug.make_files('.')"],
        cwd=plugin_dir,
        check=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    out = plugin_dir / "grid"
    argv = ["compare", "--schemes", "standard", "topk:k=16", "--out", str(out)]
    argv += ["--model", "userplug.py:tinynet", "--dataset", "userplug.py:toyblobs"]
    argv += ["--clients", "2", "--rounds", "2", "--batch-size", "32", "--lr", "0.05"]
    argv += ["--seeds", "0", "--workers", "2", "--no-progress", "--no-report"]
    done = subprocess.run(
        [sys.executable, "-m", "acpsl", *argv],
        cwd=plugin_dir,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for label in ("standard", "topk-k16"):
        run = out / "toyblobs" / label / "seed0"
        records = [json.loads(x) for x in (run / "records.jsonl").read_text().splitlines()]
        assert len(records) == 2, (run / "log.txt").read_text()
        assert records[-1]["test_acc"] >= 0.8


@pytest.mark.net
def test_serve_and_client_build_the_plugin_run(
    plugin_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``serve`` sends the references in its configuration; each client imports them (one
    through ``--model``: its own path to the module)."""
    net = pytest.importorskip("test_transport_net")
    from acpsl.config import TrainConfig
    from acpsl.transport.backend import EngineClientBackend
    from acpsl.transport.client import ClientOptions, SplitClient

    _load_plugin_functions(plugin_dir, "plug_net")
    monkeypatch.chdir(plugin_dir)
    config = TrainConfig(
        model="plug_net.py:tiny_pair",
        dataset="plug_net:blobs",
        data_dir=str(plugin_dir),
        clients=2,
        rounds=1,
        batch_size=32,
        lr=0.05,
        device="cpu",
        progress=False,
    )
    server = net.start_server(config, plugin_dir / "net")
    results: list[str] = []

    def client(model: str | None) -> None:
        split = SplitClient(
            backend=EngineClientBackend(model=model),
            options=ClientOptions(server=server.address, token=net.TOKEN, connect_timeout=30.0),
        )
        try:
            results.append(split.run())
        finally:
            split.close()

    threads = [
        threading.Thread(target=client, args=(m,), daemon=True)
        for m in (None, f"{plugin_dir / 'plug_net.py'}:tiny_pair")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert server.wait(timeout=60)
    assert len(results) == 2
    records = [
        json.loads(x) for x in (plugin_dir / "net" / "records.jsonl").read_text().splitlines()
    ]
    assert len(records) == 1 and records[0]["test_acc"] >= 0.6
