"""Building a run from its configuration: device, data, partition, split model, runtimes."""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from acpsl import data as acpsl_data
from acpsl import models as acpsl_models
from acpsl.config import TrainConfig
from acpsl.data.augment import make_augmenter
from acpsl.data.dataset import ImageDataset
from acpsl.data.torch_split import Split
from acpsl.engine.client import ClientRuntime
from acpsl.engine.optim import make_optimizer
from acpsl.engine.precision import Precision
from acpsl.engine.schedule import LrSchedule
from acpsl.engine.server import ServerRuntime, probe_cut_shape
from acpsl.errors import ConfigError
from acpsl.schemes.base import Scheme
from acpsl.schemes.registry import SCHEMES

#: Tags that keep the seeds of different random choices of a run independent.
SEED_SHUFFLE = 1
SEED_CLIENT_SCHEME = 2
SEED_SERVER_SCHEME = 3


def derive_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed derived from the run's ``seed`` and ``parts`` (NumPy's SeedSequence).

    Different ``parts`` (a tag, a round, a client) give statistically independent streams.
    """
    state = np.random.SeedSequence([int(seed), *(int(p) for p in parts)]).generate_state(2)
    return int((int(state[0]) << 32 | int(state[1])) & ((1 << 63) - 1))


def resolve_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; other names as given.

    Raises:
        ConfigError: if CUDA is asked for but not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"invalid device {name!r}: {exc}") from None


def make_scheme(name: str, params: dict[str, Any], *, seed: int) -> Scheme:
    """``acpsl.schemes.create(name, **params)``, adding ``seed`` when the scheme takes one.

    A scheme with randomness (RandTopk, ACP's random ablations) accepts a ``seed``; each
    client gets its own derived seed unless the user fixed one in ``params``.
    """
    factory = SCHEMES.get(name)
    kwargs = dict(params)
    if "seed" not in kwargs:
        try:
            accepts_seed = "seed" in inspect.signature(factory).parameters
        except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
            accepts_seed = False
        if accepts_seed:
            kwargs["seed"] = seed
    return SCHEMES.create(name, **kwargs)


def check_config(config: TrainConfig) -> None:
    """Check the names and scheme parameters of ``config`` before any data is loaded.

    Raises:
        ConfigError: an unknown scheme, dataset, model or partition, a plug-in
            (``MODULE:FUNCTION``) that cannot be imported, or scheme parameters the scheme
            rejects; the message lists the valid choices.
    """
    from acpsl import schemes

    if config.scheme not in schemes.names():
        known = ", ".join(schemes.names())
        raise ConfigError(f"unknown scheme {config.scheme!r}; choose one of: {known}")
    # Names or MODULE:FUNCTION plug-ins (imported here, so a bad one fails before training).
    acpsl_data.resolve(config.dataset)
    acpsl_models.resolve(config.model)
    make_scheme(config.scheme, dict(config.scheme_params), seed=0)


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, root: str, train: bool, download: bool) -> Split:
    return acpsl_data.load_dataset(name, root=root, train=train, download=download)


def load_split(config: TrainConfig, *, train: bool) -> Split:
    """The training or test split of ``config.dataset``, cut to ``subset``/``test_subset``.

    The last few splits loaded are kept in memory (datasets are immutable, and clients only
    index them), so many runs in one process, such as a comparison, parse the files once.
    """
    root = str(Path(config.data_dir).expanduser().resolve())
    dataset = _load_cached(config.dataset, root, train, config.download)
    limit = config.subset if train else config.test_subset
    if limit is not None and limit < len(dataset):
        dataset = dataset.subset(limit)
    return dataset


@dataclass
class Run:
    """Everything a training run holds in memory.

    Attributes:
        config: the configuration.
        device: where the models live.
        train_set: the training split (shared by every client).
        test_set: the test split.
        parts: each client's indices into ``train_set``.
        clients: one runtime per client.
        server: the server runtime.
        client_models: the distinct client-model copies (sequential: 1, splitfed: one per
            client), in the order they are checkpointed.
        holder: sequential SL: which client holds the relayed model (``None`` before round 1).
    """

    config: TrainConfig
    device: torch.device
    train_set: Split
    test_set: Split
    parts: list[torch.Tensor]
    clients: list[ClientRuntime]
    server: ServerRuntime
    client_models: list[ClientRuntime] = field(default_factory=list)
    holder: int | None = None

    @property
    def sizes(self) -> list[int]:
        """Training samples per client."""
        return [int(p.numel()) for p in self.parts]

    def batches_per_client(self) -> list[int]:
        """Iterations of each client in one round (the last partial batch is kept)."""
        b = self.config.batch_size
        return [(n + b - 1) // b for n in self.sizes]

    def total_iterations(self) -> int:
        """``T`` of the run: rounds times the iterations of one round."""
        return self.config.rounds * sum(self.batches_per_client())


def build_run(config: TrainConfig, *, device: torch.device) -> Run:
    """Load the data, partition it, build the split model and the client/server runtimes.

    Raises:
        ConfigError: too few samples for the clients, or a bad model/scheme choice.
        DataError: the dataset files are missing or corrupt.
    """
    train_set = load_split(config, train=True)
    test_set = load_split(config, train=False)
    if len(train_set) < config.clients:
        raise ConfigError(
            f"{config.clients} clients but only {len(train_set)} training samples; every "
            "client needs at least one: use fewer --clients or a larger --subset"
        )
    parts = acpsl_data.partition(
        config.partition,
        labels=train_set.labels,
        clients=config.clients,
        seed=config.seed,
        beta=config.beta,
    )
    parts = [torch.as_tensor(p, dtype=torch.int64) for p in parts]
    split = acpsl_models.create(
        config.model,
        in_channels=train_set.shape[0],
        num_classes=train_set.num_classes,
        cut=config.cut,
        stem=config.stem,
        seed=config.seed,
    )
    precision = Precision(dtype=config.precision, channels_last=config.channels_last)
    precision.warn_if_slow(device)
    schedule = LrSchedule(kind=config.lr_schedule, base=config.lr, floor=config.lr_min)
    if isinstance(train_set, ImageDataset):
        mean, std = train_set.mean, train_set.std
    else:  # a plug-in dataset normalizes its own way: crops are padded with zeros
        mean, std = (0.0,) * train_set.shape[0], (1.0,) * train_set.shape[0]
    augment = make_augmenter(config.augment, seed=config.seed, mean=mean, std=std)
    client_model = precision.model(split.client.to(device))
    server_model = precision.model(split.server.to(device))
    server = ServerRuntime(
        model=server_model,
        optimizer=make_optimizer(server_model.parameters(), config=config),
        scheme_factory=_ServerSchemes(config),
        device=device,
        # the server refuses an uplink of another shape, or a larger batch, before decoding it
        cut_shape=probe_cut_shape(client_model, input_shape=tuple(train_set.shape), device=device),
        max_batch=config.batch_size,
        precision=precision,
        schedule=schedule,
    )
    clients: list[ClientRuntime] = []
    distinct: list[ClientRuntime] = []
    shared_opt = make_optimizer(client_model.parameters(), config=config)
    for c in range(config.clients):
        scheme = make_scheme(
            config.scheme,
            dict(config.scheme_params),
            seed=derive_seed(config.seed, SEED_CLIENT_SCHEME, c),
        )
        if config.mode == "sequential":
            model, opt = client_model, shared_opt
        else:
            # SplitFed: every client trains its own copy, starting from the same weights.
            model = client_model if c == 0 else copy.deepcopy(client_model)
            opt = shared_opt if c == 0 else make_optimizer(model.parameters(), config=config)
        runtime = ClientRuntime(
            client_id=c,
            model=model,
            optimizer=opt,
            scheme=scheme,
            device=device,
            augment=augment,
            precision=precision,
            schedule=schedule,
        )
        clients.append(runtime)
        if config.mode != "sequential" or c == 0:
            distinct.append(runtime)
    run = Run(
        config=config,
        device=device,
        train_set=train_set,
        test_set=test_set,
        parts=parts,
        clients=clients,
        server=server,
        client_models=distinct,
    )
    for c in range(config.clients):
        server.scheme(c)  # build every decoder up front, so a bad parameter fails early
    return run


class _ServerSchemes:
    """Factory of the server-side scheme instances, one per client, in creation order."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.count = 0

    def __call__(self) -> Scheme:
        seed = derive_seed(self.config.seed, SEED_SERVER_SCHEME, self.count)
        self.count += 1
        return make_scheme(self.config.scheme, dict(self.config.scheme_params), seed=seed)


def shuffle_order(*, seed: int, round_index: int, client: int, size: int) -> torch.Tensor:
    """The seeded order in which ``client`` visits its ``size`` samples in ``round_index``."""
    gen = torch.Generator().manual_seed(derive_seed(seed, SEED_SHUFFLE, round_index, client))
    return torch.randperm(size, generator=gen)


def histogram_table(histogram: np.ndarray, sizes: Sequence[int]) -> str:
    """The per-client label histogram as a printable table (clients x classes)."""
    classes = histogram.shape[1]
    width = max(5, len(str(int(histogram.max(initial=0)))) + 1)
    head = "client " + "".join(f"{c:>{width}}" for c in range(classes)) + f"{'total':>8}"
    lines = [head]
    for i, row in enumerate(histogram):
        cells = "".join(f"{int(v):>{width}}" for v in row)
        lines.append(f"{i:>6} {cells}{sizes[i]:>8}")
    return "\n".join(lines)
