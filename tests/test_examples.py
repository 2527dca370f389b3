"""The scripts in examples/ run as a user would run them, and do what they say."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.slow
def test_cutlayer_example_learns(shared_data: Path) -> None:
    script = EXAMPLES / "cutlayer_mnist.py"
    assert len(script.read_text("utf-8").splitlines()) < 40
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    out = subprocess.run(
        [sys.executable, str(script), str(shared_data)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=True,
    ).stdout
    epochs = re.findall(r"test acc ([0-9.]+), uplink ([0-9,]+) B, downlink ([0-9,]+) B", out)
    assert len(epochs) == 2, out
    accs = [float(a) for a, _, _ in epochs]
    ups = [int(u.replace(",", "")) for _, u, _ in epochs]
    assert accs[-1] >= 0.85, out  # chance is 0.10
    assert 0 < ups[0] < ups[1]
