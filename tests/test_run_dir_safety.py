"""A run directory under a careless operator and a crash (issue 10, defects 2, 3 and 5).

``--resume`` never deletes finished records and refuses without the run's ``config.toml``;
``acpsl serve --resume --out DIR`` reads ``DIR/config.toml``; a checkpoint carries a
checksum that the loader verifies; leftovers of interrupted atomic writes are removed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from acpsl.cli import main as cli_main
from acpsl.config import TrainConfig
from acpsl.cut.state import encode_state_dict
from acpsl.engine import train
from acpsl.engine.checkpoint import load_checkpoint
from acpsl.engine.loop import CHECKPOINT, CONFIG, RECORDS
from acpsl.engine.records import read_records
from acpsl.errors import CheckpointError


def tiny(shared_data: Path, **changes: Any) -> TrainConfig:
    base: dict[str, Any] = dict(
        scheme="standard",
        dataset="mnist",
        data_dir=str(shared_data),
        subset=96,
        test_subset=32,
        model="smallcnn",
        cut=1,
        clients=2,
        rounds=1,
        batch_size=32,
        optimizer="adam",
        lr=1e-3,
        progress=False,
        device="cpu",
    )
    base.update(changes)
    return TrainConfig(**base)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def cli_args(shared_data: Path, out: Path) -> list[str]:
    return [
        "--dataset", "mnist", "--data-dir", str(shared_data), "--subset", "96",
        "--test-subset", "32", "--model", "smallcnn", "--cut", "1", "--clients", "2",
        "--batch-size", "32", "--optimizer", "adam", "--lr", "1e-3", "--no-progress",
        "--out", str(out),
    ]  # fmt: skip


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli_main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(err: str) -> str:
    """The one error line of stderr (log warnings before it, e.g. an unverified checkpoint,
    are allowed; a traceback or a second error line is not)."""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if not line.startswith("acpsl: warning: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


# ---------------------------------------------------------------- defect 2: resume refusals
def test_resume_without_checkpoint_refuses_and_keeps_the_finished_records(
    shared_data: Path, tmp_path: Path
) -> None:
    config = tiny(shared_data, rounds=2)
    train(config, out_dir=tmp_path, log=None)
    (tmp_path / CHECKPOINT).unlink()
    before = snapshot(tmp_path)
    assert len(read_records(tmp_path / RECORDS)) == 2
    with pytest.raises(CheckpointError) as err:
        train(config, out_dir=tmp_path, resume=True, log=None)
    message = str(err.value)
    assert "\n" not in message
    assert "2 finished rounds" in message and CHECKPOINT in message
    assert snapshot(tmp_path) == before  # every file as it was


def test_cli_resume_without_checkpoint_exits_1_and_keeps_the_records(
    capsys: pytest.CaptureFixture[str], shared_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    assert run_cli(capsys, "train", *cli_args(shared_data, out), "--rounds", "1")[0] == 0
    (out / CHECKPOINT).unlink()
    before = snapshot(out)
    code, _, err = run_cli(capsys, "train", "--out", str(out), "--rounds", "2", "--resume")
    assert code == 1 and "finished round" in one_line(err)
    assert snapshot(out) == before


def test_cli_resume_without_config_toml_refuses(
    capsys: pytest.CaptureFixture[str], shared_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "fresh"
    code, _, err = run_cli(capsys, "train", *cli_args(shared_data, out), "--resume")
    assert code == 1
    line = one_line(err)
    assert CONFIG in line and str(out) in line and "without --resume" in line
    assert not (out / RECORDS).exists() and not (out / CHECKPOINT).exists()


def test_a_crash_before_the_first_checkpoint_resumes_from_round_0(
    monkeypatch: pytest.MonkeyPatch, shared_data: Path, tmp_path: Path
) -> None:
    # Killed between round 1's record and round 1's checkpoint: the round-0 checkpoint
    # written at the start says that round 1 did not finish, so resume redoes it (the only
    # record it drops is one its checkpoint does not cover).
    import acpsl.engine.loop as loop

    config = tiny(shared_data)
    straight = train(config, out_dir=tmp_path / "straight", log=None)
    out = tmp_path / "run"
    real_save = loop.save_checkpoint

    class Killed(Exception):
        pass

    def save_then_die(path: Path, state: Any) -> int:
        if state["round"] == 1:
            raise Killed
        return real_save(path, state)

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        train(config, out_dir=out, log=None)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    assert load_checkpoint(out / CHECKPOINT)["round"] == 0
    assert [r["round"] for r in read_records(out / RECORDS)] == [1]
    resumed = train(config, out_dir=out, resume=True, log=None)
    drop = ("wall_s", "round_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed.records] == [
        {k: v for k, v in r.items() if k not in drop} for r in straight.records
    ]


# ------------------------------------------------------------- defect 3: serve --resume
class _Stop(Exception):
    """Raised by the fake backend: the test only looks at the configuration."""


def _capture_serve_config(
    monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> tuple[int, dict[str, Any]]:
    import acpsl.transport.backend as backend_module

    seen: dict[str, Any] = {}

    class FakeBackend:
        def __init__(self, *, config: TrainConfig, out_dir: str, resume: bool, **_: Any) -> None:
            seen.update(config=config, out_dir=out_dir, resume=resume)
            raise _Stop

    monkeypatch.setattr(backend_module, "EngineServerBackend", FakeBackend)
    try:
        code = cli_main(argv)
    except _Stop:
        code = -1
    return code, seen


def test_serve_resume_reads_the_runs_config_toml(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytest.importorskip("grpc")
    out = tmp_path / "net"
    out.mkdir()
    saved = TrainConfig(
        scheme="acp",
        dataset="mnist",
        data_dir="/somewhere/data",
        model="smallcnn",
        cut=1,
        clients=3,
        rounds=2,
        batch_size=16,
        lr=0.01,
        scheme_params={"p_base": 0.75},
    )
    (out / CONFIG).write_text(saved.to_toml())
    argv = ["serve", "--out", str(out), "--resume", "--port", "0", "--rounds", "4"]
    code, seen = _capture_serve_config(monkeypatch, argv)
    assert code == -1 and seen["resume"] is True
    config = seen["config"]
    assert config == saved.replace(rounds=4)  # the run's settings, the flag given on top


def test_serve_resume_without_config_toml_refuses(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    pytest.importorskip("grpc")
    out = tmp_path / "empty"
    code, seen = _capture_serve_config(monkeypatch, ["serve", "--out", str(out), "--resume"])
    assert code == 1 and seen == {}
    assert CONFIG in one_line(capsys.readouterr().err)


# ----------------------------------------------------------- defect 5: checksum, leftovers
def test_a_flipped_byte_in_the_checkpoint_is_refused_naming_the_file(
    capsys: pytest.CaptureFixture[str], shared_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    assert run_cli(capsys, "train", *cli_args(shared_data, out), "--rounds", "1")[0] == 0
    path = out / CHECKPOINT
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x10  # a bit of the last tensor's data (a server optimizer moment)
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)
    before = snapshot(out)
    code, _, text = run_cli(capsys, "train", "--out", str(out), "--rounds", "2", "--resume")
    assert code == 1
    line = one_line(text)
    assert str(path) in line and "checksum" in line
    assert snapshot(out) == before


def test_a_checkpoint_without_checksum_from_an_older_acpsl_loads_with_a_warning(
    caplog: pytest.LogCaptureFixture, shared_data: Path, tmp_path: Path
) -> None:
    config = tiny(shared_data)
    train(config, out_dir=tmp_path, log=None)
    state = load_checkpoint(tmp_path / CHECKPOINT)
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(encode_state_dict(state))  # the format before checksums
    with caplog.at_level(logging.WARNING, logger="acpsl"):
        again = load_checkpoint(legacy)
    assert again["round"] == state["round"] == 1
    assert any("no checksum" in r.getMessage() for r in caplog.records)


def test_a_checkpoint_missing_its_keys_is_a_one_line_checkpoint_error(tmp_path: Path) -> None:
    from acpsl.engine.checkpoint import save_checkpoint

    path = tmp_path / CHECKPOINT
    save_checkpoint(path, {"round": 1})
    with pytest.raises(CheckpointError, match="lacks"):
        load_checkpoint(path)


def test_leftover_temporaries_of_a_killed_write_are_removed_on_the_next_start(
    shared_data: Path, tmp_path: Path
) -> None:
    config = tiny(shared_data)
    train(config, out_dir=tmp_path, log=None)
    leftovers = [tmp_path / ".checkpoint.pt.k2j4_x9a.tmp", tmp_path / ".config.toml.abcd1234.tmp"]
    for path in leftovers:
        path.write_bytes(b"half a file")
    keep = tmp_path / "notes.tmp"  # not a leftover of acpsl's atomic writes
    keep.write_text("mine")
    train(config.replace(rounds=2), out_dir=tmp_path, resume=True, log=None)
    assert not any(p.exists() for p in leftovers)
    assert keep.read_text() == "mine"


def test_serve_removes_leftover_temporaries_on_start(shared_data: Path, tmp_path: Path) -> None:
    pytest.importorskip("grpc")
    from acpsl.transport.backend import EngineServerBackend

    leftover = tmp_path / ".checkpoint.pt.zz99yy88.tmp"
    leftover.write_bytes(b"x")
    backend = EngineServerBackend(config=tiny(shared_data), out_dir=tmp_path, log=None)
    backend.close()
    assert not leftover.exists()
    assert load_checkpoint(tmp_path / CHECKPOINT)["round"] == 0  # the round-0 checkpoint


@pytest.mark.parametrize("checksummed", [False, True])
def test_a_hostile_checkpoint_is_one_line_not_a_traceback(
    capsys: pytest.CaptureFixture[str], shared_data: Path, tmp_path: Path, checksummed: bool
) -> None:
    # Issue 10, defect 4: a skeleton nested 100,000 deep made `train --resume` print a
    # RecursionError traceback. A valid checksum does not make a hostile state acceptable.
    import hashlib
    import struct

    from acpsl.cut.state import MAGIC

    out = tmp_path / "run"
    assert run_cli(capsys, "train", *cli_args(shared_data, out), "--rounds", "1")[0] == 0
    text = b"[" * 100_000 + b"]" * 100_000
    state = MAGIC + struct.pack("<BI", 1, len(text)) + text
    if checksummed:
        state = b"SC\x01" + hashlib.blake2b(state, digest_size=32).digest() + state
    (out / CHECKPOINT).write_bytes(state)
    code, _, err = run_cli(capsys, "train", "--out", str(out), "--rounds", "2", "--resume")
    assert code == 1
    line = one_line(err)
    assert str(out / CHECKPOINT) in line and "nested deeper" in line
