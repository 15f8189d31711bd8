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

from eqprop.dynamics import set_precision
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
from eqprop.train.checkpoint import load_checkpoint, save_checkpoint
from eqprop.train.config import ExperimentConfig, save_config
from eqprop.train.datasets import Dataset, load_dataset
from eqprop.train.distributed import NullLog, init_ranks
from eqprop.train.epochs import EpochStats, gdu_summary, model_fields
from eqprop.train.evaluation import Stopped, evaluate
from eqprop.train.interrupt import Interrupt
from eqprop.train.loader import EpochLoader
from eqprop.train.reporting import (
    divergence_warning,
    epoch_line,
    progress_bar,
    run_summary,
    say,
)
from eqprop.train.resumable import Resumable
from eqprop.train.rundir import RunDirectory, os_error_message
from eqprop.train.runlog import RunLogger
from eqprop.train.session import check_resumable, record_session

__all__ = ["CHECK_AT_START", "Splits", "Trainer", "TrainingError"]

#: The run directory's file with the ``log.check_every`` check on the initial weights.
CHECK_AT_START = "check_at_start.json"


class Trainer(Resumable):
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
        # Under torchrun: this rank, its device; only rank 0 prints and writes.
        self.ranks, device = init_ranks(cfg.train.device)
        self.quiet = quiet or not self.ranks.is_main
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        self.device = resolve_device(device)
        set_precision(cfg.dynamics.precision, self.device)
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
        self._stop_agreed = False  # distributed: a stop every rank has seen

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

    def save(self, name: str = "last") -> Path:
        """Write ``checkpoints/NAME.pt`` atomically; a second Ctrl-C waits for it to finish."""
        path = self.checkpoint_dir / f"{name}.pt"
        with self._interrupt.critical():
            if self.ranks.is_main:
                path.parent.mkdir(parents=True, exist_ok=True)
                save_checkpoint(path, self.state())
            self.ranks.barrier()  # no rank goes on (or ends) before the checkpoint is whole
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
        return evaluate(self.net, loader, progress=self._progress, desc=desc, ranks=self.ranks)

    def _evaluate_stoppable(self, loader: EpochLoader, desc: str) -> tuple[float, float]:
        # Distributed evaluation runs to its end: ranks must meet in its final reduction.
        interrupt = None if self.ranks.distributed else self._interrupt
        return evaluate(
            self.net, loader, interrupt=interrupt, progress=self._progress, desc=desc,
            ranks=self.ranks,
        )  # fmt: skip

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
        run = self._claimed
        if run is None and self.ranks.is_main:
            run = RunDirectory.claim(self.run_dir, resume=resume)
        clean = False
        try:
            if run is not None and run.removed:
                n = len(run.removed)
                self._say(f"removed {n} temporary file(s) left by a killed process")
            if run is not None and run.restarted:
                self._say(
                    f"starting over: the run in {self.run_dir} stopped before its first checkpoint"
                )
            result = self._fit(resume)
            clean = True
            return result
        except OSError as err:
            then = f"; fix that, then: eqprop resume {self.run_dir}" if self._saved_at else ""
            raise TrainingError(
                f"file-system error: {os_error_message(err)}; {self.checkpoint_note()}{then}"
            ) from None
        finally:
            if run is not None and run is not self._claimed:
                run.release()
            self.ranks.close(clean)

    def _fit(self, resume: bool) -> dict[str, Any]:
        start = self._start(resume)
        cfg = self.cfg
        logger = RunLogger if self.ranks.is_main else NullLog
        with (
            logger(self.run_dir, cfg.log.tensorboard, cfg.log.plots) as log,
            self._interrupt.installed() as interrupt,
        ):
            if cfg.log.tensorboard and not log.tensorboard_active:
                why = log.tensorboard_error
                self._say(f"TensorBoard logging is off: it cannot be imported ({why})")
            log.restore(self.history)  # the checkpoint's records are the run's
            if self.ranks.is_main:
                record_session(self.run_dir, start)
            log.write_json("model.json", self.net.describe())
            if cfg.log.check_every and (self.epoch, self.batch) == (0, 0):
                # A run resumed before its first batch has the same weights: it redoes it alike.
                log.write_json(CHECK_AT_START, self.start_check())
            while self.epoch < cfg.train.epochs:
                try:
                    completed = self._run_epoch(log, interrupt)
                except KeyboardInterrupt:  # a second signal outside an epoch's batches
                    completed = False
                if not completed or self._should_stop(interrupt):
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
                self._say(
                    f"the run is complete ({self.epoch} epochs); --epochs N trains it further"
                )
            else:
                self._say(f"continuing at epoch {self.epoch + 1}, batch {self.batch + 1}")
        if self.ranks.is_main:
            save_config(self.cfg, self.run_dir / "config.yaml")
        command = "resume" if resume else "train"
        r = self.ranks
        return {"command": command, "epoch": self.epoch, "batch": self.batch,
                "world_size": r.world, "backend": r.backend}  # fmt: skip

    def _stop(self, interrupt: Interrupt) -> dict[str, Any]:
        """Save where the run stands and say how to continue."""
        path = self.checkpoint_dir / "last.pt"
        if self._saved_at != (self.epoch, self.batch):
            path = self.save()
        total = len(self.splits.train)
        where = "during evaluation" if self.batch == total else f"at batch {self.batch}/{total}"
        self._say(
            f"stopped ({interrupt.name}) in epoch {self.epoch + 1} {where}; saved {path}; "
            f"continue with: eqprop resume {self.run_dir}"
        )
        status = {"interrupted": True, "exit_code": interrupt.exit_code}
        return {**status, "epoch": self.epoch, "batch": self.batch}

    def _run_epoch(self, log: RunLogger | NullLog, interrupt: Interrupt) -> bool:
        """Train and evaluate one epoch from the current position; False when stopped."""
        t0 = time.perf_counter()
        try:
            self._train_batches(interrupt)
            if self._should_stop(interrupt):
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
                    if self._should_stop(interrupt):
                        return
                    self._train_batch(x, y)
                    bar.update(1)
                    bar.set_postfix(acc=f"{self.stats.accuracy:.2%}", refresh=False)
        finally:
            self.stats.train_seconds += time.perf_counter() - t0

    def _say(self, message: str) -> None:
        if self.ranks.is_main:
            say(message)

    def _should_stop(self, interrupt: Interrupt) -> bool:
        # Distributed ranks stop at the batch where they have all seen the request (agreed in
        # the per-batch reduction): a rank that stopped alone would hang the others.
        return self._stop_agreed if self.ranks.distributed else interrupt.requested

    def _train_batch(self, x: Tensor, y: Tensor) -> None:
        rng = self.estimator.state_dict()
        shard = self.ranks.shard(len(y))  # the whole batch on one rank
        try:
            self.optimizer.zero_grad(set_to_none=True)
            # estimate() with the all-reduce in the middle, weighted by shard sizes:
            est = self.estimator.accumulate(self.net, x[shard], y[shard], None)
            self.ranks.average_gradients(self.net.parameters(), len(y[shard]), len(y))
            self.estimator.after_backward(self.net)
            grads = [p.grad for p in self.net.parameters() if p.grad is not None]
            # NaN and inf survive a sum, so one reduction per tensor detects any non-finite value.
            total = torch.stack([est.loss.sum(), *(g.sum() for g in grads)]).sum()
            errors = (est.predictions != y[shard].to(est.predictions.device)).sum()
            # One device sync per batch, after a whole relaxation: negligible.
            ok, n_err, loss_sum = bool(total.isfinite()), int(errors), float(est.loss.sum())
            steps, counts = (est.free_steps, est.nudged_steps), est.stats
            if self.ranks.distributed:
                ok, n_err, loss_sum, steps, self._stop_agreed, counts = self.ranks.agree_batch(
                    ok, n_err, loss_sum, steps, self._interrupt.requested, counts
                )
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
            self.stats.add(n_err, loss_sum, len(y), *steps, counts)
            self.batch += 1

    def gdu_summary(self) -> dict[str, float | None]:
        """Summary numbers of a small EP-versus-BPTT check at the run's β (no sweep)."""
        loader = self.splits.val or self.splits.test
        return gdu_summary(self.net, loader, self.cfg, self.estimator.solver)

    def start_check(self) -> dict[str, Any]:
        """The check of :meth:`gdu_summary` as epoch 0 of its curve (``check_at_start.json``),
        on the weights as they are, drawing nothing from the run's random streams."""
        with torch.random.fork_rng(devices=[]):
            return {"epoch": 0, **self.gdu_summary()}

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

    def _finish_epoch(self, log: RunLogger | NullLog, record: dict[str, Any]) -> None:
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
            self._say(f"warning: {warning}")
        if self.ranks.is_main:
            print(epoch_line(record, self.cfg.train.epochs), flush=True)

    def _summary(self) -> dict[str, Any]:
        run = {"name": self.cfg.name, "device": str(self.device), "world_size": self.ranks.world}
        return run_summary(
            run, self.history, self.best_epoch, self.wall_seconds, self.net, self.data.num_classes
        )
