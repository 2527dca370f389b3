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
    reuse: Sequence[str | Path] = (),
) -> CompareResult:
    """Run (or resume, or skip, or reuse) every run of a grid.

    Args:
        plans: the runs (:meth:`acpsl.experiments.presets.Preset.plan`, or
            :func:`plans_for_schemes`); their keys must be unique.
        out_dir: the grid's directory.
        workers: local processes running at once (1: in this process).
        ray_address: address of a running Ray cluster (``"auto"``, ``"HOST:6379"``); each
            run becomes a Ray task and ``workers`` is ignored.
        meta: what ``compare.json`` records beside the runs (preset summary, scale, targets).
        progress: show a progress bar over the runs (and, with ``workers=1``, the engine's).
        threads: PyTorch threads per worker process (default: CPU cores / workers); with
            ``workers=1``, this process's threads while the grid trains (default: as they are).
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
    listed = list(plans)  # compare.json and the report keep the order the user gave
    plans = dependency_order(plans)
    reuse_dirs = [str(Path(p).resolve()) for p in reuse]
    for path in reuse_dirs:
        if not Path(path).is_dir():
            raise ConfigError(f"--reuse {path}: not a directory; pass the --out of a grid")
    if ray_address is None:
        preflight(plans)
    plugin_env = plugin_environment(plans)
    root = Path(out_dir)
    with grid_lock(root):
        return _compare_locked(
            plans,
            listed=listed,
            root=root,
            workers=workers,
            ray_address=ray_address,
            meta=meta,
            progress=progress,
            threads=threads,
            ray_gpus=ray_gpus,
            plugin_env=plugin_env,
            reuse=reuse_dirs,
        )


def plugin_environment(plans: Sequence[RunPlan]) -> dict[str, str]:
    """What workers need to import the grid's plug-ins (:func:`acpsl.plugins.worker_environment`):
    the driver's search path, and the modules outside acpsl that registered the schemes,
    models and datasets the plans name (``MODULE:FUNCTION`` references import themselves).

    Raises:
        ConfigError: one of them is registered in ``__main__`` (workers cannot import it).
    """
    from acpsl import data, models, plugins
    from acpsl.schemes.registry import SCHEMES

    factories = []
    for plan in plans:
        cfg = plan.config
        for registry, name in (
            (SCHEMES, cfg.scheme),
            (models.MODELS, cfg.model),
            (data.DATASETS, cfg.dataset),
        ):
            if not plugins.is_reference(name) and name in registry:
                factories.append(registry.get(name))
    return plugins.worker_environment(plugins.registered_modules(factories))


def _compare_locked(
    plans: Sequence[RunPlan],
    *,
    listed: Sequence[RunPlan] | None = None,
    root: Path,
    workers: int,
    ray_address: str | None,
    meta: Mapping[str, Any] | None,
    progress: bool,
    threads: int | None,
    ray_gpus: float,
    plugin_env: Mapping[str, str],
    reuse: Sequence[str] = (),
) -> CompareResult:
    check_references(plans, root=root)
    write_grid(root, plans if listed is None else listed, dict(meta or {}))
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
            plugin_env=plugin_env,
            reuse=reuse,
        )
    elif workers == 1:
        _run_inline(
            plans, root=root, result=result, progress=progress, reuse=reuse, threads=threads
        )
    else:
        per = threads or max(1, (os.cpu_count() or 1) // workers)
        _run_processes(
            plans,
            root=root,
            workers=workers,
            threads=per,
            result=result,
            progress=progress,
            env={**os.environ, **plugin_env},
            reuse=reuse,
        )
    return result


def dependency_order(plans: Sequence[RunPlan]) -> list[RunPlan]:
    """``plans`` with every run that another one is matched to (``match_run``) first, the
    order otherwise kept, so that ACP-SL's runs start before the baselines waiting on their
    realised bytes.

    Raises:
        ConfigError: a reference run is itself matched to another run (chains are not
            supported: the reference must be an ACP-SL run).
    """
    keys = {p.key for p in plans}
    refs = {p.match_run for p in plans if p.match_run in keys}
    for plan in plans:
        if plan.key in refs and plan.match_run is not None:
            raise ConfigError(
                f"run {plan.key} is the matching reference of other runs but is matched "
                f"itself (to {plan.match_run}); match baselines to an acp run"
            )
    return [p for p in plans if p.key in refs] + [p for p in plans if p.key not in refs]


def check_references(plans: Sequence[RunPlan], *, root: Path) -> None:
    """Fail before training when a run is matched to a reference run that is neither in the
    grid nor finished in ``root`` (e.g. ``--only randtopk`` on a fresh directory).

    Raises:
        ConfigError: naming the run, its reference and what to do.
    """
    keys = {p.key for p in plans}
    for plan in plans:
        ref = plan.match_run
        if ref is None or ref in keys:
            continue
        path = run_dir(root, plan).parents[2] / ref
        if not (path / "summary.json").exists():
            raise ConfigError(
                f"run {plan.key} is matched to the realised uplink bytes of {ref}, which is "
                f"not in this grid and not finished in {root}; add its label (e.g. --only "
                f"{ref.split('/')[1]} {plan.label}) or match at p_base"
            )


def _reference_state(plan: RunPlan, result: CompareResult, keys: set[str]) -> str:
    """``"ready"``, ``"wait"`` (its reference run of this grid has not ended) or
    ``"failed"`` (it ended in failure) for ``plan``."""
    ref = plan.match_run
    if ref is None or ref not in keys:
        return "ready"
    outcome = result.results.get(ref)
    if outcome is None:
        return "wait"
    return "failed" if outcome["status"] == "failed" else "ready"


def _reference_failed(plan: RunPlan) -> dict[str, Any]:
    return {
        "key": plan.key,
        "status": "failed",
        "error": f"not run: it is matched to {plan.match_run}, which failed",
    }


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
    plans: Sequence[RunPlan],
    *,
    root: Path,
    result: CompareResult,
    progress: bool,
    reuse: Sequence[str] = (),
    threads: int | None = None,
) -> None:
    """Train the grid in this process, with ``threads`` PyTorch threads when given (the
    process's own count is restored afterwards)."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        _run_inline_plans(plans, root=root, result=result, progress=progress, reuse=reuse)
    finally:
        torch.set_num_threads(before)


def _run_inline_plans(
    plans: Sequence[RunPlan],
    *,
    root: Path,
    result: CompareResult,
    progress: bool,
    reuse: Sequence[str],
) -> None:
    keys = {p.key for p in plans}
    bar = tqdm(
        plans, desc="runs", unit="run", disable=not show_progress(progress), dynamic_ncols=True
    )
    for plan in bar:
        bar.set_postfix_str(plan.key, refresh=True)
        if _reference_state(plan, result, keys) == "failed":
            result.results[plan.key] = _reference_failed(plan)
            continue
        data = plan.to_dict()
        data["config"]["progress"] = bool(progress and data["config"].get("progress", True))
        data["reuse"] = list(reuse)
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
    env: Mapping[str, str],
    reuse: Sequence[str] = (),
) -> None:
    pending = list(plans)
    keys = {p.key for p in plans}
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
                states = [_reference_state(p, result, keys) for p in pending]
                if all(st == "wait" for st in states):
                    break  # every pending run waits for a reference that is running
                index = next(i for i, st in enumerate(states) if st != "wait")
                plan = pending.pop(index)
                if states[index] == "failed":
                    result.results[plan.key] = _reference_failed(plan)
                    bar.update(1)
                    continue
                if is_finished(run_dir(root, plan), rounds=plan.config.rounds):
                    result.results[plan.key] = {"key": plan.key, "status": "skipped"}
                    bar.update(1)
                    continue
                running[plan.key] = _start_worker(
                    plan, root=root, threads=threads, env=env, reuse=reuse
                )
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
    plan: RunPlan,
    *,
    root: Path,
    threads: int,
    env: Mapping[str, str],
    reuse: Sequence[str] = (),
) -> tuple[subprocess.Popen[bytes], Any, RunPlan]:
    path = run_dir(root, plan)
    path.mkdir(parents=True, exist_ok=True)
    data = plan.to_dict()
    data["config"]["progress"] = False
    data["reuse"] = list(reuse)
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
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(env))
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
def ray_task(
    plan_data: dict[str, Any],
    root: str,
    threads: int | None,
    plugin_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """What one Ray task runs: :func:`run_plan` with its own thread count, errors returned.

    ``plugin_env`` (:func:`plugin_environment`) makes the driver's plug-in modules
    importable and imports them first; on a cluster their directories must be on a file
    system every node sees, like the grid's.
    """
    import torch

    from acpsl import plugins

    if threads:
        torch.set_num_threads(threads)
    try:
        plugins.prepare_worker(plugin_env)
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
    plugin_env: Mapping[str, str] | None = None,
    reuse: Sequence[str] = (),
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
        refs: dict[Any, RunPlan] = {}
        keys = {p.key for p in plans}
        waiting = list(plans)

        def submit_ready() -> None:
            # runs matched to a reference of this grid are submitted once it has ended
            for plan in list(waiting):
                state = _reference_state(plan, result, keys)
                if state == "wait":
                    continue
                waiting.remove(plan)
                if state == "failed":
                    result.results[plan.key] = _reference_failed(plan)
                    bar.update(1)
                    continue
                data = plan.to_dict()
                data["config"]["progress"] = False
                data["reuse"] = list(reuse)
                env = dict(plugin_env or {})
                refs[task.remote(data, str(root.resolve()), threads or 1, env)] = plan

        bar = tqdm(
            total=len(plans),
            desc="runs (ray)",
            unit="run",
            disable=not show_progress(progress),
            dynamic_ncols=True,
        )
        try:
            submit_ready()
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
                submit_ready()
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
