"""The training loop: EP updates, evaluation, run directory, checkpoints and exact resume.

A run directory holds everything a run produced::

    config.yaml         the resolved configuration
    environment.json    package versions, device, git commit
    metrics.jsonl/.csv  one record per epoch (errors, losses, learning rates, seconds, steps)
    tensorboard/        event files (when tensorboard is installed)
    curves.png          learning curves
    checkpoints/        last.pt (every ``train.save_every`` epochs and on interrupt), best.pt
    summary.json        final figures (accuracies as fractions, epochs, wall seconds)

Resuming restores the model, optimizer, scheduler, the estimator's generator, the epoch and
batch position and the partial epoch statistics. Batches are a pure function of
(seed, epoch, batch index) (:class:`~eqprop.train.loader.EpochLoader`), so a run interrupted and
resumed on CPU logs the same metrics as an uninterrupted one, to the last digit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from eqprop.analysis.gdu import check_gdu
from eqprop.core.asymmetric import AsymmetricNetwork
from eqprop.dynamics import FreeRelaxation
from eqprop.train.builders import (
    Splits,
    TrainingError,
    build_estimator,
    build_network,
    build_optimizer,
    build_scheduler,
    make_splits,
    resolve_device,
    resolve_dtype,
)
from eqprop.train.checkpoint import (
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from eqprop.train.config import ExperimentConfig, config_from_dict, config_to_dict, save_config
from eqprop.train.datasets import Dataset, load_dataset
from eqprop.train.interrupt import Interrupt
from eqprop.train.loader import EpochLoader
from eqprop.train.runlog import RunLogger, environment_facts

__all__ = ["Splits", "Trainer", "TrainingError", "load_run"]


@dataclass
class _EpochStats:
    """Running training statistics of one epoch (saved in mid-epoch checkpoints)."""

    errors: int = 0
    loss_sum: float = 0.0
    count: int = 0
    free_steps: list[int] = field(default_factory=list)
    nudged_steps: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Trainer:
    """Trains one configuration into one run directory.

    Args:
        cfg: the experiment.
        run_dir: where everything is written.
        quiet: no progress bar; one line per epoch instead.
        data: an already loaded dataset (tests); loaded from ``cfg.data`` otherwise.
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        run_dir: str | Path,
        quiet: bool = False,
        data: Dataset | None = None,
    ) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.quiet = quiet
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        self.device = resolve_device(cfg.train.device)
        self.dtype = resolve_dtype(cfg)
        d = cfg.data
        self.data = (
            data if data is not None else load_dataset(d.dataset, d.root, download=d.download)
        )
        self.splits = make_splits(cfg, self.data, self.device, self.dtype)
        self.net = build_network(cfg, self.data.input_shape, self.data.num_classes).to(
            device=self.device, dtype=self.dtype
        )
        self.estimator = build_estimator(cfg)
        self.optimizer = build_optimizer(cfg, self.net)
        self.scheduler = build_scheduler(cfg, self.optimizer)
        self.epoch = 0  # completed epochs
        self.batch = 0  # batches completed in the current epoch
        self.stats = _EpochStats()
        self.best_val_accuracy: float | None = None
        self.best_epoch: int | None = None
        self.history: list[dict[str, Any]] = []
        self.wall_seconds = 0.0

    # --------------------------------------------------------------------------- state

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def state(self) -> dict[str, Any]:
        """The checkpoint payload (keys documented in :mod:`eqprop.train.checkpoint`)."""
        import eqprop

        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "rng": {**rng_state(), "estimator": self.estimator.state_dict()},
            "partial": self.stats.as_dict(),
            "best_val_accuracy": self.best_val_accuracy,
            "best_epoch": self.best_epoch,
            "config": config_to_dict(self.cfg),
            "metrics_history": self.history,
            "wall_seconds": self.wall_seconds,
            "eqprop_version": eqprop.__version__,
        }

    def load_state(self, ckpt: dict[str, Any]) -> None:
        """Restore everything :meth:`state` saved."""
        self.net.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and ckpt.get("scheduler") is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        rng = dict(ckpt.get("rng") or {})
        est = rng.pop("estimator", None)
        set_rng_state(rng)
        if est:
            self.estimator.load_state_dict(est)
        self.epoch, self.batch = int(ckpt["epoch"]), int(ckpt["batch"])
        self.stats = _EpochStats(**ckpt.get("partial", {}))
        self.best_val_accuracy = ckpt.get("best_val_accuracy")
        self.best_epoch = ckpt.get("best_epoch")
        self.history = list(ckpt.get("metrics_history", []))
        self.wall_seconds = float(ckpt.get("wall_seconds", 0.0))

    def save(self, name: str = "last") -> Path:
        path = self.checkpoint_dir / f"{name}.pt"
        save_checkpoint(path, self.state())
        return path

    # --------------------------------------------------------------------------- evaluation

    @torch.no_grad()
    def evaluate(self, loader: EpochLoader) -> tuple[float, float]:
        """(error rate, mean loss) of the free equilibrium after the evaluation steps."""
        relaxation = self.net.relaxation
        assert isinstance(relaxation, FreeRelaxation)  # set by build_network
        errors = torch.zeros((), dtype=torch.long, device=self.device)
        loss = torch.zeros((), dtype=torch.float64, device=self.device)
        for x, y in loader.epoch(0):
            x, y = self.net.check_input(x, y)
            state = relaxation.free_state(self.net, x)
            errors += (self.net.predict_from_state(state) != y).sum()
            loss += self.net.loss(state, y).sum().double()
        n = loader.num_samples
        return int(errors) / n, float(loss) / n

    # --------------------------------------------------------------------------- training

    def _train_batch(self, x: Tensor, y: Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        est = self.estimator.estimate(self.net, x, y)
        grads = [p.grad for p in self.net.parameters() if p.grad is not None]
        # NaN and inf survive a sum, so one reduction per tensor detects any non-finite value.
        total = torch.stack([est.loss.sum(), *(g.sum() for g in grads)]).sum()
        errors = (est.predictions != y.to(est.predictions.device)).sum()
        # One device sync per batch, after a whole relaxation: negligible.
        ok, n_err, loss_sum = bool(total.isfinite()), int(errors), float(est.loss.sum())
        if not ok:
            raise TrainingError(
                f"non-finite state, loss or gradient at epoch {self.epoch + 1}, batch "
                f"{self.batch + 1}; the last good checkpoint is kept in {self.checkpoint_dir} "
                "(try a smaller learning rate or beta)"
            )
        self.optimizer.step()
        self.stats.errors += n_err
        self.stats.loss_sum += loss_sum
        self.stats.count += len(y)
        self.stats.free_steps.append(est.free_steps)
        self.stats.nudged_steps.append(est.nudged_steps)

    def gdu_summary(self) -> dict[str, float | None]:
        """Summary numbers of a small EP-versus-BPTT check at the run's β (no sweep)."""
        loader = self.splits.val or self.splits.test
        x, y = next(iter(loader.epoch(0)))
        n = self.cfg.log.check_batch
        d = self.cfg.dynamics
        report = check_gdu(
            self.net, x[:n], y[:n], free_steps=d.free_steps, nudged_steps=d.nudged_steps,
            betas=(self.cfg.estimator.beta,), sweep_betas=(), solver=self.estimator.solver,
        )  # fmt: skip
        (comparison,) = report.comparisons
        ratios = [r for r in comparison.layers.values() if r is not None]
        out: dict[str, float | None] = {
            f"gdu_{variant}_{key}": comparison.totals[variant][key]
            for variant in ("plus", "minus", "sym")
            for key in ("rmse", "final_error")
        }
        out["gdu_layer_ratio_mean"] = sum(ratios) / len(ratios) if ratios else None
        return out

    def _end_epoch(self, seconds: float) -> dict[str, Any]:
        s = self.stats
        record: dict[str, Any] = {
            "epoch": self.epoch + 1,
            "train_error": s.errors / max(s.count, 1),
            "train_loss": s.loss_sum / max(s.count, 1),
        }
        if self.splits.val is not None:
            record["val_error"], record["val_loss"] = self.evaluate(self.splits.val)
        record["test_error"], record["test_loss"] = self.evaluate(self.splits.test)
        for i, group in enumerate(self.optimizer.param_groups):
            record[f"lr_layer{i}"] = group["lr"]
        record["free_steps_mean"] = sum(s.free_steps) / max(len(s.free_steps), 1)
        record["free_steps_max"] = max(s.free_steps, default=0)
        record["nudged_steps_mean"] = sum(s.nudged_steps) / max(len(s.nudged_steps), 1)
        record["nudged_steps_max"] = max(s.nudged_steps, default=0)
        every = self.cfg.log.check_every
        if every and (self.epoch + 1) % every == 0:
            record.update(self.gdu_summary())
        if isinstance(self.net, AsymmetricNetwork):
            for layer, angle in self.net.weight_angles().items():
                record[f"angle_{layer}"] = angle  # degrees between feedback B and forward W
        record["seconds"] = seconds
        if not all(p.isfinite().all() for p in self.net.parameters()):
            raise TrainingError(
                f"non-finite weights after epoch {self.epoch + 1}; the last good checkpoint is "
                f"kept in {self.checkpoint_dir}"
            )
        if self.scheduler is not None:
            self.scheduler.step()
        return record

    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train to ``cfg.train.epochs`` (continuing from ``last.pt`` when ``resume``).

        Returns:
            The summary also written to ``summary.json``.

        Raises:
            TrainingError: non-finite values, or a resume whose config differs.
        """
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            ckpt = load_checkpoint(self.checkpoint_dir / "last.pt", map_location=self.device)
            if config_from_dict(ckpt["config"]) != cfg:
                raise TrainingError(
                    f"resume: the configuration differs from the one saved in {self.run_dir}"
                )
            self.load_state(ckpt)
        else:
            save_config(cfg, self.run_dir / "config.yaml")
        interrupt = Interrupt()
        with (
            RunLogger(self.run_dir, cfg.log.tensorboard, cfg.log.plots) as log,
            interrupt.installed(),
        ):
            log.truncate(self.epoch)  # drop records logged after the checkpoint we resume from
            log.write_json("environment.json", environment_facts())
            log.write_json("model.json", self.net.describe())
            while self.epoch < cfg.train.epochs:
                if self._run_epoch(log, interrupt):
                    return {"interrupted": True, "epoch": self.epoch, "batch": self.batch}
            summary = self._summary()
            log.write_json("summary.json", summary)
        return summary

    def _run_epoch(self, log: RunLogger, interrupt: Interrupt) -> bool:
        """Train one epoch from the current position; True when interrupted."""
        cfg = self.cfg
        loader = self.splits.train
        total = len(loader)
        bar = tqdm(
            total=total, initial=self.batch, desc=f"epoch {self.epoch + 1}/{cfg.train.epochs}",
            disable=self.quiet or not cfg.log.progress, leave=False, dynamic_ncols=True,
        )  # fmt: skip
        t0 = time.perf_counter()
        with bar:
            for x, y in loader.epoch(self.epoch, start_batch=self.batch):
                self._train_batch(x, y)
                self.batch += 1
                bar.update(1)
                bar.set_postfix(
                    acc=f"{1 - self.stats.errors / self.stats.count:.2%}", refresh=False
                )
                if interrupt.requested:
                    self.wall_seconds += time.perf_counter() - t0
                    path = self.save()
                    tqdm.write(
                        f"interrupted at epoch {self.epoch + 1}, batch {self.batch}/{total}; "
                        f"saved {path}; continue with: eqprop resume {self.run_dir}"
                    )
                    return True
        record = self._end_epoch(time.perf_counter() - t0)
        self.wall_seconds += record["seconds"]
        self.epoch += 1
        self.batch = 0
        self.stats = _EpochStats()
        self.history.append(record)
        log.log_epoch(record)
        val_err = record.get("val_error")
        if val_err is not None and (
            self.best_val_accuracy is None or 1 - val_err > self.best_val_accuracy
        ):
            self.best_val_accuracy, self.best_epoch = 1 - val_err, self.epoch
            self.save("best")
        if self.epoch % cfg.train.save_every == 0 or self.epoch == cfg.train.epochs:
            self.save("last")
        if self.quiet or not cfg.log.progress:
            parts = [f"{k}={v:.4f}" for k, v in record.items() if k.endswith("error")]
            print(
                f"epoch {self.epoch}/{cfg.train.epochs} "
                + " ".join(parts)
                + f" ({record['seconds']:.1f}s)"
            )
        else:
            tqdm.write(
                f"epoch {self.epoch}/{cfg.train.epochs}: train {1 - record['train_error']:.2%}"
                + (f", val {1 - val_err:.2%}" if val_err is not None else "")
                + f", test {1 - record['test_error']:.2%} ({record['seconds']:.1f}s)"
            )
        return False

    def _summary(self) -> dict[str, Any]:
        last = self.history[-1]
        best = next((r for r in self.history if r["epoch"] == self.best_epoch), last)
        return {
            "name": self.cfg.name,
            "epochs": self.epoch,
            "selected_epoch": best["epoch"],
            "test_accuracy": 1 - best["test_error"],
            "val_accuracy": 1 - best["val_error"] if "val_error" in best else None,
            "final_test_accuracy": 1 - last["test_error"],
            "final_train_accuracy": 1 - last["train_error"],
            "wall_seconds": self.wall_seconds,
            "seconds_per_epoch": self.wall_seconds / max(self.epoch, 1),
            "device": str(self.device),
            "parameters": sum(p.numel() for p in self.net.parameters()),
        }


def load_run(run_dir: str | Path, checkpoint: str = "best", device: str | None = None):
    """Rebuild a run's trainer from its checkpoint (for ``eqprop eval``).

    Raises:
        CheckpointError: when the checkpoint is missing or unreadable.
    """
    run_dir = Path(run_dir)
    path = run_dir / "checkpoints" / f"{checkpoint}.pt"
    if checkpoint == "best" and not path.exists():
        path = run_dir / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(path)
    if "config" not in ckpt:
        raise CheckpointError(f"{path}: has no 'config' entry; cannot rebuild the run")
    cfg = config_from_dict(ckpt["config"])
    if device is not None:
        cfg = config_from_dict(
            {**ckpt["config"], "train": {**ckpt["config"]["train"], "device": device}}
        )
    trainer = Trainer(cfg, run_dir, quiet=True)
    trainer.net.load_state_dict(ckpt["model"])
    return trainer
