"""What a checkpoint holds of a training run, and how it is restored (exact resume)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from eqprop.train.checkpoint import rng_state, set_rng_state
from eqprop.train.config import ExperimentConfig, config_to_dict
from eqprop.train.epochs import EpochStats

if TYPE_CHECKING:
    import torch

    from eqprop.core import ChainNetwork
    from eqprop.estimators import GradientEstimator

__all__ = ["Resumable"]


class Resumable:
    """Mixin of the trainer: its checkpoint payload (keys documented in
    :mod:`eqprop.train.checkpoint`) and its restoration."""

    cfg: ExperimentConfig
    net: ChainNetwork
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    estimator: GradientEstimator
    epoch: int
    batch: int
    stats: EpochStats
    best_val_accuracy: float | None
    best_epoch: int | None
    history: list[dict[str, Any]]
    checkpoint_path: Path | None
    _wall_before: float
    _saved_at: tuple[int, int] | None

    @property
    def wall_seconds(self) -> float:
        raise NotImplementedError

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
