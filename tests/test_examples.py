"""The README's three wirings run as written: a plain loop, DDP (two gloo processes under
torchrun), and Lightning (when the optional extra is installed)."""

from __future__ import annotations

import importlib.util
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_plain_loop_example_learns():
    accuracy = runpy.run_path(str(EXAMPLES / "plain_loop.py"))["main"]()
    assert accuracy > 0.7  # a toy task; chance is about 0.5


@pytest.mark.slow
def test_ddp_example_keeps_the_replicas_identical():
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", str(EXAMPLES / "ddp.py")],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-1000:] + out.stderr[:3000]
    assert "2 ranks, replicas identical: True" in out.stdout


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("lightning") is None, reason="lightning not installed")
def test_lightning_example_runs():
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "lightning_ep.py")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "train accuracy" in out.stdout
