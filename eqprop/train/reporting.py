"""What a run tells its user: progress bars, the per-epoch line, the divergence check, the summary.

The same epoch line is printed with and without progress bars (``--quiet``); bars are drawn
only on a terminal, so a log file never collects carriage-return fragments.

**Divergence criterion** (documented in the README): a run is flagged when the validation
accuracy of an epoch (the training accuracy when there is no validation split) is at most
:data:`CHANCE_FACTOR` times chance (1.5 / number of classes: 15 % for 10 classes). A learning
rate far too large drives the units into saturation and leaves the network at chance without
any overflow; a working configuration is well above this after its first epoch. The flag is a
warning printed once and, when the last epoch is flagged, kept in ``summary.json``
(``diverged``, ``warnings``); the run still ends normally.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from tqdm.auto import tqdm

__all__ = [
    "CHANCE_FACTOR",
    "divergence_warning",
    "epoch_line",
    "progress_bar",
    "say",
    "summarize",
]

CHANCE_FACTOR = 1.5
"""A training accuracy at most this many times chance flags the run as diverged."""


def progress_bar(total: int, desc: str, enabled: bool, initial: int = 0) -> tqdm:
    """A transient bar on stderr; disabled off a terminal (logs) or when not ``enabled``."""
    return tqdm(
        total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True,
        disable=not enabled or not sys.stderr.isatty(),
    )  # fmt: skip


def say(message: str) -> None:
    """A one-line notice on stderr that does not break a progress bar."""
    tqdm.write(f"eqprop: {message}", file=sys.stderr)


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """``epoch 3/30: train 98.50% (loss 0.0512), val 97.33%, test 98.00%; 0.8 s (0.1 s
    training, 0.6 s evaluation)``."""
    parts = [f"train {1 - record['train_error']:.2%} (loss {record['train_loss']:.4g})"]
    if "val_error" in record:
        parts.append(f"val {1 - record['val_error']:.2%}")
    parts.append(f"test {1 - record['test_error']:.2%}")
    return (
        f"epoch {record['epoch']}/{epochs}: {', '.join(parts)}; {record['seconds']:.1f} s "
        f"({record['train_seconds']:.1f} s training, {record['eval_seconds']:.1f} s evaluation)"
    )


def divergence_warning(record: dict[str, Any], num_classes: int) -> str | None:
    """The warning for an epoch whose validation accuracy (training accuracy without a
    validation split) is at chance level, else None."""
    split = "validation" if "val_error" in record else "training"
    accuracy = 1 - record["val_error" if "val_error" in record else "train_error"]
    limit = CHANCE_FACTOR / num_classes
    if accuracy > limit:
        return None
    return (
        f"epoch {record['epoch']}: {split} accuracy {accuracy:.1%} is at chance level "
        f"(at most {limit:.1%} for {num_classes} classes): the run has diverged or is not "
        "learning; try a smaller optim.lr"
    )


def summarize(history: list[dict[str, Any]], best_epoch: int | None) -> dict[str, Any]:
    """The figures of ``summary.json`` that come from the metrics (the trainer adds the rest).

    Test accuracy is reported at the epoch with the best validation accuracy (``best_epoch``),
    else at the last epoch.
    """
    last = history[-1]
    best = next((r for r in history if r["epoch"] == best_epoch), last)
    return {
        "epochs": last["epoch"],
        "selected_epoch": best["epoch"],
        "test_accuracy": 1 - best["test_error"],
        "val_accuracy": 1 - best["val_error"] if "val_error" in best else None,
        "final_test_accuracy": 1 - last["test_error"],
        "final_train_accuracy": 1 - last["train_error"],
        "train_seconds": sum(r.get("train_seconds", 0.0) for r in history),
        "eval_seconds": sum(r.get("eval_seconds", 0.0) for r in history),
    }


def run_summary(
    run: dict[str, Any], history: list[dict[str, Any]], best_epoch: int | None,
    wall_seconds: float, net: torch.nn.Module, num_classes: int,
) -> dict[str, Any]:  # fmt: skip
    """``summary.json``: the run's facts, the metrics' figures, wall time and divergence."""
    warning = divergence_warning(history[-1], num_classes)
    return {
        "name": run["name"],
        **summarize(history, best_epoch),
        "wall_seconds": wall_seconds,
        "seconds_per_epoch": wall_seconds / max(len(history), 1),
        **{k: v for k, v in run.items() if k != "name"},
        "parameters": sum(p.numel() for p in net.parameters()),
        "diverged": warning is not None,
        "warnings": [warning] if warning else [],
    }
