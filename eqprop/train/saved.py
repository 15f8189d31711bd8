"""Saved runs: rebuild a run's network from one of its checkpoints (``eqprop eval``, ``check``)."""

from __future__ import annotations

from pathlib import Path

from eqprop.train.checkpoint import CheckpointError, load_checkpoint
from eqprop.train.config import config_from_dict
from eqprop.train.trainer import Trainer

__all__ = ["load_run"]


def load_run(run_dir: str | Path, checkpoint: str = "best", device: str | None = None) -> Trainer:
    """Rebuild a run's trainer from ``checkpoints/CHECKPOINT.pt`` (for ``eqprop eval``).

    The trainer's ``epoch`` and ``batch`` are the checkpoint's and ``checkpoint_path`` names
    it. Never falls back to another checkpoint.

    Raises:
        CheckpointError: when the checkpoint is missing or unreadable.
    """
    run_dir = Path(run_dir)
    path = run_dir / "checkpoints" / f"{checkpoint}.pt"
    if not path.is_file():
        raise CheckpointError(_missing_checkpoint(run_dir, path))
    ckpt = load_checkpoint(path)
    if "config" not in ckpt:
        raise CheckpointError(f"{path}: has no 'config' entry; cannot rebuild the run")
    raw = ckpt["config"]
    if device is not None:
        raw = {**raw, "train": {**raw.get("train", {}), "device": device}}
    trainer = Trainer(config_from_dict(raw), run_dir, quiet=True)
    trainer.net.load_state_dict(ckpt["model"])
    trainer.epoch, trainer.batch = int(ckpt["epoch"]), int(ckpt["batch"])
    trainer.checkpoint_path = path
    return trainer


def _missing_checkpoint(run_dir: Path, path: Path) -> str:
    if not (run_dir / "checkpoints" / "last.pt").is_file():
        return f"checkpoint not found: {path} ({run_dir} holds no checkpoint)"
    return (
        f"checkpoint not found: {path}; a best checkpoint is kept only for runs with a "
        "validation split, after their first epoch; use --checkpoint last"
    )
