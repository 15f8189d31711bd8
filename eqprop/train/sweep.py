"""Sweeps: a grid of config values times seeds, as ordinary run directories, and their table.

``eqprop sweep CONFIG --grid optim.lr=0.01,0.02 --grid estimator.beta=0.1,0.5 --seeds 3``
plans one run per combination and seed (:func:`plan`), each an ordinary run directory under the
sweep's folder, named after its values (``optim.lr=0.01,estimator.beta=0.1,seed=0``): it can be
resumed, it is locked while it runs, and running the same sweep again skips finished runs and
resumes stopped ones. :func:`aggregate` gathers the runs' ``summary.json`` into one row per
combination with the mean ± standard deviation over seeds.

Example:
    >>> split_values("[32,32],[64]")
    ['[32,32]', '[64]']
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from eqprop.core.validation import invalid
from eqprop.train.config import ConfigError, ExperimentConfig, load_config

__all__ = ["SweepRun", "aggregate", "format_table", "parse_grid", "plan", "split_values"]

#: Summary figures averaged over seeds, with their column titles.
FIGURES = {
    "test_accuracy": "test acc",
    "val_accuracy": "val acc",
    "final_train_accuracy": "train acc",
    "wall_seconds": "wall s",
}


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: its grid values, seed, overrides, directory and planned epochs
    (its own config's: ``train.epochs`` may be a grid axis)."""

    values: tuple[tuple[str, str], ...]
    seed: int
    directory: Path
    epochs: int

    @property
    def point(self) -> str:
        """The grid combination, ``key=value,...`` (``(base)`` without a grid)."""
        return ",".join(f"{k}={v}" for k, v in self.values) or "(base)"

    def overrides(self) -> list[str]:
        return [*(f"{k}={v}" for k, v in self.values), f"seed={self.seed}"]

    def status(self) -> str:
        """``done`` (its summary covers its planned epochs), ``started`` or ``new``."""
        try:
            summary = json.loads((self.directory / "summary.json").read_text())
        except (OSError, ValueError):
            summary = None
        if isinstance(summary, dict) and summary.get("epochs") == self.epochs:
            return "done"
        return "started" if (self.directory / "config.yaml").exists() else "new"


def split_values(text: str) -> list[str]:
    """Split ``v1,v2,...`` at the commas outside brackets (``[32,32],[64]`` is two values)."""
    values, depth, current = [], 0, ""
    for ch in text:
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += ch
    values.append(current.strip())
    return values


def parse_grid(grid: list[str]) -> list[tuple[str, list[str]]]:
    """``["optim.lr=0.01,0.02"]`` -> ``[("optim.lr", ["0.01", "0.02"])]``.

    Raises:
        ConfigError: a malformed entry, an empty value or a key given twice.
    """
    parsed: list[tuple[str, list[str]]] = []
    for entry in grid:
        key, sep, text = entry.partition("=")
        values = split_values(text)
        if not sep or not key.strip() or any(not v for v in values):
            raise invalid(entry, "KEY=V1,V2,..., e.g. optim.lr=0.01,0.02", "--grid")
        if key.strip() in (k for k, _ in parsed):
            raise invalid(entry, "each key in one --grid only", "--grid")
        parsed.append((key.strip(), values))
    return parsed


def plan(
    config: str, overrides: list[str], grid: list[str], seeds: int, out: Path
) -> tuple[ExperimentConfig, list[SweepRun]]:
    """Every run of the sweep, each config checked before anything runs.

    Returns:
        The base config (overrides applied, no grid values) and the runs.

    Raises:
        ConfigError: a bad grid, seed count, or any combination that is not a valid config.
    """
    if seeds < 1:
        raise invalid(seeds, "an integer >= 1", "--seeds")
    base = load_config(config, overrides)
    axes = parse_grid(grid)
    runs = []
    for combo in itertools.product(*(values for _, values in axes)):
        values = tuple(zip((k for k, _ in axes), combo, strict=True))
        for seed in range(base.seed, base.seed + seeds):
            point = SweepRun(values, seed, out / _dir_name(values, seed), base.train.epochs)
            try:
                cfg = load_config(config, [*overrides, *point.overrides()])
            except ConfigError as err:
                raise ConfigError(f"{err} (in the grid point {point.point})") from None
            runs.append(replace(point, epochs=cfg.train.epochs))
    return base, runs


def _dir_name(values: tuple[tuple[str, str], ...], seed: int) -> str:
    name = ",".join([*(f"{k}={v}" for k, v in values), f"seed={seed}"])
    return re.sub(r"[^A-Za-z0-9._=,+\-\[\]]", "_", name)[:200]


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def aggregate(runs: list[SweepRun], outcomes: dict[Path, str]) -> list[dict[str, Any]]:
    """One row per grid point: runs done out of planned, and mean/std of :data:`FIGURES`."""
    rows: dict[str, dict[str, Any]] = {}
    summaries: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        row = rows.setdefault(run.point, {"point": run.point, "runs": 0, "done": 0})
        row["runs"] += 1
        if outcomes.get(run.directory) != "done":
            continue
        try:
            summary = json.loads((run.directory / "summary.json").read_text())
        except (OSError, ValueError):
            continue
        row["done"] += 1
        summaries.setdefault(run.point, []).append(summary)
    for point, found in summaries.items():
        for key in FIGURES:
            values = [float(s[key]) for s in found if isinstance(s.get(key), int | float)]
            if values:
                rows[point][key], rows[point][f"{key}_std"] = _mean_std(values)
    return list(rows.values())


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as an aligned text table (accuracies in %, mean ± std over seeds)."""
    header = ["grid point", "runs", *FIGURES.values()]
    lines = [header]
    for row in rows:
        cells = [row["point"], f"{row['done']}/{row['runs']}"]
        for key in FIGURES:
            if key not in row:
                cells.append("-")
            elif key.endswith("accuracy"):
                cells.append(f"{row[key]:.2%} ± {row[key + '_std']:.2%}")
            else:
                cells.append(f"{row[key]:.1f} ± {row[key + '_std']:.1f}")
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    )
