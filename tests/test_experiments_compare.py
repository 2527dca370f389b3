"""``acpsl compare``: grids from scheme lists, real runs, and resuming after real signals."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from processes import session_alive

from acpsl.errors import ConfigError, DataError, TrainingError
from acpsl.experiments.cli import main as cli_main
from acpsl.experiments.cli import parse_scheme_spec, plans_for_schemes
from acpsl.experiments.compare import GridBusyError, compare, raise_on_failures

ROUNDS = 8


def _grid_args(out: Path, data: Path, *, workers: int) -> list[str]:
    return [
        "compare",
        "--schemes",
        "standard",
        "acp",
        "--out",
        str(out),
        "--data-dir",
        str(data),
        "--dataset",
        "mnist",
        "--model",
        "smallcnn",
        "--cut",
        "1",
        "--subset",
        "96",
        "--test-subset",
        "32",
        "--batch-size",
        "16",
        "--clients",
        "2",
        "--rounds",
        str(ROUNDS),
        "--seeds",
        "0",
        "--workers",
        str(workers),
        "--no-progress",
        "--no-report",
    ]


def _rounds(out: Path) -> dict[str, list[int]]:
    """Rounds recorded by each run of the grid (complete lines only)."""
    found = {}
    for path in sorted(out.rglob("records.jsonl")):
        lines = [ln for ln in path.read_text().splitlines(keepends=True) if ln.endswith("\n")]
        found[path.parent.relative_to(out).as_posix()] = [json.loads(ln)["round"] for ln in lines]
    return found


def _half_finished(out: Path) -> bool:
    """Some run has at least 2 complete records but not all ``ROUNDS``: its checkpoint (written
    after each record) is then of a round in 1..ROUNDS-1, whatever instant it is killed at."""
    return any(2 <= len(r) < ROUNDS for r in _rounds(out).values())


def _start_and_freeze(args: list[str], out: Path) -> subprocess.Popen[bytes]:
    """Start ``compare`` in its own session; once a run is half-finished, freeze the whole
    session (SIGSTOP: compare and its workers) so nothing moves before the SIGKILL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "acpsl.experiments", *args],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 150
    while True:
        if _half_finished(out):
            os.killpg(proc.pid, signal.SIGSTOP)
            time.sleep(0.2)  # a signal in flight (a worker mid-fork) settles
            if _half_finished(out):
                return proc
            os.killpg(proc.pid, signal.SIGCONT)  # it moved on between the look and the stop
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            pytest.fail(f"compare ended (code {proc.returncode}) before it could be stopped: {err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("compare made no progress in 150 s")
        time.sleep(0.05)


def _checkpoint_round(run: Path) -> int:
    """The round of a run's checkpoint (0 without one): where a resume continues from."""
    from acpsl.engine.checkpoint import load_checkpoint

    path = run / "checkpoint.pt"
    return int(load_checkpoint(path)["round"]) if path.exists() else 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and PDEATHSIG")
def test_compare_resumes_after_sigkill(tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "grid"
    keys = {"mnist/standard/seed0", "mnist/acp/seed0"}

    # 1. SIGKILL the parent only, half-way: the kernel kills its two workers (PDEATHSIG),
    #    and the runs are left with some rounds recorded.
    proc = _start_and_freeze(_grid_args(out, shared_data, workers=2), out)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGCONT)  # any survivor would now run on, and be seen
    deadline = time.monotonic() + 20
    while session_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert session_alive(proc.pid) == [], "workers survived SIGKILL of compare"
    killed = _rounds(out)
    for key, rounds in killed.items():
        assert rounds == list(range(1, len(rounds) + 1)), (key, rounds)
    # What a resume must keep: every record up to the run's checkpoint, byte for byte
    # (wall_s included, which a restart from scratch would not reproduce).
    kept: dict[str, bytes] = {}
    for key in killed:
        done = _checkpoint_round(out / key)
        lines = (out / key / "records.jsonl").read_bytes().splitlines(keepends=True)
        assert len(lines) >= done, (key, done, len(lines))
        kept[key] = b"".join(lines[:done])
    half = {k: v.count(b"\n") for k, v in kept.items() if 0 < v.count(b"\n") < ROUNDS}
    assert half, f"no run was half-finished at the kill: {killed}"

    # 2. Run again, in this process: every run has rounds 1..ROUNDS exactly once, and the
    #    cumulative byte counters are the running sums of the per-round ones.
    assert cli_main(_grid_args(out, shared_data, workers=1)) == 0
    final = _rounds(out)
    assert final == {k: list(range(1, ROUNDS + 1)) for k in keys}
    for key, prefix in kept.items():
        assert (out / key / "records.jsonl").read_bytes().startswith(prefix), (
            f"{key}: the records up to its checkpoint changed on resume"
        )
    for key in keys:
        records = [json.loads(ln) for ln in (out / key / "records.jsonl").read_text().splitlines()]
        up = 0
        for rec in records:
            up += rec["bytes_up"]
            assert rec["bytes_up_total"] == up
        assert (out / key / "summary.json").exists()

    # 3. Once more: everything is skipped and no record changes.
    before = {k: (out / k / "records.jsonl").read_bytes() for k in keys}
    plans = plans_for_schemes(
        ["standard", "acp"],
        base={
            "dataset": "mnist",
            "data_dir": str(shared_data),
            "model": "smallcnn",
            "cut": 1,
            "subset": 96,
            "test_subset": 32,
            "batch_size": 16,
            "clients": 2,
            "rounds": ROUNDS,
            "progress": False,
        },
        seeds=[0],
    )
    result = compare(plans, out_dir=out, workers=1, progress=False)
    assert {v["status"] for v in result.results.values()} == {"skipped"}
    assert {k: (out / k / "records.jsonl").read_bytes() for k in keys} == before


def test_parse_scheme_spec() -> None:
    assert parse_scheme_spec("standard") == ("standard", "standard", {})
    assert parse_scheme_spec("randtopk:alpha=0.2,k=10") == (
        "randtopk-alpha0.2-k10",
        "randtopk",
        {"alpha": 0.2, "k": 10},
    )
    with pytest.raises(ConfigError):
        parse_scheme_spec(":alpha=1")
    with pytest.raises(ConfigError):
        parse_scheme_spec("randtopk:alpha")


def test_plans_for_schemes_match_baselines_to_acp() -> None:
    plans = plans_for_schemes(
        ["standard", "acp:p_base=0.75", "randtopk", "topk:k=5", "quant"],
        base={"dataset": "mnist", "rounds": 2},
        seeds=[0, 1],
    )
    assert [p.key for p in plans[:2]] == ["mnist/standard/seed0", "mnist/standard/seed1"]
    by_label = {p.label: p for p in plans}
    assert by_label["randtopk"].match_acp == {"p_base": 0.75}
    assert by_label["quant"].match_acp == {"p_base": 0.75}
    assert by_label["topk-k5"].match_acp is None  # its k was given
    assert by_label["standard"].match_acp is None
    assert {p.config.seed for p in plans} == {0, 1}
    none = plans_for_schemes(["acp", "randtopk"], base={}, seeds=[0], match="none")
    assert all(p.match_acp is None for p in none)
    frac = plans_for_schemes(["standard"], base={"dataset": "mnist"}, seeds=[0], fraction=0.01)
    assert frac[0].config.subset == 600


def test_compare_rejects_bad_grids(tmp_path: Path) -> None:
    plans = plans_for_schemes(["standard", "standard"], base={}, seeds=[0])
    with pytest.raises(ConfigError, match="duplicate"):
        compare(plans, out_dir=tmp_path, workers=1, progress=False)
    with pytest.raises(ConfigError, match="workers"):
        compare(plans[:1], out_dir=tmp_path, workers=0, progress=False)
    assert (
        cli_main(["compare", "--schemes", "standard", "--out", str(tmp_path), "--seed", "1"]) == 2
    )
    assert cli_main(["compare", "--schemes", "acp", "--out", str(tmp_path), "--p-base", "0.5"]) == 2


def test_preflight_fails_before_any_run(tmp_path: Path) -> None:
    missing = plans_for_schemes(["standard"], base={"data_dir": str(tmp_path / "none")}, seeds=[0])
    with pytest.raises(DataError, match="--scale tiny or --dataset mnist"):
        compare(missing, out_dir=tmp_path / "grid", workers=1, progress=False)
    assert not (tmp_path / "grid").exists()
    bad = plans_for_schemes(["quant:bits=99"], base={}, seeds=[0])
    with pytest.raises(ConfigError, match="run mnist/quant-bits99/seed0"):
        compare(bad, out_dir=tmp_path / "grid", workers=1, progress=False)


def test_a_failing_run_does_not_stop_the_others(tmp_path: Path, shared_data: Path) -> None:
    base = {
        "dataset": "mnist",
        "data_dir": str(shared_data),
        "model": "smallcnn",
        "subset": 32,
        "test_subset": 16,
        "batch_size": 16,
        "clients": 1,
        "rounds": 1,
        "progress": False,
    }
    good = plans_for_schemes(["standard"], base={**base, "cut": 1}, seeds=[0])
    bad = plans_for_schemes(["quant:bits=4"], base={**base, "cut": 9}, seeds=[0])
    result = compare(good + bad, out_dir=tmp_path, workers=2, progress=False)
    assert result.results["mnist/standard/seed0"]["status"] == "done"
    assert set(result.failed) == {"mnist/quant-bits4/seed0"}
    assert "cut" in result.failed["mnist/quant-bits4/seed0"]
    assert "log.txt" in result.failed["mnist/quant-bits4/seed0"]
    with pytest.raises(TrainingError, match="1 of 2 runs failed"):
        raise_on_failures(result)


def test_a_second_compare_on_the_same_out_fails_fast(
    tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """While one process holds OUT's lock, compare refuses at once and touches nothing."""
    out = tmp_path / "grid"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from pathlib import Path\n"
            "from acpsl.experiments.compare import grid_lock\n"
            "with grid_lock(Path(sys.argv[1])):\n"
            "    print('locked', flush=True)\n"
            "    time.sleep(120)\n",
            str(out),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        base = {"dataset": "mnist", "data_dir": str(shared_data)}
        plans = plans_for_schemes(["standard"], base=base, seeds=[0])
        start = time.monotonic()
        with pytest.raises(GridBusyError, match=f"pid {holder.pid}.*different --out"):
            compare(plans, out_dir=out, workers=1, progress=False)
        assert time.monotonic() - start < 5
        args = ["compare", "--schemes", "standard", "--out", str(out), "--no-progress"]
        args += ["--data-dir", str(shared_data)]
        assert cli_main(args) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("acpsl: error: another acpsl compare") and "\n" not in err
        assert sorted(p.name for p in out.iterdir()) == [".compare.lock"]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    # the lock dies with its holder (even killed): the directory is usable again
    assert compare([], out_dir=out, workers=1, progress=False).results == {}
    assert (out / "compare.json").exists()


def test_inline_compare_runs_with_the_threads_asked_for(
    tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``workers=1`` trains in this process: ``threads`` applies there too, and the
    process's thread count is restored afterwards."""
    import torch

    from acpsl.experiments import compare as compare_mod

    seen: list[int] = []
    real = compare_mod.run_plan

    def spy(*args: Any, **kw: Any) -> Any:
        seen.append(torch.get_num_threads())
        return real(*args, **kw)

    monkeypatch.setattr(compare_mod, "run_plan", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        plans = plans_for_schemes(
            ["standard"],
            base={
                "dataset": "mnist",
                "data_dir": str(shared_data),
                "model": "smallcnn",
                "cut": 1,
                "subset": 16,
                "test_subset": 16,
                "batch_size": 16,
                "clients": 1,
                "rounds": 1,
                "progress": False,
            },
            seeds=[0],
        )
        compare(plans, out_dir=tmp_path, workers=1, threads=1, progress=False)
        assert seen == [1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
