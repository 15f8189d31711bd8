"""The trainer end to end on the bundled digits: run directory, exact resume, failure handling."""

from __future__ import annotations

import json
import signal

import pytest
import torch
from tinyruns import signal_at_batch

from eqprop.train.builders import build_network
from eqprop.train.checkpoint import load_checkpoint
from eqprop.train.config import ConfigError, load_config
from eqprop.train.epochs import gradient_agreement
from eqprop.train.trainer import CHECK_AT_START, Trainer, TrainingError

TIMING_KEYS = {"seconds", "train_seconds", "eval_seconds"}


def small_config(**extra: str):
    """A few-second digits run that exercises every stateful piece: SGD momentum, a cosine
    schedule, augmentation and the random-sign estimator's generator."""
    overrides = [
        "train.epochs=3", "train.batch_size=64", "model.dense=[32]", "dynamics.free_steps=8",
        "dynamics.nudged_steps=3", "estimator.kind=random_sign", "optim.kind=sgd",
        "optim.lr=[0.2, 0.1]", "optim.momentum=0.9", "optim.scheduler.kind=cosine",
        "optim.scheduler.eta_min=0.01", "data.augment=true", "log.tensorboard=false",
        "log.plots=false",
    ]  # fmt: skip
    overrides += [f"{k}={v}" for k, v in extra.items()]
    return load_config("digits-quickstart", overrides)


def records(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]


def test_quickstart_preset_trains_end_to_end(tmp_path):
    cfg = load_config("digits-quickstart", ["train.epochs=4"])
    summary = Trainer(cfg, tmp_path, quiet=True).fit()
    assert summary["epochs"] == 4
    assert summary["test_accuracy"] > 0.85
    assert 0.0 <= summary["val_accuracy"] <= 1.0
    for name in ("config.yaml", "environment.json", "metrics.jsonl", "metrics.csv", "curves.png",
                 "summary.json", "checkpoints/last.pt", "checkpoints/best.pt"):  # fmt: skip
        assert (tmp_path / name).exists(), name
    assert list((tmp_path / "tensorboard").iterdir())
    record = records(tmp_path)[-1]
    assert {"train_error", "val_error", "test_error", "train_loss", "lr_layer0",
            "free_steps_mean", "nudged_steps_max"} <= record.keys()  # fmt: skip
    assert (
        json.loads((tmp_path / "summary.json").read_text())["test_accuracy"]
        == summary["test_accuracy"]
    )


@pytest.mark.parametrize("stop_at", [5, 17])  # mid-epoch 1; mid-epoch 3 after two boundaries
def test_interrupted_then_resumed_run_equals_uninterrupted_run(tmp_path, monkeypatch, stop_at):
    full = tmp_path / "full"
    Trainer(small_config(), full, quiet=True).fit()

    cut = tmp_path / "cut"
    trainer = Trainer(small_config(), cut, quiet=True)
    signal_at_batch(monkeypatch, stop_at, signal.SIGINT)  # what Ctrl-C does
    assert trainer.fit()["interrupted"]
    monkeypatch.undo()
    ckpt = load_checkpoint(cut / "checkpoints" / "last.pt")
    assert ckpt["batch"] > 0  # saved mid-epoch

    resumed = Trainer(small_config(), cut, quiet=True)  # a new process would do the same
    resumed.fit(resume=True)
    assert records(cut) == records(full)
    final_a = load_checkpoint(full / "checkpoints" / "last.pt")["model"]
    final_b = load_checkpoint(cut / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)


def test_resume_refuses_a_different_config_naming_the_fields(tmp_path):
    Trainer(small_config(**{"train.epochs": "1"}), tmp_path, quiet=True).fit()
    changed = small_config(**{"train.epochs": "1", "optim.lr": "0.3", "model.dense": "[16]"})
    with pytest.raises(ConfigError, match=r"config.yaml: differs .* in 2 field\(s\): model.dense"):
        Trainer(changed, tmp_path).fit(resume=True)


def test_non_finite_values_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path, monkeypatch):
    trainer = Trainer(small_config(), tmp_path, quiet=True)
    original = Trainer._train_batch

    def poisoned(self, x, y):
        if self.epoch == 1 and self.batch == 2:
            with torch.no_grad():
                next(self.net.parameters()).fill_(float("nan"))
        original(self, x, y)

    monkeypatch.setattr(Trainer, "_train_batch", poisoned)
    with pytest.raises(TrainingError, match=r"non-finite .* epoch 2, batch 3; the last good"):
        trainer.fit()
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())


@pytest.mark.parametrize(
    "extra",
    [
        {"model.kind": "asymmetric", "model.dense": "[32, 16]"},
        {
            "model.kind": "asymmetric",
            "model.dense": "[32, 16]",
            "model.update_rule": "same",
            "estimator.kind": "one_sided",
        },
        {"estimator.kind": "bptt"},
        {
            "model.kind": "asymmetric",
            "model.dense": "[32, 16]",
            "estimator.kind": "bptt",
            "estimator.full_bptt": "true",
        },
        {"dynamics.schedule": "even_odd", "dynamics.tol": "1e-4", "dynamics.init": "feedforward"},
    ],
    ids=["vf", "vf-same", "bptt", "vf-full-bptt", "fast-solver"],
)
def test_every_algorithm_trains_through_the_same_loop(tmp_path, extra):
    base = ["train.epochs=2", "model.dense=[32]", "dynamics.free_steps=10",
            "dynamics.nudged_steps=4", "log.tensorboard=false", "log.plots=false"]  # fmt: skip
    cfg = load_config("digits-quickstart", base + [f"{k}={v}" for k, v in extra.items()])
    summary = Trainer(cfg, tmp_path, quiet=True).fit()
    assert summary["test_accuracy"] > 0.3  # 10 classes: well above chance after two epochs
    record = records(tmp_path)[-1]
    if extra.get("model.kind") == "asymmetric":
        assert 0.0 < record["angle_layer1"] < 90.0 + 15.0
    if "dynamics.tol" in extra:
        assert record["free_steps_mean"] <= cfg.dynamics.free_steps


def test_gdu_check_during_training_is_logged(tmp_path):
    cfg = load_config(
        "digits-quickstart",
        ["train.epochs=2", "model.dense=[16]", "dynamics.free_steps=30", "dynamics.nudged_steps=5",
         "log.check_every=2", "log.check_batch=4", "log.tensorboard=false", "log.plots=false"],
    )  # fmt: skip
    Trainer(cfg, tmp_path, quiet=True).fit()
    first, second = records(tmp_path)
    assert "gdu_sym_rmse" not in first
    assert second["gdu_sym_rmse"] is not None and second["gdu_layer_ratio_mean"] is not None
    # The run's symmetric-EP gradient against BPTT's, per weight layer (hidden, readout).
    assert {"gdu_cos_layer0", "gdu_cos_layer1", "gdu_relerr_layer1"} <= second.keys()
    assert 0.9 < second["gdu_cos_all"] <= 1.0 and second["gdu_relerr_layer0"] < 0.5


def test_the_check_also_runs_on_the_initial_weights_and_leaves_the_run_untouched(tmp_path):
    base = ["train.epochs=1", "model.dense=[16]", "dynamics.free_steps=30",
            "dynamics.nudged_steps=5", "log.check_batch=4", "log.tensorboard=false",
            "log.plots=false"]  # fmt: skip
    checked = load_config("digits-quickstart", [*base, "log.check_every=1"])
    initial = Trainer(checked, tmp_path / "fresh", quiet=True).gdu_summary()
    Trainer(checked, tmp_path / "checked", quiet=True).fit()
    Trainer(load_config("digits-quickstart", base), tmp_path / "plain", quiet=True).fit()
    start = json.loads((tmp_path / "checked" / CHECK_AT_START).read_text())
    assert start == {"epoch": 0, **initial}
    assert 0.9 < start["gdu_cos_all"] <= 1.0 and start["gdu_sym_final_error"] > 0
    assert not (tmp_path / "plain" / CHECK_AT_START).exists()
    # The check draws nothing from the run's random streams: the same batches, the same steps.
    (with_check,), (without,) = records(tmp_path / "checked"), records(tmp_path / "plain")
    for key in ("train_error", "train_loss", "test_error", "test_loss"):
        assert with_check[key] == without[key]


def test_gradient_agreement_has_no_reference_where_truncated_bptt_does_not_reach():
    """One even/odd nudged step: BPTT through it reaches only the top layers (no crash)."""
    cfg = load_config(
        "cifar10-conv-small-fast", ["dynamics.free_steps=4", "dynamics.nudged_steps=1"]
    )
    net = build_network(cfg, (3, 32, 32), 10)
    x, y = torch.rand(2, 3, 32, 32), torch.randint(0, 10, (2,))
    out = gradient_agreement(net, x, y, cfg, cfg.dynamics.solver)
    assert out["gdu_cos_layer0"] is None and out["gdu_relerr_layer0"] is None
    assert out["gdu_cos_layer3"] is not None and out["gdu_cos_layer3"] > 0.9  # the readout
    assert out["gdu_cos_all"] is not None


def test_the_full_reference_reaches_every_layer_of_a_graph_with_one_nudged_sweep():
    """A residual graph's last free node sweep runs down from the output node, so BPTT through
    it alone reaches only the head; through every free sweep it reaches every layer."""
    base = ["train.dtype=float64", "model.graph.residual.widths=[4, 6]", "dynamics.free_steps=4"]
    x, y = torch.rand(4, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (4,))
    out = {}
    for ref in ("truncated", "full"):
        cfg = load_config("fashion-residual-small", [*base, f"log.check_reference={ref}"])
        torch.manual_seed(0)
        net = build_network(cfg, (1, 28, 28), 10).double()
        out[ref] = gradient_agreement(net, x, y, cfg, cfg.dynamics.solver)
    n = cfg.model.n_layers
    assert sum(out["truncated"][f"gdu_cos_layer{i}"] is None for i in range(n)) >= n - 3
    assert all(out["full"][f"gdu_cos_layer{i}"] is not None for i in range(n))
    with pytest.raises(ConfigError, match=r"check_reference: 'last' is not one of truncated, full"):
        load_config("fashion-residual-small", ["log.check_reference=last"])


def test_holomorphic_guard_counts_are_logged_per_epoch(tmp_path):
    """The estimator's per-batch counts (hEP's convergence guard) reach the epoch records."""
    cfg = load_config(
        "digits-quickstart",
        ["estimator.kind=holomorphic", "estimator.points=4", "model.activation=mysig",
         "train.epochs=1", "data.train_size=64", "log.plots=false", "log.tensorboard=false"],
    )  # fmt: skip
    summary = Trainer(cfg, tmp_path / "run", quiet=True).fit()
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert {"guard_dropped", "guard_fallback"} <= record.keys()
    assert record["guard_dropped"] == 0 and summary["epochs"] == 1
