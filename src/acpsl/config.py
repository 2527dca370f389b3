"""Run configuration: one frozen dataclass, loadable from TOML and overridden by CLI flags.

Every run writes its resolved configuration (``config.toml``) beside its records, so a run
can be repeated or resumed exactly.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from acpsl.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MODES = ("sequential", "splitfed")
PARTITIONS = ("iid", "dirichlet")
OPTIMIZERS = ("sgd", "adam")
STEMS = ("imagenet", "cifar")
#: The schemes and models acpsl itself registers, in registration order, written here so a
#: configuration is checked without importing them (they import PyTorch); a test keeps these
#: equal to the registries. A name not listed is looked up in the registry (a user's
#: ``acpsl.schemes.register`` / ``acpsl.models.register``); a ``MODULE:FUNCTION`` plug-in
#: reference is left to the plug-in loader.
BUILTIN_SCHEMES = ("standard", "acp", "randtopk", "topk", "sizered", "quant", "l1", "dropgroup")
BUILTIN_MODELS = ("resnet18", "resnet20", "smallcnn")
#: Per-step metric loggers a run may write beside ``records.jsonl`` (``acpsl.engine.metrics``).
LOGGERS = ("csv", "tensorboard")
AUGMENTS = ("none", "crop-flip")
LR_SCHEDULES = ("constant", "cosine")
PRECISIONS = ("fp32", "bf16")


def default_data_dir() -> str:
    """``$ACPSL_DATA`` if set, else ``./data``."""
    return os.environ.get("ACPSL_DATA", "data")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one split-learning run.

    Attributes:
        scheme: cut scheme name (see ``acpsl.schemes.names()``).
        scheme_params: keyword parameters of the scheme (e.g. ``{"p_base": 0.7}``).
        dataset: dataset name (see ``acpsl.data.names()``).
        data_dir: root holding one folder per dataset (``mnist/``, ``cifar-10/``, ...).
        download: fetch missing dataset files from their upstream hosts.
        subset: use only the first N training samples (``None``: all).
        test_subset: evaluate on only the first N test samples (``None``: all).
        model: split model name (see ``acpsl.models.names()``).
        cut: number of the model's top-level children on the client; ``None`` = the model's
            own default (ResNet-18: 4, the paper's split; ResNet-20: its last layer).
        stem: ``imagenet`` (7x7 conv + max-pool, torchvision's) or ``cifar`` (3x3, no pool).
        clients: number of clients.
        mode: ``sequential`` (vanilla SL, client model relayed) or ``splitfed`` (averaged).
        partition: ``iid`` or ``dirichlet``.
        beta: Dirichlet concentration (smaller = more skewed).
        rounds: rounds to train; one round = every client passes once over its data.
        batch_size: mini-batch size.
        optimizer: ``sgd`` or ``adam``.
        lr: learning rate.
        momentum: SGD momentum.
        weight_decay: L2 weight decay.
        lr_schedule: ``constant``, or ``cosine``: the learning rate decays from ``lr`` to
            ``lr_min`` along half a cosine over the run's ``T = rounds x iterations per
            round`` global iterations, reaching ``lr_min`` at the last one (a function of the
            global iteration, so a resumed run continues the same curve).
        lr_min: the floor of the cosine schedule (ignored by ``constant``).
        augment: ``none``, or ``crop-flip``: every training batch is augmented on the
            client with a random crop after 4-pixel zero padding and a horizontal flip with
            probability 1/2, drawn from the run's seed and the global iteration.
        precision: ``fp32``, or ``bf16``: the client and server models run under
            ``torch.autocast`` in bfloat16; the cut's payloads stay float32 (same bytes).
        channels_last: keep the models' 4-D tensors in channels-last memory format.
        seed: seed of every random choice of the run.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda[:i]``.
        target_acc: test accuracies (in [0, 1]) whose rounds and bytes to reach are reported.
        eval_uncompressed: evaluate on the test set without compressing the cut.
        progress: show progress bars.
        loggers: per-step metrics to write beside ``records.jsonl``: ``csv``
            (``metrics.csv``) and/or ``tensorboard`` (``tensorboard/``, an optional extra).

    Raises:
        ConfigError: an invalid value, or an unknown scheme or model name (checked when the
            configuration is built; ``MODULE:FUNCTION`` plug-in names are checked when
            loaded).
    """

    scheme: str = "standard"
    scheme_params: Mapping[str, Any] = field(default_factory=dict)
    dataset: str = "mnist"
    data_dir: str = field(default_factory=default_data_dir)
    download: bool = False
    subset: int | None = None
    test_subset: int | None = None
    model: str = "resnet18"
    cut: int | None = None
    stem: str = "imagenet"
    clients: int = 5
    mode: str = "sequential"
    partition: str = "iid"
    beta: float = 0.5
    rounds: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    lr_min: float = 0.0
    augment: str = "none"
    precision: str = "fp32"
    channels_last: bool = False
    seed: int = 0
    device: str = "auto"
    target_acc: tuple[float, ...] = ()
    eval_uncompressed: bool = False
    progress: bool = True
    loggers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.data_dir, os.PathLike):
            object.__setattr__(self, "data_dir", os.fspath(self.data_dir))
        if not isinstance(self.scheme_params, Mapping):
            raise ConfigError(
                f"invalid scheme_params={self.scheme_params!r}: must be a table of scheme "
                "parameters (e.g. [scheme_params] with p_base = 0.7)"
            )
        targets = self.target_acc
        if isinstance(targets, (str, bytes)) or not isinstance(targets, (list, tuple)):
            targets = (targets,)
        for acc in targets:
            if not _is_number(acc):
                raise ConfigError(
                    f"invalid target_acc={acc!r}: target accuracies are numbers in (0, 1]"
                )
        object.__setattr__(self, "scheme_params", dict(self.scheme_params))
        object.__setattr__(self, "target_acc", tuple(float(a) for a in targets))
        loggers = self.loggers
        if isinstance(loggers, str):
            loggers = tuple(n.strip() for n in loggers.split(",") if n.strip())
        if not isinstance(loggers, (list, tuple)) or not all(isinstance(n, str) for n in loggers):
            raise ConfigError(f"invalid loggers={self.loggers!r}: a list of {', '.join(LOGGERS)}")
        object.__setattr__(self, "loggers", tuple(dict.fromkeys(loggers)))
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid value and what to do.

        Types are checked first (a TOML ``device = 0`` or ``lr = true`` is an error, not a
        crash or a silent 1.0): text fields must be strings, switches booleans, counts
        integers and rates numbers (an integer is accepted for a rate; a boolean never is).
        """

        def bad(name: str, value: Any, why: str) -> ConfigError:
            return ConfigError(f"invalid {name}={value!r}: {why}")

        for name in _STR_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, str):
                raise bad(name, value, f"must be a string, not {type(value).__name__}")
        for name in _BOOL_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise bad(name, value, "must be true or false")
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            if not _is_number(value):
                raise bad(name, value, f"must be a number, not {type(value).__name__}")
        for name in ("clients", "rounds", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(name, value, "must be a positive integer")
        for name in ("subset", "test_subset"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise bad(name, value, "must be a positive integer (or omitted for all samples)")
        if self.cut is not None and (
            isinstance(self.cut, bool) or not isinstance(self.cut, int) or self.cut < 1
        ):
            raise bad("cut", self.cut, "must be a positive number of client-side layers")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise bad("lr", self.lr, "the learning rate must be a positive number")
        if not (math.isfinite(self.lr_min) and self.lr_min >= 0):
            raise bad("lr_min", self.lr_min, "the cosine schedule's floor must be >= 0")
        if self.lr_schedule == "cosine" and self.lr_min > self.lr:
            raise bad("lr_min", self.lr_min, f"the cosine floor must not exceed lr={self.lr}")
        if not (math.isfinite(self.momentum) and 0 <= self.momentum < 1):
            raise bad("momentum", self.momentum, "must be in [0, 1)")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise bad("weight_decay", self.weight_decay, "must be >= 0")
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise bad("beta", self.beta, "the Dirichlet concentration must be > 0")
        if self.mode not in MODES:
            raise bad("mode", self.mode, f"choose one of {', '.join(MODES)}")
        if self.partition not in PARTITIONS:
            raise bad("partition", self.partition, f"choose one of {', '.join(PARTITIONS)}")
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", self.optimizer, f"choose one of {', '.join(OPTIMIZERS)}")
        if self.stem not in STEMS:
            raise bad("stem", self.stem, f"choose one of {', '.join(STEMS)}")
        for name, choices in (
            ("lr_schedule", LR_SCHEDULES),
            ("augment", AUGMENTS),
            ("precision", PRECISIONS),
        ):
            if getattr(self, name) not in choices:
                raise bad(name, getattr(self, name), f"choose one of {', '.join(choices)}")
        if not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise bad("device", self.device, "use auto, cpu, cuda or cuda:N")
        for acc in self.target_acc:
            if not 0 < acc <= 1:
                raise bad("target_acc", acc, "target accuracies are fractions in (0, 1]")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise bad("seed", self.seed, "must be a non-negative integer")
        for name in self.loggers:
            if name not in LOGGERS:
                raise bad("loggers", name, f"choose from {', '.join(LOGGERS)}")
        for kind, name in (("scheme", self.scheme), ("model", self.model)):
            known = _known_names(kind, name)
            if known is not None:
                raise ConfigError(f"unknown {kind} {name!r}; choose one of: {', '.join(known)}")

    # ------------------------------------------------------------------------------ I/O
    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (validated)."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ConfigError(f"unknown configuration keys: {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (TOML-friendly: tuples become lists, ``None`` values are dropped)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        return out

    def to_toml(self) -> str:
        """The configuration as TOML text (what ``config.toml`` holds)."""
        return dict_to_toml(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build from a mapping; unknown keys and wrong types are :class:`ConfigError`."""
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ConfigError(
                f"unknown configuration keys: {', '.join(sorted(unknown))}; "
                f"valid keys are: {', '.join(sorted(names))}"
            )
        kwargs = dict(data)
        if "target_acc" in kwargs:
            value = kwargs["target_acc"]
            kwargs["target_acc"] = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        if isinstance(kwargs.get("loggers"), list):
            kwargs["loggers"] = tuple(kwargs["loggers"])
        try:
            return cls(**kwargs)
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid configuration: {exc}") from None

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> TrainConfig:
        """Load a configuration file; a missing or malformed file is a :class:`ConfigError`."""
        return cls.from_dict(read_toml(path))


#: Fields that must be strings, booleans and (real, non-boolean) numbers.
_STR_FIELDS = (
    "scheme",
    "dataset",
    "data_dir",
    "model",
    "stem",
    "mode",
    "partition",
    "optimizer",
    "lr_schedule",
    "augment",
    "precision",
    "device",
)
_BOOL_FIELDS = ("download", "eval_uncompressed", "progress", "channels_last")
_FLOAT_FIELDS = ("beta", "lr", "lr_min", "momentum", "weight_decay")


def _known_names(kind: str, name: str) -> list[str] | None:
    """``None`` when ``name`` is a valid ``kind`` ("scheme" or "model") name, else the names
    to choose from. Built-in names and ``MODULE:FUNCTION`` plug-in references are accepted
    without importing anything; another name is looked up in the registry."""
    builtin = BUILTIN_SCHEMES if kind == "scheme" else BUILTIN_MODELS
    if name in builtin or ":" in name:
        return None
    if kind == "scheme":
        from acpsl.schemes import names
    else:
        from acpsl.models import names
    known = names()
    return None if name in known else known


def _is_number(value: Any) -> bool:
    """A real int or float, but not a bool (``True`` is an ``int`` in Python)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a TOML file, turning I/O and syntax errors into one-line :class:`ConfigError`."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {p} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {p} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {p}: {exc}") from None


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def dict_to_toml(data: Mapping[str, Any]) -> str:
    """Write a flat mapping whose values are scalars, lists, or one level of tables."""
    scalars = [(k, v) for k, v in data.items() if not isinstance(v, Mapping)]
    tables = [(k, v) for k, v in data.items() if isinstance(v, Mapping)]
    lines = [f"{k} = {_toml_value(v)}" for k, v in scalars]
    for key, table in tables:
        lines.append("")
        lines.append(f"[{key}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None)
    return "\n".join(lines) + "\n"
