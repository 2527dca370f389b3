"""``acpsl compare --ray``: the runs of a grid as tasks of a local Ray cluster (loopback).

Skipped only when ray is not installed (it is the optional extra ``acpsl[ray]``, which the
dev environment installs). Where ray is installed but cannot start a cluster, the test fails
with the reason; deselect it with ``-m "not ray"`` on such machines.

The cluster is this test's own: its own ``--temp-dir`` and ports, started in its own session
and stopped by killing that session only, so Ray clusters of anyone else on the machine
(``ray stop`` would stop them all) are left alone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="ray is not installed (pip install 'acpsl[ray]')")

from processes import session_alive

from acpsl.experiments.cli import plans_for_schemes
from acpsl.experiments.compare import compare

pytestmark = pytest.mark.ray

#: Fields that depend on timing, not on the computation.
TIMING = {"wall_s", "round_s"}
#: What ``ray start --block`` prints once the node is up.
STARTED = "Ray runtime started"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop_session(proc: subprocess.Popen[bytes]) -> None:
    """Stop the cluster started by ``proc`` (its session leader): SIGTERM to ``ray start``
    (which stops its node gracefully), then SIGKILL to whatever is left of its session."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(timeout=30)
    deadline = time.monotonic() + 15
    while sys.platform.startswith("linux") and session_alive(proc.pid):
        if time.monotonic() > deadline:
            pytest.fail(f"ray processes survived the fixture: {session_alive(proc.pid)}")
        for pid in session_alive(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


@pytest.fixture()
def ray_head() -> Iterator[str]:
    """A one-node Ray cluster of this test only, on loopback, stopped afterwards whatever
    happens (without touching other Ray clusters of the machine)."""
    # a short folder of its own: Ray's socket paths must stay under 108 characters
    temp = Path(tempfile.mkdtemp(prefix="acpsl-ray-"))
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "ray.scripts.scripts",
        "start",
        "--head",
        "--block",
        f"--temp-dir={temp}",
        f"--port={port}",
        f"--ray-client-server-port={_free_port()}",
        f"--dashboard-agent-listen-port={_free_port()}",
        "--node-ip-address=127.0.0.1",
        "--num-cpus=2",
        "--include-dashboard=false",
        "--disable-usage-stats",
    ]
    log_path = temp.with_name(temp.name + ".log")
    log = log_path.open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while STARTED not in log_path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace").strip()[-1500:]
                why = "timed out after 120 s" if proc.poll() is None else "failed"
                pytest.fail(
                    f"ray is installed but `ray start --head` {why} (deselect with "
                    f'-m "not ray" where Ray cannot run):\n{tail}'
                )
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        _stop_session(proc)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)
        log_path.unlink(missing_ok=True)


def _records(path: Path) -> list[dict]:
    rows = [json.loads(ln) for ln in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def test_compare_on_ray_gives_the_same_records(
    ray_head: str, shared_data: Path, tmp_path: Path
) -> None:
    plans = plans_for_schemes(
        ["standard", "acp"],
        base={
            "dataset": "mnist",
            "data_dir": str(shared_data),
            "model": "smallcnn",
            "cut": 1,
            "subset": 32,
            "test_subset": 16,
            "batch_size": 16,
            "clients": 2,
            "rounds": 2,
            "progress": False,
        },
        seeds=[0],
    )
    on_ray = compare(plans, out_dir=tmp_path / "ray", ray_address=ray_head, progress=False)
    assert {v["status"] for v in on_ray.results.values()} == {"done"}, on_ray.results
    # Ray's tasks run 1 PyTorch thread (threads=None: 1); float sums depend on the thread
    # count, so the local run in this process must use one thread too
    local = compare(plans, out_dir=tmp_path / "local", workers=1, threads=1, progress=False)
    assert {v["status"] for v in local.results.values()} == {"done"}
    for plan in plans:
        a = _records(tmp_path / "ray" / plan.key / "records.jsonl")
        b = _records(tmp_path / "local" / plan.key / "records.jsonl")
        assert [r["round"] for r in a] == [1, 2]
        assert a == b
    again = compare(plans, out_dir=tmp_path / "ray", ray_address=ray_head, progress=False)
    assert {v["status"] for v in again.results.values()} == {"skipped"}

    # Plug-ins: a module importable in the driver only through its sys.path reaches the tasks
    # (the driver passes its plug-in path; each task imports the module before building).
    plug = tmp_path / "plugmods"
    plug.mkdir()
    (plug / "rayplug.py").write_text(RAY_PLUGIN, "utf-8")
    sys.path.insert(0, str(plug))
    try:
        plans = plans_for_schemes(
            ["standard", "topk:k=16"],
            base={
                "dataset": "rayplug:blobs",
                "model": "rayplug:tiny_pair",
                "batch_size": 32,
                "clients": 2,
                "rounds": 1,
                "lr": 0.05,
                "progress": False,
            },
            seeds=[0],
        )
        result = compare(plans, out_dir=tmp_path / "plug", ray_address=ray_head, progress=False)
    finally:
        sys.path.remove(str(plug))
    assert {v["status"] for v in result.results.values()} == {"done"}, result.results
    for plan in plans:
        assert plan.key.startswith("blobs/")
        assert _records(tmp_path / "plug" / plan.key / "records.jsonl")[0]["test_acc"] > 0.5


RAY_PLUGIN = """
import torch
from torch import nn
from torch.utils.data import TensorDataset


def tiny_pair(*, in_channels, num_classes):
    client = nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU())
    return client, nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, num_classes))


def blobs():
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 1, 8, 8, generator=gen)

    def split(n):
        y = torch.randint(0, 4, (n,), generator=gen)
        return TensorDataset(centers[y] + 0.5 * torch.randn(n, 1, 8, 8, generator=gen), y)

    return split(128), split(64)
"""
