"""The training loop: EP updates, evaluation, checkpoints, exact resume, clean stops.

What a run directory holds is listed in :mod:`eqprop.train.rundir`. Resuming restores the
model, optimizer, scheduler, the estimator's generator, the epoch and batch position and the
partial epoch statistics. Batches are a pure function of (seed, epoch, batch index)
(:class:`~eqprop.train.loader.EpochLoader`), so a run interrupted and resumed on CPU logs the
same metrics as an uninterrupted one, to the last digit.

Timing fields: per epoch ``train_seconds`` (the batches), ``eval_seconds`` (validation and test
evaluation) and ``seconds`` (the epoch's wall time: both, plus the optional GDU check); in
``summary.json`` their totals and ``wall_seconds``, the wall time of the whole run from the
start of each session (data loading included) to its last checkpoint or its end.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

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
from eqprop.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from eqprop.train.config import ExperimentConfig, config_to_dict, save_config
from eqprop.train.datasets import Dataset, load_dataset
from eqprop.train.epochs import EpochStats, gdu_summary, model_fields
from eqprop.train.evaluation import Stopped, evaluate
from eqprop.train.interrupt import Interrupt
from eqprop.train.loader import EpochLoader
from eqprop.train.reporting import divergence_warning, epoch_line, progress_bar, say, summarize
from eqprop.train.rundir import RunDirectory, os_error_message
from eqprop.train.runlog import RunLogger
from eqprop.train.session import check_resumable, record_session

__all__ = ["Splits", "Trainer", "TrainingError"]


class Trainer:
    """Trains one configuration into one run directory.

    Args:
        cfg: the experiment.
        run_dir: where everything is written; a :class:`RunDirectory` already claimed by the
            caller (the CLI claims it before loading data), or a path that :meth:`fit` claims.
        quiet: no progress bars (the per-epoch lines are the same).
        data: an already loaded dataset (tests); loaded from ``cfg.data`` otherwise.
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        run_dir: str | Path | RunDirectory,
        quiet: bool = False,
        data: Dataset | None = None,
    ) -> None:
        self._clock = time.perf_counter()
        self.cfg = cfg
        self._claimed = run_dir if isinstance(run_dir, RunDirectory) else None
        self.run_dir = run_dir.path if isinstance(run_dir, RunDirectory) else Path(run_dir)
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
        self.stats = EpochStats()
        self.best_val_accuracy: float | None = None
        self.best_epoch: int | None = None
        self.history: list[dict[str, Any]] = []
        self._wall_before = 0.0  # wall seconds of earlier sessions
        self._saved_at: tuple[int, int] | None = None  # (epoch, batch) of last.pt
        self._warned = False
        self._interrupt = Interrupt(notify=say)
        self.checkpoint_path: Path | None = None  # the checkpoint load_run restored

    # --------------------------------------------------------------------------- state

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def wall_seconds(self) -> float:
        """Wall time of the run so far: earlier sessions plus this one."""
        return self._wall_before + time.perf_counter() - self._clock

    @property
    def _progress(self) -> bool:
        return not self.quiet and self.cfg.log.progress

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
        estimator_rng = rng.pop("estimator", None)
        set_rng_state(rng)
        if estimator_rng:
            self.estimator.load_state_dict(estimator_rng)
        self.epoch, self.batch = int(ckpt["epoch"]), int(ckpt["batch"])
        self.stats = EpochStats(**ckpt.get("partial", {}))
        self.best_val_accuracy = ckpt.get("best_val_accuracy")
        self.best_epoch = ckpt.get("best_epoch")
        self.history = list(ckpt.get("metrics_history", []))
        self._wall_before = float(ckpt.get("wall_seconds", 0.0))
        self._saved_at = (self.epoch, self.batch)

    def save(self, name: str = "last") -> Path:
        """Write ``checkpoints/NAME.pt`` atomically; a second Ctrl-C waits for it to finish."""
        path = self.checkpoint_dir / f"{name}.pt"
        with self._interrupt.critical():
            path.parent.mkdir(parents=True, exist_ok=True)
            save_checkpoint(path, self.state())
        if name == "last":
            self._saved_at = (self.epoch, self.batch)
        return path

    def checkpoint_note(self) -> str:
        """What the run directory holds to go back to, as a clause of a message."""
        if self._saved_at is None:
            return f"no checkpoint was written, so {self.run_dir} holds none to go back to"
        epoch, batch = self._saved_at
        where = f"epoch {epoch}" + (f", batch {batch}" if batch else "")
        return f"the last good checkpoint is kept: {self.checkpoint_dir / 'last.pt'} ({where})"

    # --------------------------------------------------------------------------- evaluation

    def evaluate(self, loader: EpochLoader, desc: str = "evaluating") -> tuple[float, float]:
        """(error rate, mean loss) of the free equilibrium after the evaluation steps."""
        return evaluate(self.net, loader, progress=self._progress, desc=desc)

    def _evaluate_stoppable(self, loader: EpochLoader, desc: str) -> tuple[float, float]:
        return evaluate(
            self.net, loader, interrupt=self._interrupt, progress=self._progress, desc=desc
        )

    # --------------------------------------------------------------------------- training

    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train to ``cfg.train.epochs`` (continuing from ``last.pt`` when ``resume``).

        Returns:
            The summary also written to ``summary.json``, or, when a signal stopped the run
            after saving, ``{"interrupted": True, "exit_code": 130 or 143, ...}``.

        Raises:
            RunDirError: the directory cannot be used, or another process owns it.
            ConfigError: a resume whose config differs in a field that changes the results.
            TrainingError: non-finite values, or a file-system error (full disk) while running.
        """
        run = self._claimed or RunDirectory.claim(self.run_dir, resume=resume)
        try:
            if run.removed:
                say(f"removed {len(run.removed)} temporary file(s) left by a killed process")
            if run.restarted:
                say(f"starting over: the run in {self.run_dir} stopped before its first checkpoint")
            return self._fit(resume)
        except OSError as err:
            then = f"; fix that, then: eqprop resume {self.run_dir}" if self._saved_at else ""
            raise TrainingError(
                f"file-system error: {os_error_message(err)}; {self.checkpoint_note()}{then}"
            ) from None
        finally:
            if run is not self._claimed:
                run.release()

    def _fit(self, resume: bool) -> dict[str, Any]:
        start = self._start(resume)
        cfg = self.cfg
        with (
            RunLogger(self.run_dir, cfg.log.tensorboard, cfg.log.plots) as log,
            self._interrupt.installed() as interrupt,
        ):
            if cfg.log.tensorboard and not log.tensorboard_active:
                say(f"TensorBoard logging is off: it cannot be imported ({log.tensorboard_error})")
            log.restore(self.history)  # the checkpoint's records are the run's
            record_session(self.run_dir, start)
            log.write_json("model.json", self.net.describe())
            while self.epoch < cfg.train.epochs:
                try:
                    completed = self._run_epoch(log, interrupt)
                except KeyboardInterrupt:  # a second signal outside an epoch's batches
                    completed = False
                if not completed or interrupt.requested:
                    return self._stop(interrupt)
            summary = self._summary()
            log.write_json("summary.json", summary)
        return summary

    def _start(self, resume: bool) -> dict[str, Any]:
        """Load ``last.pt`` (resume) or write the config (new run); what this session is."""
        last = self.checkpoint_dir / "last.pt"
        if resume and last.exists():
            ckpt = load_checkpoint(last, map_location=self.device)
            check_resumable(ckpt, self.cfg, self.run_dir)
            self.load_state(ckpt)
            if self.epoch >= self.cfg.train.epochs:
                self._clock = time.perf_counter()  # a session that trains nothing adds no time
                say(f"the run is complete ({self.epoch} epochs); --epochs N trains it further")
            else:
                say(f"continuing at epoch {self.epoch + 1}, batch {self.batch + 1}")
        save_config(self.cfg, self.run_dir / "config.yaml")
        command = "resume" if resume else "train"
        return {"command": command, "epoch": self.epoch, "batch": self.batch}

    def _stop(self, interrupt: Interrupt) -> dict[str, Any]:
        """Save where the run stands and say how to continue."""
        path = self.checkpoint_dir / "last.pt"
        if self._saved_at != (self.epoch, self.batch):
            path = self.save()
        total = len(self.splits.train)
        where = "during evaluation" if self.batch == total else f"at batch {self.batch}/{total}"
        say(
            f"stopped ({interrupt.name}) in epoch {self.epoch + 1} {where}; saved {path}; "
            f"continue with: eqprop resume {self.run_dir}"
        )
        status = {"interrupted": True, "exit_code": interrupt.exit_code}
        return {**status, "epoch": self.epoch, "batch": self.batch}

    def _run_epoch(self, log: RunLogger, interrupt: Interrupt) -> bool:
        """Train and evaluate one epoch from the current position; False when stopped."""
        t0 = time.perf_counter()
        try:
            self._train_batches(interrupt)
            if interrupt.requested:
                raise Stopped
            record = self._end_epoch(t0)
        except (Stopped, KeyboardInterrupt):
            self.stats.seconds += time.perf_counter() - t0
            return False
        self._finish_epoch(log, record)
        return True

    def _train_batches(self, interrupt: Interrupt) -> None:
        loader = self.splits.train
        desc = f"epoch {self.epoch + 1}/{self.cfg.train.epochs}"
        t0 = time.perf_counter()
        try:
            with progress_bar(len(loader), desc, self._progress, self.batch) as bar:
                for x, y in loader.epoch(self.epoch, start_batch=self.batch):
                    if interrupt.requested:
                        return
                    self._train_batch(x, y)
                    bar.update(1)
                    bar.set_postfix(acc=f"{self.stats.accuracy:.2%}", refresh=False)
        finally:
            self.stats.train_seconds += time.perf_counter() - t0

    def _train_batch(self, x: Tensor, y: Tensor) -> None:
        rng = self.estimator.state_dict()
        try:
            self.optimizer.zero_grad(set_to_none=True)
            est = self.estimator.estimate(self.net, x, y)
            grads = [p.grad for p in self.net.parameters() if p.grad is not None]
            # NaN and inf survive a sum, so one reduction per tensor detects any non-finite value.
            total = torch.stack([est.loss.sum(), *(g.sum() for g in grads)]).sum()
            errors = (est.predictions != y.to(est.predictions.device)).sum()
            # One device sync per batch, after a whole relaxation: negligible.
            ok, n_err, loss_sum = bool(total.isfinite()), int(errors), float(est.loss.sum())
        except KeyboardInterrupt:
            self.estimator.load_state_dict(rng)  # the batch is redone on resume, same draws
            raise
        if not ok:
            raise TrainingError(
                f"non-finite state, loss or gradient at epoch {self.epoch + 1}, batch "
                f"{self.batch + 1}; {self.checkpoint_note()}; a resume would diverge again: "
                "start a new run with a smaller optim.lr or estimator.beta"
            )
        with self._interrupt.critical():
            self.optimizer.step()
            self.stats.add(n_err, loss_sum, len(y), est.free_steps, est.nudged_steps)
            self.batch += 1

    def gdu_summary(self) -> dict[str, float | None]:
        """Summary numbers of a small EP-versus-BPTT check at the run's β (no sweep)."""
        loader = self.splits.val or self.splits.test
        return gdu_summary(self.net, loader, self.cfg, self.estimator.solver)

    def _end_epoch(self, t0: float) -> dict[str, Any]:
        """Evaluate and build the epoch's record (changes no state: a stop here loses nothing)."""
        s = self.stats
        record: dict[str, Any] = {"epoch": self.epoch + 1, **s.fields()}
        t_eval = time.perf_counter()
        if self.splits.val is not None:
            val = self._evaluate_stoppable(self.splits.val, "validation")
            record["val_error"], record["val_loss"] = val
        record["test_error"], record["test_loss"] = self._evaluate_stoppable(
            self.splits.test, "test"
        )
        eval_seconds = time.perf_counter() - t_eval
        record.update(model_fields(self.net, self.optimizer))
        every = self.cfg.log.check_every
        if every and (self.epoch + 1) % every == 0:
            record.update(self.gdu_summary())
        record["train_seconds"] = s.train_seconds
        record["eval_seconds"] = eval_seconds
        record["seconds"] = s.seconds + time.perf_counter() - t0
        if not all(p.isfinite().all() for p in self.net.parameters()):
            raise TrainingError(
                f"non-finite weights after epoch {self.epoch + 1}; {self.checkpoint_note()}"
            )
        return record

    def _finish_epoch(self, log: RunLogger, record: dict[str, Any]) -> None:
        """Advance to the next epoch, log and save; a second Ctrl-C waits for it to finish."""
        with self._interrupt.critical():
            if self.scheduler is not None:
                self.scheduler.step()
            self.epoch += 1
            self.batch = 0
            self.stats = EpochStats()
            self.history.append(record)
            log.log_epoch(record)
            val_err = record.get("val_error")
            if val_err is not None and (
                self.best_val_accuracy is None or 1 - val_err > self.best_val_accuracy
            ):
                self.best_val_accuracy, self.best_epoch = 1 - val_err, self.epoch
                self.save("best")
            if self.epoch % self.cfg.train.save_every == 0 or self.epoch == self.cfg.train.epochs:
                self.save("last")
        warning = divergence_warning(record, self.data.num_classes)
        if warning and not self._warned:
            self._warned = True
            say(f"warning: {warning}")
        print(epoch_line(record, self.cfg.train.epochs), flush=True)

    def _summary(self) -> dict[str, Any]:
        warning = divergence_warning(self.history[-1], self.data.num_classes)
        return {
            "name": self.cfg.name,
            **summarize(self.history, self.best_epoch),
            "wall_seconds": self.wall_seconds,
            "seconds_per_epoch": self.wall_seconds / max(self.epoch, 1),
            "device": str(self.device),
            "parameters": sum(p.numel() for p in self.net.parameters()),
            "diverged": warning is not None,
            "warnings": [warning] if warning else [],
        }
