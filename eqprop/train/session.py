"""Starting and resuming a run: the config file, what a resume may change, the session history.

A resume continues the run its checkpoint holds. Its config (``RUN/config.yaml``) may differ
from the checkpoint's only in fields that do not change the results (:data:`RESUME_FREE`:
where the data and the device are, how the run is logged) and, through
:func:`extension_overrides`, in the number of epochs; any other difference is refused with the
fields named.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eqprop.train.checkpoint import atomic_write
from eqprop.train.confdiff import INCIDENTAL, differences
from eqprop.train.config import (
    ConfigError,
    ExperimentConfig,
    config_from_dict,
    config_to_dict,
)
from eqprop.train.environment import environment_facts, read_json, session_history
from eqprop.train.optimizers import SCHEDULERS

__all__ = [
    "RESUME_FREE",
    "check_resumable",
    "extension_overrides",
    "record_session",
]

#: Fields a resumed run may change: they do not change what the run computes (the number of
#: epochs is checked on its own).
RESUME_FREE = (*INCIDENTAL, "train.epochs")


def _comparable(cfg: ExperimentConfig) -> dict[str, Any]:
    """The config as a resume compares it: a schedule's length resolved against the epochs."""
    data = config_to_dict(cfg)
    scheduler = cfg.optim.scheduler
    if SCHEDULERS[scheduler.kind] is not None:
        data["optim"]["scheduler"]["t_max"] = scheduler.resolved_t_max(cfg.train.epochs)
    return data


def check_resumable(ckpt: dict[str, Any], cfg: ExperimentConfig, run_dir: Path) -> None:
    """Refuse to resume ``ckpt`` under ``cfg`` when they differ in a field that matters.

    Raises:
        ConfigError: naming every differing field, with both values.
    """
    saved = config_from_dict(ckpt["config"])
    changed = differences(_comparable(saved), _comparable(cfg), ignore=RESUME_FREE)
    if changed:
        raise ConfigError(
            f"differs from the configuration the checkpoint was saved with, in {len(changed)} "
            f"field(s): {'; '.join(changed)} (checkpoint -> config.yaml); restore them, or "
            "start a new run",
            str(run_dir / "config.yaml"),
        )
    epochs, done = cfg.train.epochs, int(ckpt["epoch"])
    if epochs < done:
        raise ConfigError(
            f"{epochs} is not valid; expected at least the {done} epochs already trained",
            "train.epochs",
        )


def extension_overrides(cfg: ExperimentConfig, epochs: int) -> list[str]:
    """The overrides that run ``cfg`` for ``epochs`` epochs, its learning-rate schedule kept.

    A schedule whose length defaults to the number of epochs (cosine without ``t_max``) keeps
    its length, pinned in ``t_max``: extending a run continues at the schedule's end.
    """
    scheduler = cfg.optim.scheduler
    pin = SCHEDULERS[scheduler.kind] is not None and scheduler.t_max is None
    return [
        *([f"optim.scheduler.t_max={cfg.train.epochs}"] if pin else []),
        f"train.epochs={epochs}",
    ]


def record_session(run_dir: Path, start: dict[str, Any]) -> None:
    """Add this session to ``environment.json`` (a new run starts a new history)."""
    path = run_dir / "environment.json"
    previous = read_json(path) if start["command"] == "resume" else None
    data = json.dumps(session_history(previous, environment_facts(), start), indent=2) + "\n"
    atomic_write(path, lambda f: f.write(data.encode("utf-8")))
