"""``benchmarks/gradient_quality.py``: a saved run's update against the exact gradient of its
T-step network (BPTT through every free step)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from eqprop.train.trainer import Trainer
from tests.tinyruns import tiny

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def gradient_quality(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import gradient_quality

    return gradient_quality


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    Trainer(tiny("train.epochs=1", "model.dense=[32]"), out, quiet=True).fit()
    return out


def _quality(gradient_quality, run_dir: Path, kind: str, free: int, nudged: int, beta: float):
    trainer = gradient_quality.load_run(run_dir, "last")
    cfg = trainer.cfg
    cfg = dataclasses.replace(cfg, estimator=dataclasses.replace(cfg.estimator, kind=kind))
    x, y = next(iter(trainer.splits.val.epoch(0)))
    net = trainer.net.double()
    return gradient_quality.quality(net, x[:32].double(), y[:32], cfg, free, nudged, beta)


def test_bptt_through_every_step_is_its_own_reference(gradient_quality, run_dir):
    q = _quality(gradient_quality, run_dir, "bptt", 6, 6, 0.5)
    assert q["cos"] == pytest.approx(1.0, abs=1e-9) and q["sign_disagreement"] == 0.0
    assert q["norm_ratio"] == pytest.approx(1.0, abs=1e-9)


def test_settled_symmetric_ep_with_small_beta_is_the_gradient(gradient_quality, run_dir):
    # At a fixed point EP's update is the gradient of the relaxed network's loss; 200 steps
    # settle this MLP, and β = 1e-3 leaves an O(β²) error.
    q = _quality(gradient_quality, run_dir, "symmetric", 200, 40, 1e-3)
    assert q["cos"] > 0.9999 and abs(q["norm_ratio"] - 1) < 1e-3
    assert all(c > 0.999 for c in q["cos_layers"])


def test_the_script_prints_each_runs_budgets(gradient_quality, run_dir, capsys):
    torch.manual_seed(0)
    gradient_quality.main([str(run_dir), "--budget", "6,2", "--budget", "8,2,0.1", "--batch", "16"])
    (run,) = json.loads(capsys.readouterr().out)["runs"]
    assert run["batch"] == 16 and run["estimator"] == "symmetric"
    assert [(b["free_steps"], b["nudged_steps"]) for b in run["budgets"]] == [(6, 2), (8, 2)]
    assert run["budgets"][1]["beta"] == 0.1
    assert all(-1 <= c <= 1 for b in run["budgets"] for c in b["cos_layers"])


def test_a_malformed_budget_is_a_one_line_error(gradient_quality, run_dir, capsys):
    with pytest.raises(SystemExit):
        gradient_quality.main([str(run_dir), "--budget", "6"])
    assert "expected T,K or T,K,BETA" in capsys.readouterr().err


def test_schedule_and_init_can_replace_the_runs(gradient_quality, run_dir, capsys, monkeypatch):
    seen = []
    monkeypatch.setattr(gradient_quality, "quality",
                        lambda net, x, y, cfg, *a: seen.append(cfg.dynamics) or {})  # fmt: skip
    args = [str(run_dir), "--schedule", "forward_backward", "--init", "feedforward"]
    gradient_quality.main(args)
    (run,) = json.loads(capsys.readouterr().out)["runs"]
    assert (run["schedule"], run["init"]) == ("forward_backward", "feedforward")
    assert (seen[0].schedule, seen[0].init) == ("forward_backward", "feedforward")
    with pytest.raises(SystemExit):
        gradient_quality.main([str(run_dir), "--schedule", "gauss"])
    assert "invalid choice: 'gauss'" in capsys.readouterr().err
