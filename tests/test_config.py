"""TrainConfig validation, TOML round trip, and the registry's rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from acpsl import ConfigError
from acpsl.config import TrainConfig, read_toml
from acpsl.registry import Registry


def test_toml_round_trip(tmp_path: Path) -> None:
    config = TrainConfig(
        scheme="acp", scheme_params={"p_base": 0.7, "scorer": "lcis"}, target_acc=(0.9, 0.95)
    )
    path = tmp_path / "config.toml"
    path.write_text(config.to_toml())
    assert TrainConfig.from_toml(path) == config


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"lr": -0.1}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"clients": 0}, "clients"),
        ({"rounds": 0}, "rounds"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"partition": "zipf"}, "partition"),
        ({"mode": "async"}, "mode"),
        ({"beta": 0.0}, "beta"),
        ({"target_acc": (95.0,)}, "target_acc"),
        ({"momentum": 1.0}, "momentum"),
        ({"subset": 0}, "subset"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_invalid_values_name_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=f"invalid {field}="):
        TrainConfig(**changes)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"device": 0}, "device"),
        ({"data_dir": 5}, "data_dir"),
        ({"scheme": ["acp"]}, "scheme"),
        ({"stem": None}, "stem"),
        ({"lr": True}, "lr"),
        ({"beta": False}, "beta"),
        ({"momentum": "0.9"}, "momentum"),
        ({"weight_decay": None}, "weight_decay"),
        ({"rounds": True}, "rounds"),
        ({"seed": 1.0}, "seed"),
        ({"progress": "yes"}, "progress"),
        ({"download": 1}, "download"),
        ({"target_acc": (True,)}, "target_acc"),
        ({"target_acc": ("0.9",)}, "target_acc"),
        ({"scheme_params": 3}, "scheme_params"),
    ],
)
def test_wrong_types_are_config_errors_naming_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=f"invalid {field}="):
        TrainConfig(**changes)


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("device = 0", "device"),
        ("data_dir = 5", "data_dir"),
        ("lr = true", "lr"),
        ('clients = "5"', "clients"),
        ('progress = "no"', "progress"),
        ("scheme_params = 1", "scheme_params"),
        ('target_acc = ["high"]', "target_acc"),
    ],
)
def test_wrong_types_in_toml_are_config_errors(tmp_path: Path, line: str, field: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(line + "\n")
    with pytest.raises(ConfigError, match=f"invalid {field}="):
        TrainConfig.from_toml(path)


def test_numbers_and_paths_that_are_fine() -> None:
    config = TrainConfig(lr=1, beta=2, momentum=0, target_acc=(1,), data_dir=Path("/d"))
    assert config.lr == 1 and config.target_acc == (1.0,) and config.data_dir == "/d"
    assert TrainConfig.from_dict({"target_acc": 0.9}).target_acc == (0.9,)


def test_unknown_keys_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown configuration keys: colour"):
        TrainConfig.from_dict({"colour": "red"})
    bad = tmp_path / "bad.toml"
    bad.write_text("lr = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        read_toml(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        read_toml(tmp_path / "missing.toml")


def test_registry_rejects_duplicates_and_names_choices() -> None:
    reg: Registry[int] = Registry("widget")

    @reg.register("one")
    def one() -> int:
        return 1

    with pytest.raises(ValueError, match="already registered"):
        reg.register("one")(one)
    assert reg.create("one") == 1
    assert reg.names() == reg.list() == ["one"]
    with pytest.raises(ConfigError, match="unknown widget 'two'; choose one of: one"):
        reg.create("two")
    with pytest.raises(ConfigError, match="bad parameters"):
        reg.create("one", size=3)
