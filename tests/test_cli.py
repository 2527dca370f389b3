"""The ``acpsl`` command line: options, config files, help, errors and exit codes."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from acpsl import cli
from acpsl.engine import commands
from acpsl.engine.cli_args import config_from_args, parse_param, parse_target


def train_parser() -> argparse.ArgumentParser:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def parse(*argv: str):
    return cli.build_parser().parse_args(["train", *argv])


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("acpsl: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_every_train_option_documents_its_default():
    parser = train_parser()
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    required = {
        "--scheme", "--dataset", "--data-dir", "--clients", "--rounds", "--partition", "--beta",
        "--batch-size", "--lr", "--seed", "--subset", "--out", "--mode", "--model", "--cut",
        "--stem", "--optimizer", "--momentum", "--weight-decay", "--device", "--test-subset",
        "--target-acc", "--eval-uncompressed", "--download", "--resume", "--progress",
        "--config", "--param", "--p-min", "--p-base", "--p-max", "--scorer", "--score-mode",
        "--ratio", "--group-score", "--k", "--keep-ratio", "--alpha", "--bits", "--l1-lambda",
    }  # fmt: skip
    given = {s for a in options for s in a.option_strings}
    assert required <= given, required - given
    formatter = parser._get_formatter()  # scheme flags get their defaults when formatted
    for action in options:
        text = formatter._get_help_string(action)
        assert text and "default" in text, action.option_strings
    text = parser.format_help()
    assert "--no-progress" in text and "(default: 128)" in text and "(default: 0.01)" in text


def test_flags_override_the_config_file_and_only_given_flags(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        'scheme = "acp"\nrounds = 7\nlr = 0.5\nclients = 4\ntarget_acc = [0.9]\n'
        "[scheme_params]\np_base = 0.65\np_min = 0.5\n"
    )
    config = config_from_args(parse("--config", str(path), "--rounds", "2", "--p-min", "0.55"))
    assert (config.scheme, config.rounds, config.lr, config.clients) == ("acp", 2, 0.5, 4)
    assert config.batch_size == 128  # neither file nor flag: the default
    assert config.target_acc == (0.9,)
    assert dict(config.scheme_params) == {"p_base": 0.65, "p_min": 0.55}
    plain = config_from_args(parse())
    assert plain.rounds == 10 and plain.scheme == "standard" and plain.scheme_params == {}


def test_scheme_flags_params_and_targets():
    config = config_from_args(
        parse(
            "--scheme", "randtopk", "--k", "40", "--alpha", "0.2",
            "--param", "extra=true", "--param", "name=l0", "--param", "x = 1e-3",
            "--target-acc", "90,0.95", "--target-acc", "97.5%",
            "--no-progress", "--eval-uncompressed", "--mode", "splitfed",
        )
    )  # fmt: skip
    assert dict(config.scheme_params) == {
        "k": 40,
        "alpha": 0.2,
        "extra": True,
        "name": "l0",
        "x": 0.001,
    }
    assert config.target_acc == (0.9, 0.95, 0.975)
    assert config.progress is False and config.eval_uncompressed is True
    assert config.mode == "splitfed"
    assert parse_target("1") == (1.0,) and parse_target("50") == (0.5,)
    assert parse_param("p_base=0.75") == ("p_base", 0.75)
    assert parse_param('s="a b"') == ("s", "a b")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--lr", "-1"], "lr"),
        (["--clients", "0"], "clients"),
        (["--scheme", "nope"], "unknown scheme 'nope'"),
        (["--dataset", "nope"], "unknown dataset 'nope'"),
        (["--target-acc", "150"], "target-acc"),
        (["--param", "novalue"], "KEY=VALUE"),
        (["--scheme", "acp", "--k", "3"], "bad parameters"),
    ],
)
def test_usage_errors_exit_2_with_one_line(capsys, tmp_path, argv, needle):
    code, _, err = run_main(capsys, "train", "--out", str(tmp_path / "o"), *argv)
    assert code == 2
    assert needle in one_line_error(err)


def test_malformed_and_missing_config_files_exit_2(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = = 3\n")
    code, _, err = run_main(capsys, "train", "--config", str(bad))
    assert code == 2 and "not valid TOML" in one_line_error(err)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("roundz = 3\n")
    code, _, err = run_main(capsys, "train", "--config", str(unknown))
    assert code == 2 and "roundz" in one_line_error(err)
    code, _, err = run_main(capsys, "train", "--config", str(tmp_path / "absent.toml"))
    assert code == 2 and "does not exist" in one_line_error(err)


def test_missing_data_dir_exits_1(capsys, tmp_path):
    code, _, err = run_main(
        capsys, "train", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")
    )
    assert code == 1
    assert "nowhere" in one_line_error(err)


def test_more_clients_than_samples_exits_2(capsys, shared_data, tmp_path):
    code, _, err = run_main(
        capsys, "train", "--data-dir", str(shared_data), "--subset", "3", "--clients", "5",
        "--model", "smallcnn", "--cut", "1", "--out", str(tmp_path / "o"),
    )  # fmt: skip
    assert code == 2 and "5 clients" in one_line_error(err)


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--clients", "many"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--partition", "sorted"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        cli.main([])
    assert exc.value.code == 2


def test_keyboard_interrupt_exits_130_and_says_how_to_resume(capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "run_train", interrupted)
    code, _, err = run_main(capsys, "train")
    assert code == 130 and "--resume" in err and "Traceback" not in err


def test_train_then_resume_end_to_end(capsys, shared_data, tmp_path):
    out = tmp_path / "run"
    common = [
        "--data-dir", str(shared_data), "--subset", "96", "--test-subset", "32",
        "--model", "smallcnn", "--cut", "1", "--clients", "2", "--batch-size", "32",
        "--optimizer", "adam", "--lr", "1e-3", "--no-progress", "--out", str(out),
        "--target-acc", "5",
    ]  # fmt: skip
    code, text, log = run_main(capsys, "train", *common, "--rounds", "1")
    # the log (stderr) has the progress and the summary; stdout says where the records are
    assert code == 0 and "summary:" in log and "to reach 5%" in log
    assert text.strip() == f"records: {out}/records.jsonl"
    code, _, err = run_main(capsys, "train", *common, "--rounds", "2")
    assert code == 1 and "--resume" in one_line_error(err)
    code, _, log = run_main(capsys, "train", *common, "--rounds", "2", "--resume")
    assert code == 0 and "resuming" in log
    lines = (out / "records.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [1, 2]
    assert "rounds = 2" in (out / "config.toml").read_text()
    code, _, err = run_main(capsys, "train", *common, "--rounds", "2", "--resume", "--lr", "0.1")
    assert code == 1 and "lr" in one_line_error(err)


def test_resume_with_only_out_and_rounds_reads_the_runs_config(capsys, shared_data, tmp_path):
    # The README's `acpsl train --out runs/acp-mnist --rounds 5 --resume`: every other
    # setting comes from OUT/config.toml.
    out = tmp_path / "run"
    code, _, _ = run_main(
        capsys, "train", "--scheme", "acp", "--data-dir", str(shared_data), "--subset", "96",
        "--test-subset", "32", "--model", "smallcnn", "--cut", "1", "--clients", "2",
        "--batch-size", "32", "--optimizer", "adam", "--lr", "1e-3", "--p-base", "0.75",
        "--no-progress", "--rounds", "1", "--out", str(out),
    )  # fmt: skip
    assert code == 0
    code, _, err = run_main(capsys, "train", "--out", str(out), "--rounds", "2", "--resume")
    assert code == 0, err
    assert "resuming" in err and "rounds changed from 1 to 2" in err
    lines = (out / "records.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [1, 2]
    saved = (out / "config.toml").read_text()
    assert 'scheme = "acp"' in saved and "rounds = 2" in saved and "p_base = 0.75" in saved
    # a flag given on resume still overrides the run's file (and is refused when it matters)
    code, _, err = run_main(
        capsys, "train", "--out", str(out), "--rounds", "3", "--resume", "--batch-size", "16"
    )
    assert code == 1 and "batch_size" in one_line_error(err)


def test_out_that_is_a_file_exits_1_with_one_line(capsys, tmp_path):
    path = tmp_path / "taken"
    path.write_text("not a run")
    code, _, err = run_main(capsys, "train", "--out", str(path))
    assert code == 1 and "not a directory" in one_line_error(err)
    code, _, err = run_main(capsys, "train", "--out", str(path / "below"))
    assert code == 1 and str(path) in one_line_error(err)


def test_a_failing_write_to_the_run_directory_exits_1(capsys, monkeypatch, shared_data, tmp_path):
    from acpsl.engine import loop

    def full_disk(path, data):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(loop, "write_atomic", full_disk)
    code, _, err = run_main(
        capsys, "train", "--data-dir", str(shared_data), "--subset", "64", "--test-subset",
        "32", "--model", "smallcnn", "--cut", "1", "--clients", "2", "--no-progress",
        "--out", str(tmp_path / "o"),
    )  # fmt: skip
    assert code == 1 and "No space left on device" in one_line_error(err)


def test_toml_values_of_the_wrong_type_exit_2(capsys, tmp_path):
    for line, name in (("device = 0", "device"), ("data_dir = 5", "data_dir"), ("lr = true", "lr")):
        path = tmp_path / f"{name}.toml"
        path.write_text(line + "\n")
        code, _, err = run_main(capsys, "train", "--config", str(path), "--out", str(tmp_path))
        assert code == 2 and f"invalid {name}=" in one_line_error(err)


def test_a_stray_os_error_is_one_line_exit_1(capsys, monkeypatch):
    def denied(args):
        raise PermissionError(13, "Permission denied", "/somewhere/file")

    monkeypatch.setattr(commands, "run_train", denied)
    code, _, err = run_main(capsys, "train")
    assert code == 1
    line = one_line_error(err)
    assert "Permission denied" in line and "/somewhere/file" in line


def test_python_dash_m_acpsl_help():
    proc = subprocess.run(
        [sys.executable, "-m", "acpsl", "train", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0
    assert "--scheme" in proc.stdout and "default" in proc.stdout
