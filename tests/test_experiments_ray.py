"""``acpsl compare --ray``: the runs of a grid as tasks of a local Ray cluster (loopback).

Skipped when ray is not installed (it is the optional extra ``acpsl[ray]``).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="ray is not installed (pip install 'acpsl[ray]')")

from acpsl.experiments.cli import plans_for_schemes
from acpsl.experiments.compare import compare

pytestmark = pytest.mark.ray

#: Fields that depend on timing, not on the computation.
TIMING = {"wall_s", "round_s"}


def _ray_cli() -> str:
    local = Path(sys.executable).with_name("ray")
    found = str(local) if local.exists() else shutil.which("ray")
    if found is None:
        pytest.skip("the ray command is not on PATH")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def ray_head() -> Iterator[str]:
    """A one-node Ray cluster on loopback, stopped afterwards whatever happens."""
    ray = _ray_cli()
    port = _free_port()
    cmd = [
        ray,
        "start",
        "--head",
        f"--port={port}",
        "--node-ip-address=127.0.0.1",
        "--num-cpus=2",
        "--include-dashboard=false",
        "--disable-usage-stats",
    ]
    try:
        started = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if started.returncode != 0:
            pytest.skip(f"ray start failed: {started.stderr.strip()[-300:]}")
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, timeout=120)


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
    local = compare(plans, out_dir=tmp_path / "local", workers=1, progress=False)
    assert {v["status"] for v in local.results.values()} == {"done"}
    for plan in plans:
        a = _records(tmp_path / "ray" / plan.key / "records.jsonl")
        b = _records(tmp_path / "local" / plan.key / "records.jsonl")
        assert [r["round"] for r in a] == [1, 2]
        assert a == b
    again = compare(plans, out_dir=tmp_path / "ray", ray_address=ray_head, progress=False)
    assert {v["status"] for v in again.results.values()} == {"skipped"}
