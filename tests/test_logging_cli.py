"""Logging like the ecosystem (issue 12, item 3): the library logs and never prints, the CLI
configures one handler (-v/-q/--log-level on every command), no line twice, progress bars
only on a terminal, per-step metrics to CSV / TensorBoard, and a start-up without PyTorch."""

from __future__ import annotations

import ast
import csv
import io
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from acpsl import cli, logs
from acpsl.config import TrainConfig
from acpsl.engine import train
from acpsl.engine.metrics import METRICS_CSV, STEP_FIELDS, TENSORBOARD_DIR

SRC = Path(__file__).resolve().parents[1] / "src"
#: The modules that are command lines (they may print their results).
CLI_MODULES = {
    "acpsl/cli.py",
    "acpsl/__main__.py",
    "acpsl/engine/commands.py",
    "acpsl/experiments/cli.py",
    "acpsl/experiments/__main__.py",
    "acpsl/experiments/worker.py",
    "acpsl/transport/cli.py",
}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def tiny(shared_data: Path, **changes: object) -> TrainConfig:
    base: dict[str, object] = dict(
        dataset="mnist",
        data_dir=str(shared_data),
        subset=96,
        test_subset=32,
        model="smallcnn",
        clients=2,
        rounds=2,
        batch_size=24,
        optimizer="adam",
        lr=1e-3,
        progress=False,
        device="cpu",
    )
    base.update(changes)
    return TrainConfig(**base)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ start-up
_STARTUP = """
import contextlib, io, json, sys, time
start = time.perf_counter()
from acpsl.cli import main
for argv in (["--help"], ["presets"], ["presets", "acp-mnist"], ["compare", "--help"]):
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit:
            pass
heavy = ("torch", "numpy", "numba", "grpc", "matplotlib", "tqdm", "acpsl.models", "acpsl.data",
         "acpsl.schemes", "acpsl.engine.loop")
print(json.dumps({"loaded": [m for m in heavy if m in sys.modules],
                  "seconds": time.perf_counter() - start}))
"""


def test_help_and_presets_import_no_torch_and_no_plugins():
    """``acpsl --help``, ``acpsl presets [NAME]`` and a subcommand's --help import neither
    PyTorch, NumPy, gRPC nor the model/dataset/scheme registries (where plug-ins load)."""
    proc = subprocess.run(
        [sys.executable, "-c", _STARTUP],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["loaded"] == [], result
    print(f"help + presets + compare --help: {result['seconds']:.3f} s")


def test_transport_cli_copies_of_the_security_values_are_equal():
    pytest.importorskip("grpc")
    from acpsl.transport import cli as transport_cli
    from acpsl.transport import security

    assert transport_cli.TOKEN_ENV == security.TOKEN_ENV
    assert transport_cli.DEFAULT_MAX_MESSAGE_BYTES == security.DEFAULT_MAX_MESSAGE_BYTES


# ------------------------------------------------------------------------------- logging
def test_library_code_never_prints():
    offenders = []
    for path in sorted((SRC / "acpsl").rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel in CLI_MODULES or "_pb2" in rel:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Name) and node.id == "print":
                offenders.append(f"{rel}:{node.lineno}")
    assert offenders == []


def _subparsers():
    parser = cli.build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return action.choices


def test_every_command_takes_verbose_quiet_and_log_level():
    commands = _subparsers()
    assert {"train", "demo", "presets", "compare", "report"} <= set(commands)
    for name, sub in commands.items():
        flags = {s for a in sub._actions for s in a.option_strings}
        assert {"-v", "--verbose", "-q", "--quiet", "--log-level"} <= flags, name


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        ([], logging.INFO),
        (["-v"], logging.DEBUG),
        (["-q"], logging.WARNING),
        (["-qq"], logging.ERROR),
        (["-q", "--log-level", "debug"], logging.DEBUG),
        (["--log-level", "error"], logging.ERROR),
    ],
)
def test_log_level_from_flags(argv, level):
    args = cli.build_parser().parse_args(["presets", *argv])
    assert logs.level_from_args(args) == level


def test_configure_twice_writes_each_line_once():
    root_stream = io.StringIO()
    root = logging.StreamHandler(root_stream)
    logging.getLogger().addHandler(root)  # a handler a user (or basicConfig) installed
    try:
        stream = io.StringIO()
        logs.configure(logging.INFO, stream=stream)
        logs.configure(logging.INFO, stream=stream)
        logging.getLogger("acpsl.engine").info("round 1/1: hello")
        logging.getLogger("acpsl.engine").debug("hidden")
        logging.getLogger("acpsl.transport").warning("careful")
        assert stream.getvalue().splitlines() == ["round 1/1: hello", "acpsl: warning: careful"]
        assert root_stream.getvalue() == ""  # the acpsl logger does not propagate
    finally:
        logging.getLogger().removeHandler(root)
        logs.configure(logging.INFO)


def test_progress_bars_only_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    logs.configure(logging.INFO)
    assert logs.show_progress(True, stream=Tty())
    assert not logs.show_progress(True, stream=io.StringIO())  # redirected to a file
    assert not logs.show_progress(False, stream=Tty())
    logs.configure(logging.WARNING)  # -q
    try:
        assert not logs.show_progress(True, stream=Tty())
    finally:
        logs.configure(logging.INFO)


def test_redirected_train_log_has_one_line_per_round_and_no_carriage_return(shared_data, tmp_path):
    log = tmp_path / "log.txt"
    argv = [
        sys.executable, "-m", "acpsl", "train", "--data-dir", str(shared_data),
        "--subset", "96", "--test-subset", "32", "--model", "smallcnn", "--clients", "2",
        "--batch-size", "24", "--optimizer", "adam", "--lr", "1e-3", "--rounds", "2",
        "--device", "cpu", "--out", str(tmp_path / "run"),
    ]  # fmt: skip
    with log.open("w") as fh:  # progress stays on (its default): stderr is not a terminal
        proc = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, env=_env(), timeout=300)
    text = log.read_text()
    assert proc.returncode == 0, text
    assert "\r" not in text
    lines = [line for line in text.splitlines() if line.strip()]
    assert sum(line.startswith("round 1/2:") for line in lines) == 1
    assert sum(line.startswith("round 2/2:") for line in lines) == 1
    assert lines[-1] == f"records: {tmp_path / 'run'}/records.jsonl"
    assert "cut 1 (client: block1)" in text
    # -q: warnings only, so just the result
    quiet = subprocess.run(
        [*argv[:-1], str(tmp_path / "quiet"), "-q"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert quiet.stdout.strip() == f"records: {tmp_path / 'quiet'}/records.jsonl"


def test_train_logs_through_logging(shared_data, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="acpsl"):
        train(tiny(shared_data, rounds=1), out_dir=tmp_path / "run")
    engine = [r for r in caplog.records if r.name == "acpsl.engine"]
    assert any(r.getMessage().startswith("round 1/1:") for r in engine)
    assert any(r.getMessage().startswith("summary:") for r in engine)


# --------------------------------------------------------------------------- serve
def _free_port_taken() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, sock.getsockname()[1]


@pytest.mark.net
def test_serve_says_listening_once_and_its_error_once(shared_data, tmp_path):
    pytest.importorskip("grpc")
    argv = [
        sys.executable, "-m", "acpsl", "serve", "--out", str(tmp_path / "run"),
        "--port", "0", "--data-dir", str(shared_data), "--subset", "16",
        "--test-subset", "16", "--clients", "1", "--rounds", "1", "--model", "smallcnn",
        "--join-timeout", "1",
    ]  # fmt: skip
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text
    assert text.count("listening on 127.0.0.1:") == 1, text
    assert text.count("acpsl: error:") == 1, text
    assert "clients joined" in text


@pytest.mark.net
def test_serve_on_a_taken_port_is_one_line_and_exit_2(shared_data, tmp_path):
    pytest.importorskip("grpc")
    sock, port = _free_port_taken()
    argv = [
        sys.executable, "-m", "acpsl", "serve", "--out", str(tmp_path / "run"),
        "--port", str(port), "--data-dir", str(shared_data), "--subset", "16",
        "--clients", "1", "--rounds", "1", "--model", "smallcnn",
    ]  # fmt: skip
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env=_env(),
            timeout=120,
        )
    finally:
        sock.close()
    assert proc.returncode == 2
    assert proc.stdout == ""
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"acpsl: error: cannot listen on 127.0.0.1:{port}: the port is in use")
    assert not (tmp_path / "run").exists()  # refused before the run was built


# ------------------------------------------------------------------------ metrics loggers
def test_csv_logger_one_row_per_iteration_and_resume_keeps_no_duplicate(shared_data, tmp_path):
    out = tmp_path / "run"
    config = tiny(shared_data, scheme="acp", loggers=("csv",), rounds=1)
    first = train(config, out_dir=out, log=None)
    train(config.replace(rounds=2), out_dir=out, resume=True, log=None)
    with (out / METRICS_CSV).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == STEP_FIELDS
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [int(r["iteration"]) for r in rows] == list(range(1, records[-1]["iteration"] + 1))
    for rec in records:
        mine = [r for r in rows if int(r["round"]) == rec["round"]]
        assert sum(int(r["bytes_up"]) for r in mine) == rec["bytes_up"]
        assert sum(int(r["bytes_down"]) for r in mine) == rec["bytes_down"]
        assert [float(r["p_t"]) for r in mine] == pytest.approx(rec["ratios"])
        kept = [float(r["kept_frac"]) for r in mine]
        assert sum(kept) / len(kept) == pytest.approx(rec["kept_frac_mean"])
    assert first.records[0]["iteration"] == records[0]["iteration"]
    assert "loggers" not in TrainConfig().to_dict() or TrainConfig().loggers == ()


def test_tensorboard_logger_writes_event_files(shared_data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    summary = train(tiny(shared_data, loggers=("tensorboard",), rounds=1), out_dir=out, log=None)
    events = EventAccumulator(str(out / TENSORBOARD_DIR))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "cut/bytes_up", "eval/test_acc"} <= tags
    steps = [e.step for e in events.Scalars("train/loss")]
    assert steps == list(range(1, summary.records[-1]["iteration"] + 1))
    (acc,) = events.Scalars("eval/test_acc")
    assert acc.value == pytest.approx(summary.records[-1]["test_acc"])


def test_logger_option_parsing_and_unknown_logger():
    from acpsl.errors import ConfigError

    args = cli.build_parser().parse_args(["train", "--logger", "csv,tensorboard"])
    from acpsl.engine.cli_args import config_from_args

    assert config_from_args(args).loggers == ("csv", "tensorboard")
    assert TrainConfig.from_dict({"loggers": ["csv"]}).loggers == ("csv",)
    with pytest.raises(ConfigError, match="loggers"):
        TrainConfig(loggers=("wandb",))
