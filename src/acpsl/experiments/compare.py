"""``acpsl compare``: a grid of runs (schemes x panels x seeds), resumable, on local worker
processes or on a Ray cluster.

Every run of the grid sees the same partition and initial weights for a given seed (they
come from the seed alone), so the runs differ only in their scheme. Running the same
command again skips the finished runs and resumes the interrupted ones from their last
checkpoint (through :func:`acpsl.engine.train`'s ``resume``), so the records of every run
have no gap and no duplicate however often the grid was stopped.

Where the runs execute:

* ``workers=1``: one after the other, in this process;
* ``workers=N``: at most N at a time, each in its own Python process
  (``python -m acpsl.experiments.worker``, log in the run's ``log.txt``); the workers die
  with this process, even on SIGKILL (Linux), so a stopped grid leaves no orphan training;
* ``ray_address``: each run is a task of an existing Ray cluster (``ray start --head`` on
  one machine, ``ray start --address`` on the others); the grid directory must be on a file
  system every node sees. The records are the same in all three cases.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from tqdm import tqdm

from acpsl.engine.records import write_atomic
from acpsl.errors import AcpslError, ConfigError, TrainingError
from acpsl.experiments.presets import RunPlan
from acpsl.experiments.runner import is_finished, run_dir, run_plan
from acpsl.experiments.runs import GRID_FILE
from acpsl.locks import PidLock
from acpsl.logs import show_progress

logger = logging.getLogger("acpsl.experiments")

#: The plan a worker process reads, written into its run directory.
PLAN_FILE = ".plan.json"
LOG_FILE = "log.txt"
#: What a worker writes when its run is done.
RESULT_FILE = ".result.json"
#: The file ``compare`` locks (``flock``) in the grid's directory while it runs.
LOCK_FILE = ".compare.lock"


class GridBusyError(AcpslError, RuntimeError):
    """Another ``compare`` is running on the same grid directory."""


@contextlib.contextmanager
def grid_lock(root: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``root/.compare.lock`` (created if needed) while the
    block runs, so that two ``compare`` on the same directory never train the same run twice.

    The kernel drops the lock when the holder dies, even on SIGKILL, so a stale lock file is
    harmless. (Without :mod:`fcntl`, e.g. on Windows, nothing is locked.) With Ray, the lock
    guards against drivers on machines that share the lock's file system (``flock`` on NFS
    depends on the server).

    Raises:
        GridBusyError: another process holds the lock.
    """
    root.mkdir(parents=True, exist_ok=True)

    def busy(holder: str) -> GridBusyError:
        who = f" (pid {holder})" if holder else ""
        return GridBusyError(
            f"another acpsl compare{who} is running on {root}; wait for it to finish or "
            "stop it, or pass a different --out"
        )

    with PidLock(root / LOCK_FILE, busy=busy):
        yield


@dataclass
class CompareResult:
    """Outcome of :func:`compare`: per run key, its status and final accuracy or error."""

    root: Path
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def failed(self) -> dict[str, str]:
        """Keys of the runs that failed, with their error message."""
        return {k: str(v.get("error")) for k, v in self.results.items() if v["status"] == "failed"}


def write_grid(root: Path, plans: Sequence[RunPlan], meta: Mapping[str, Any]) -> None:
    """Write ``compare.json``: the grid's description and every run's plan.

    Runs listed by an earlier ``compare`` into the same directory and absent from ``plans``
    are kept (after the new ones), so the report still finds and orders them.
    """
    root.mkdir(parents=True, exist_ok=True)
    new = [{"key": p.key, **p.to_dict()} for p in plans]
    keys = {p["key"] for p in new}
    old: list[dict[str, Any]] = []
    path = root / GRID_FILE
    if path.exists():
        try:
            old = [
                r
                for r in json.loads(path.read_text("utf-8")).get("runs", [])
                if r.get("key") not in keys
            ]
        except (json.JSONDecodeError, AttributeError):
            old = []
    data = {**meta, "runs": new + old}
    write_atomic(path, json.dumps(data, indent=1).encode("utf-8"))


def compare(
    plans: Sequence[RunPlan],
    *,
    out_dir: str | Path,
    workers: int = 1,
    ray_address: str | None = None,
    meta: Mapping[str, Any] | None = None,
    progress: bool = True,
    threads: int | None = None,
    ray_gpus: float = 0.0,
) -> CompareResult:
    """Run (or resume, or skip) every run of a grid.

    Args:
        plans: the runs (:meth:`acpsl.experiments.presets.Preset.plan`, or
            :func:`plans_for_schemes`); their keys must be unique.
        out_dir: the grid's directory.
        workers: local processes running at once (1: in this process).
        ray_address: address of a running Ray cluster (``"auto"``, ``"HOST:6379"``); each
            run becomes a Ray task and ``workers`` is ignored.
        meta: what ``compare.json`` records beside the runs (preset summary, scale, targets).
        progress: show a progress bar over the runs (and, with ``workers=1``, the engine's).
        threads: PyTorch threads per worker process (default: CPU cores / workers).
        ray_gpus: GPUs each Ray task reserves (e.g. 1, or 0.25 to share a GPU among four
            runs). Ray hides the GPUs from tasks that reserve none, so on a GPU cluster set it.

    Returns:
        A :class:`CompareResult`. Runs that fail do not stop the others; the caller decides
        what a failure means (the CLI exits 1 and lists them).

    Raises:
        GridBusyError: another ``compare`` holds ``out_dir``'s lock (:func:`grid_lock`).
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers={workers!r} must be a positive integer")
    keys = [p.key for p in plans]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise ConfigError(
            f"the grid has duplicate runs: {', '.join(dupes)}; give them distinct labels"
        )
    if ray_address is None:
        preflight(plans)
    root = Path(out_dir)
    with grid_lock(root):
        return _compare_locked(
            plans,
            root=root,
            workers=workers,
            ray_address=ray_address,
            meta=meta,
            progress=progress,
            threads=threads,
            ray_gpus=ray_gpus,
        )


def _compare_locked(
    plans: Sequence[RunPlan],
    *,
    root: Path,
    workers: int,
    ray_address: str | None,
    meta: Mapping[str, Any] | None,
    progress: bool,
    threads: int | None,
    ray_gpus: float,
) -> CompareResult:
    write_grid(root, plans, dict(meta or {}))
    result = CompareResult(root=root)
    if not plans:
        return result
    if ray_address is not None:
        _run_ray(
            plans,
            root=root,
            address=ray_address,
            result=result,
            progress=progress,
            threads=threads,
            gpus=ray_gpus,
        )
    elif workers == 1:
        _run_inline(plans, root=root, result=result, progress=progress)
    else:
        per = threads or max(1, (os.cpu_count() or 1) // workers)
        _run_processes(
            plans, root=root, workers=workers, threads=per, result=result, progress=progress
        )
    return result


def preflight(plans: Sequence[RunPlan]) -> None:
    """Fail before any training when a run could not start: an unknown name, scheme
    parameters the scheme rejects, or a dataset whose files are missing.

    (With Ray the data may live only on the workers, so :func:`compare` skips this there.)

    Raises:
        ConfigError, DataError: naming the run and what to change.
    """
    from acpsl import data
    from acpsl.engine.setup import check_config
    from acpsl.errors import AcpslError, DataError

    seen: set[tuple[str, str, bool]] = set()
    for plan in plans:
        cfg = plan.config
        if plan.match_fraction is None and plan.match_acp is None:
            try:
                check_config(cfg)
            except AcpslError as exc:
                raise type(exc)(f"run {plan.key}: {exc}") from None
        key = (cfg.dataset, cfg.data_dir, cfg.download)
        if key in seen:
            continue
        seen.add(key)
        try:
            data.load_dataset(cfg.dataset, root=cfg.data_dir, train=False, download=cfg.download)
        except DataError as exc:
            raise DataError(
                f"run {plan.key} needs dataset {cfg.dataset!r}: {exc} (to check a preset "
                "without it, use --scale tiny or --dataset mnist)"
            ) from None


# ------------------------------------------------------------------------- in process
def _run_inline(
    plans: Sequence[RunPlan], *, root: Path, result: CompareResult, progress: bool
) -> None:
    bar = tqdm(
        plans, desc="runs", unit="run", disable=not show_progress(progress), dynamic_ncols=True
    )
    for plan in bar:
        bar.set_postfix_str(plan.key, refresh=True)
        data = plan.to_dict()
        data["config"]["progress"] = bool(progress and data["config"].get("progress", True))
        try:
            result.results[plan.key] = run_plan(data, root=root, log=logger.info)
        except Exception as exc:  # one failing run must not stop the grid
            result.results[plan.key] = {
                "key": plan.key,
                "status": "failed",
                "error": _one_line(exc),
            }


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


# ----------------------------------------------------------------------- local workers
class _Stop(Exception):
    """Raised in the parent on SIGTERM, so that the worker processes are stopped too."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(f"signal {signum}")


def _run_processes(
    plans: Sequence[RunPlan],
    *,
    root: Path,
    workers: int,
    threads: int,
    result: CompareResult,
    progress: bool,
) -> None:
    pending = list(plans)
    running: dict[str, tuple[subprocess.Popen[bytes], Any, RunPlan]] = {}
    bar = tqdm(
        total=len(plans),
        desc="runs",
        unit="run",
        disable=not show_progress(progress),
        dynamic_ncols=True,
    )
    try:
        previous: Any = signal.signal(signal.SIGTERM, _raise_stop)
    except ValueError:  # not the main thread: SIGTERM keeps its handler
        previous = None
    try:
        while pending or running:
            while pending and len(running) < workers:
                plan = pending.pop(0)
                if is_finished(run_dir(root, plan), rounds=plan.config.rounds):
                    result.results[plan.key] = {"key": plan.key, "status": "skipped"}
                    bar.update(1)
                    continue
                running[plan.key] = _start_worker(plan, root=root, threads=threads)
            time.sleep(0.1)
            for key, (proc, log, plan) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                log.close()
                del running[key]
                result.results[key] = _worker_result(plan, root=root, code=code)
                bar.update(1)
                bar.set_postfix_str(key, refresh=True)
    except (KeyboardInterrupt, _Stop):
        _stop_all(running)
        raise KeyboardInterrupt from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        bar.close()


def _start_worker(
    plan: RunPlan, *, root: Path, threads: int
) -> tuple[subprocess.Popen[bytes], Any, RunPlan]:
    path = run_dir(root, plan)
    path.mkdir(parents=True, exist_ok=True)
    data = plan.to_dict()
    data["config"]["progress"] = False
    write_atomic(path / PLAN_FILE, json.dumps(data).encode("utf-8"))
    (path / RESULT_FILE).unlink(missing_ok=True)
    log = (path / LOG_FILE).open("ab")
    cmd = [
        sys.executable,
        "-m",
        "acpsl.experiments.worker",
        str(path / PLAN_FILE),
        "--root",
        str(root),
        "--threads",
        str(threads),
        "--parent",
        str(os.getpid()),
    ]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    return proc, log, plan


def _worker_result(plan: RunPlan, *, root: Path, code: int) -> dict[str, Any]:
    path = run_dir(root, plan)
    result_file = path / RESULT_FILE
    if code == 0 and result_file.exists():
        return dict(json.loads(result_file.read_text("utf-8")))
    tail = ""
    if (path / LOG_FILE).exists():
        lines = (path / LOG_FILE).read_text("utf-8", errors="replace").strip().splitlines()
        tail = lines[-1] if lines else ""
    return {
        "key": plan.key,
        "status": "failed",
        "error": f"worker exited with code {code}: {tail} (log: {path / LOG_FILE})",
    }


def _stop_all(running: Mapping[str, tuple[subprocess.Popen[bytes], Any, RunPlan]]) -> None:
    for proc, _log, _plan in running.values():
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + 10
    for proc, log, _plan in running.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# --------------------------------------------------------------------------------- Ray
def ray_task(plan_data: dict[str, Any], root: str, threads: int | None) -> dict[str, Any]:
    """What one Ray task runs: :func:`run_plan` with its own thread count, errors returned."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    try:
        return run_plan(plan_data, root=root, log=None)
    except Exception as exc:  # reported back to the driver, not raised there
        return {
            "key": f"{plan_data['panel']}/{plan_data['label']}/seed{plan_data['seed']}",
            "status": "failed",
            "error": _one_line(exc),
        }


def _run_ray(
    plans: Sequence[RunPlan],
    *,
    root: Path,
    address: str,
    result: CompareResult,
    progress: bool,
    threads: int | None,
    gpus: float = 0.0,
) -> None:
    if not gpus >= 0:
        raise ConfigError(f"ray_gpus={gpus!r} must be >= 0")
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--ray needs the optional dependency ray: pip install 'acpsl[ray]'"
        ) from None
    try:
        ray.init(address=address, log_to_driver=False, ignore_reinit_error=True)
    except ConnectionError as exc:
        raise ConfigError(f"cannot connect to the Ray cluster at {address!r}: {exc}") from None
    try:
        task = ray.remote(num_cpus=1, num_gpus=gpus)(ray_task)
        refs = {}
        for plan in plans:
            data = plan.to_dict()
            data["config"]["progress"] = False
            refs[task.remote(data, str(root.resolve()), threads or 1)] = plan
        bar = tqdm(
            total=len(plans),
            desc="runs (ray)",
            unit="run",
            disable=not show_progress(progress),
            dynamic_ncols=True,
        )
        try:
            while refs:
                done, _ = ray.wait(list(refs), num_returns=1)
                plan = refs.pop(done[0])
                try:
                    result.results[plan.key] = ray.get(done[0])
                except Exception as exc:  # a lost worker or node
                    result.results[plan.key] = {
                        "key": plan.key,
                        "status": "failed",
                        "error": _one_line(exc),
                    }
                bar.update(1)
        except KeyboardInterrupt:
            for ref in refs:
                ray.cancel(ref, force=True)
            raise
        finally:
            bar.close()
    finally:
        ray.shutdown()


def raise_on_failures(result: CompareResult) -> None:
    """Raise :class:`TrainingError` listing the failed runs, if any."""
    failed = result.failed
    if failed:
        lines = "; ".join(f"{k}: {v}" for k, v in failed.items())
        raise TrainingError(f"{len(failed)} of {len(result.results)} runs failed: {lines}")
