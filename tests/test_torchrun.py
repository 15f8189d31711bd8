"""`eqprop train` under torchrun: two gloo processes on the CPU train like one process, write one
run directory, and resume exactly after one rank is killed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
ARGS = ["digits-quickstart", "--quiet", "--set", "train.dtype=float64"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _torchrun(*args: str) -> list[str]:
    torchrun = shutil.which("torchrun", path=str(BIN)) or "torchrun"
    return [torchrun, "--standalone", "--nproc_per_node=2", "-m", "eqprop", *args]


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV, check=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _same(a: list[dict], b: list[dict], tol: float) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for key, value in x.items():
            if key.endswith("seconds") or not isinstance(value, float):
                continue
            assert abs(value - y[key]) <= tol * max(1.0, abs(value)), (x["epoch"], key)


def test_two_ranks_train_like_one_process_into_one_run_directory(tmp_path):
    epochs = ["--set", "train.epochs=2"]
    _run([sys.executable, "-m", "eqprop", "train", *ARGS, *epochs, "--out", str(tmp_path / "one")])
    out = _run(_torchrun("train", *ARGS, *epochs, "--out", str(tmp_path / "two")))
    assert "Warning" not in out.stderr
    _same(_metrics(tmp_path / "one"), _metrics(tmp_path / "two"), 1e-9)
    assert out.stdout.count("test accuracy:") == 1  # rank 0 reports, alone
    env = json.loads((tmp_path / "two" / "environment.json").read_text())
    assert '"world_size": 2' in json.dumps(env) and '"backend": "gloo"' in json.dumps(env)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["world_size"] == 2


def test_a_killed_rank_stops_the_run_and_resume_finishes_it_exactly(tmp_path):
    epochs = ["--set", "train.epochs=12"]
    _run(_torchrun("train", *ARGS, *epochs, "--out", str(tmp_path / "whole")))
    run = tmp_path / "killed"
    proc = subprocess.Popen(
        _torchrun("train", *ARGS, *epochs, "--out", str(run)),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (run / "checkpoints" / "last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    children = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(proc.pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    assert children, "no worker processes found"
    os.kill(int(children[-1]), signal.SIGKILL)  # one rank dies
    assert proc.wait(timeout=150) != 0  # and the others stop, within a bounded time
    assert len(_metrics(run)) < 12
    _run(_torchrun("resume", str(run), "--quiet"))
    _same(_metrics(tmp_path / "whole"), _metrics(run), 0.0)


def test_estimator_counts_are_summed_over_ranks(tmp_path):
    # Holomorphic EP at a huge |beta| with few nudged steps: most complex points fail the
    # convergence guard, and the epoch's count covers every rank's shard.
    hep = ["--set", "train.epochs=1", "--set", "model.activation=mysig",
           "--set", "estimator.kind=holomorphic", "--set", "estimator.points=4",
           "--set", "estimator.beta=10", "--set", "dynamics.nudged_steps=3"]  # fmt: skip
    _run([sys.executable, "-m", "eqprop", "train", *ARGS, *hep, "--out", str(tmp_path / "one")])
    _run(_torchrun("train", *ARGS, *hep, "--out", str(tmp_path / "two")))
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert one[0]["guard_fallback"] > 100
    _same(one, two, 1e-9)
