"""Helpers of the run tests: a sub-second digits config and the metrics it logs."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from eqprop.train.config import ExperimentConfig, load_config
from eqprop.train.trainer import Trainer

#: Fields that measure time, hence differ between otherwise identical runs.
TIMING_KEYS = {"seconds", "train_seconds", "eval_seconds"}

#: CLI flags of a quiet run that writes no TensorBoard events and no plots.
FAST = ["--set", "log.tensorboard=false", "--set", "log.plots=false", "--quiet"]

#: The overrides of :func:`tiny`, as CLI arguments.
TINY_ARGS = [
    "--set", "train.epochs=2", "--set", "model.dense=[16]", "--set", "dynamics.free_steps=6",
    "--set", "dynamics.nudged_steps=2", "--set", "train.batch_size=64", *FAST,
]  # fmt: skip


def tiny(*overrides: str) -> ExperimentConfig:
    """Two epochs of a small MLP on the bundled digits: well under a second of training."""
    base = [
        "train.epochs=2", "model.dense=[16]", "dynamics.free_steps=6", "dynamics.nudged_steps=2",
        "train.batch_size=64", "log.tensorboard=false", "log.plots=false",
    ]  # fmt: skip
    return load_config("digits-quickstart", [*base, *overrides])


def records(run_dir: Path) -> list[dict]:
    """The run's metrics records, without the timing fields."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]


def one_error_line(err: str) -> str:
    """The single ``eqprop: error:`` line of ``err``, asserting that there is exactly one, no
    traceback, and nothing else but eqprop's own notices."""
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("eqprop: error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert all(line.startswith("eqprop: ") for line in lines), err
    return errors[0]


def signal_at_batch(monkeypatch, n: int, *signals: int) -> None:
    """Make the trainer raise ``signals`` (default Ctrl-C) right after its ``n``-th batch."""
    original = Trainer._train_batch
    calls = {"n": 0}

    def train_batch(self, x, y):
        original(self, x, y)
        calls["n"] += 1
        if calls["n"] == n:
            for sig in signals or (signal.SIGINT,):
                signal.raise_signal(sig)

    monkeypatch.setattr(Trainer, "_train_batch", train_batch)
